"""The `agno-exporter` commands and what assembles a running exporter from the parts."""
