"""Reading agno: table layouts and discovery, row readers, the watermark, the collector loop, leadership."""
