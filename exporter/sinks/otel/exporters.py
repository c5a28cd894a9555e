"""The OTLP span exporter the settings ask for (HTTP or gRPC), built in one place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlparse

from opentelemetry.sdk.trace.export import SpanExporter

# ---------------------------------------------------------------------------------------------
# OTLP exporter


def make_span_exporter(
    endpoint: str | None = None,
    protocol: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> SpanExporter:
    """An OTLP span exporter; ``None`` arguments fall back to the standard environment variables.

    ``protocol``: ``http/protobuf`` (default) or ``grpc``; when None, ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``
    then ``OTEL_EXPORTER_OTLP_PROTOCOL``. ``endpoint`` is a base URL like ``OTEL_EXPORTER_OTLP_ENDPOINT``
    (for HTTP, ``/v1/traces`` is appended unless already there); when None the exporters read
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` themselves, and likewise
    ``*_HEADERS``, ``*_TIMEOUT``, ``*_COMPRESSION``, ``*_CERTIFICATE`` and (gRPC) ``*_INSECURE``.
    """
    chosen = (
        protocol
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    chosen = chosen.strip().lower()
    extra = dict(headers) if headers else None
    if chosen == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        url = endpoint
        if url and not urlparse(url).path.rstrip("/").endswith("/v1/traces"):
            url = url.rstrip("/") + "/v1/traces"
        return HttpExporter(endpoint=url or None, headers=extra, timeout=timeout)
    if chosen == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=endpoint or None, headers=extra, timeout=timeout)
    raise ValueError(f"unsupported OTLP protocol {chosen!r}: use 'http/protobuf' or 'grpc'")
