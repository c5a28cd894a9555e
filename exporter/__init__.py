"""agno-exporter: Prometheus metrics and OpenTelemetry spans for Agno agents, read from Postgres."""

import sys

# pyproject.toml's requires-python stops pip; this stops what pip did not install (a source tree on
# PYTHONPATH, --ignore-requires-python): one line, before any module that needs 3.11 fails to import.
# Old syntax on purpose (no f-string): older Pythons must parse this far.
if sys.version_info < (3, 11):  # noqa: UP036
    sys.exit("agno-exporter needs CPython 3.11 or newer; this is Python " + sys.version.split()[0]
             + " (" + sys.executable + ")")

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("agno-exporter")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+src"
