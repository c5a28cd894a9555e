"""The Prometheus sink: metric families, the durable series store, exposition, prices."""
