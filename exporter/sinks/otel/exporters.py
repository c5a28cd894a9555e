"""The OTLP span exporter the settings ask for (HTTP or gRPC), built in one place.

Both are the SDK's exporters (their configuration, environment variables, TLS, compression and
retries), extended with :meth:`export_request`: the delivery (:mod:`exporter.sinks.otel.delivery`) builds
the ``ExportTraceServiceRequest`` itself (:mod:`exporter.sinks.otel.otlp`, a fraction of the SDK encoder's
cost) and hands it over through the exporter's own sending code. ``export`` (SDK ``ReadableSpan`` objects)
works as before.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlparse

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as SdkHttpExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

# ---------------------------------------------------------------------------------------------
# OTLP exporter


@runtime_checkable
class RequestExporter(Protocol):
    """A span exporter that also sends a request built elsewhere (see the module docstring)."""

    @property
    def accepts_requests(self) -> bool:
        """Whether :meth:`export_request` works with the installed SDK (else use ``export``)."""
        ...

    def export_request(self, request: ExportTraceServiceRequest) -> SpanExportResult:
        """Send ``request`` as ``export`` sends the request it encodes from SDK spans."""
        ...


class HttpSpanExporter(SdkHttpExporter):
    """The SDK's OTLP/HTTP exporter; :meth:`export_request` sends the serialized request through the HTTP
    client ``export`` uses (the SDK's retries of 429/502/503/504, compression, headers, TLS). That client is
    the SDK's internal ``_client`` (``export(bytes)``, opentelemetry-exporter-otlp-proto-http 1.45): with a
    release without it, :attr:`accepts_requests` is False and the delivery uses ``export``, as before.
    Not done here: the SDK's optional self-metrics and its 64 MiB request limit (our requests hold at most
    ``traces`` ``max_spans_per_export`` spans)."""

    @property
    def accepts_requests(self) -> bool:
        return callable(getattr(getattr(self, "_client", None), "export", None))

    def export_request(self, request: ExportTraceServiceRequest) -> SpanExportResult:
        if getattr(self, "_shutdown", False):
            return SpanExportResult.FAILURE
        client: Any = self._client
        result = client.export(request.SerializePartialToString())
        return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE


def _grpc_hooks_fit(cls: type) -> bool:
    """Whether the SDK's gRPC exporter has the internal hooks :meth:`export_request` relies on, as in 1.45."""
    try:
        params = list(inspect.signature(cls._export).parameters)  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        return False
    return params == ["self", "data"] and callable(getattr(cls, "_translate_data", None))


@functools.cache
def grpc_exporter_class() -> type[SpanExporter]:
    """The gRPC exporter class, defined on first use: importing grpc costs ~0.1 s, for HTTP users too."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as SdkGrpcExporter

    class GrpcSpanExporter(SdkGrpcExporter):
        """The SDK's OTLP/gRPC exporter; a request given to :meth:`export_request` passes the mixin's
        ``_translate_data`` hook (which encodes SDK spans) unchanged, through the same retries and channel.
        Those hooks are the SDK's internals (``_export(data)``, ``_translate_data``; 1.45): with a release
        whose hooks differ, :attr:`accepts_requests` is False and the delivery uses ``export``, as before."""

        accepts_requests = _grpc_hooks_fit(SdkGrpcExporter)

        def _translate_data(self, data: Any) -> ExportTraceServiceRequest:
            if isinstance(data, ExportTraceServiceRequest):
                return data
            return super()._translate_data(data)

        def _count_data(self, data: Any) -> int:
            if isinstance(data, ExportTraceServiceRequest):
                return sum(len(s.spans) for r in data.resource_spans for s in r.scope_spans)
            return int(super()._count_data(data))

        def export_request(self, request: ExportTraceServiceRequest) -> SpanExportResult:
            result: SpanExportResult = self._export(request)
            return result

    return GrpcSpanExporter


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
    Both are :class:`RequestExporter` too.
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
        url = endpoint
        if url and not urlparse(url).path.rstrip("/").endswith("/v1/traces"):
            url = url.rstrip("/") + "/v1/traces"
        return HttpSpanExporter(endpoint=url or None, headers=extra, timeout=timeout)
    if chosen == "grpc":
        return grpc_exporter_class()(endpoint=endpoint or None, headers=extra, timeout=timeout)  # type: ignore[call-arg]
    raise ValueError(f"unsupported OTLP protocol {chosen!r}: use 'http/protobuf' or 'grpc'")
