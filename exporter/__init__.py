"""agno-exporter: Prometheus metrics and OpenTelemetry spans for Agno agents, read from Postgres."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("agno-exporter")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+src"
