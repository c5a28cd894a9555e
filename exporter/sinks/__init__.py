"""Where records go: one package a sink, each behind exporter.sink.Sink."""
