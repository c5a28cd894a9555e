"""End to end: the exporter, Prometheus, agno apps or the benchmarks as processes."""
