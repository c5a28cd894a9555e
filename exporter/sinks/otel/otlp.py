"""Spans as an OTLP ``ExportTraceServiceRequest``, built with opentelemetry-proto's generated classes.

Why not the SDK's encoder: it takes ``ReadableSpan`` objects and creates one Python protobuf object per
attribute, per value and per span (``_encode_attributes`` in opentelemetry-exporter-otlp-proto-common),
and groups the spans by hashing their resource: about 270 µs per run of 3.4 spans (issue 18). Here the
request is described as nested dicts and built by one constructor call, which protobuf's C backend (upb)
converts without a Python object per field: the same message for a fraction of the cost, the resource
encoded once per sink. The encoding rules are the SDK's (its ``encode_spans``), so the bytes are equal to
``encode_spans([readable(s, resource) ...]).SerializePartialToString()``: tests/unit/test_otlp.py checks it
on every reference run, with content, nested runs and agno's own spans.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import SpanFlags
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind

from exporter.sinks.otel.traces import SpanData

log = logging.getLogger("exporter.traces")

# OTLP's SpanKind numbers (trace.proto): the SDK's enum is 0-based, the protocol's 1-based
_KIND = {SpanKind.INTERNAL: 1, SpanKind.SERVER: 2, SpanKind.CLIENT: 3, SpanKind.PRODUCER: 4, SpanKind.CONSUMER: 5}
# every span and link of ours says its context is known not to be remote (the SDK's _span_flags)
_FLAGS = int(SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK)
_INT64 = (-(2**63), 2**63 - 1)

Value = dict[str, Any]


def _value(value: object) -> Value | None:
    """An ``AnyValue`` as the SDK encodes it (``_encode_value``); None for what it cannot encode (the SDK logs and
    leaves that attribute out)."""
    kind = type(value)
    if kind is str:
        return {"string_value": value}
    if kind is bool:
        return {"bool_value": value}
    if kind is int:
        assert isinstance(value, int)
        return {"int_value": value} if _INT64[0] <= value <= _INT64[1] else None
    if kind is float:
        return {"double_value": value}
    if kind is bytes:
        return {"bytes_value": value}
    if isinstance(value, (list, tuple)):
        items = [_value(v) for v in value]
        if any(v is None for v in items):
            return None
        return {"array_value": {"values": items}}
    return None


def attributes(attrs: Any) -> list[Value]:
    """``KeyValue`` list of an attribute mapping, in its order."""
    out: list[Value] = []
    for key, value in attrs.items():
        encoded = _value(value)
        if encoded is None:
            log.warning("span attribute %s has a value OTLP cannot carry (%r); left out", key, type(value).__name__)
            continue
        out.append({"key": key, "value": encoded})
    return out


def _span(span: SpanData) -> Value:
    trace_id = span.trace_id.to_bytes(16, "big")
    out: Value = {
        "trace_id": trace_id,
        "span_id": span.span_id.to_bytes(8, "big"),
        "name": span.name,
        "kind": _KIND[span.kind],
        "start_time_unix_nano": span.start_ns,
        "end_time_unix_nano": span.end_ns,
        "attributes": attributes(span.attributes),
        "status": {"code": span.status.value} if span.status_message is None
        else {"code": span.status.value, "message": span.status_message},
        "flags": _FLAGS,
    }
    if span.parent_span_id is not None:
        out["parent_span_id"] = span.parent_span_id.to_bytes(8, "big")
    if span.link_span_ids:
        out["links"] = [{"trace_id": trace_id, "span_id": s.to_bytes(8, "big"), "flags": _FLAGS}
                        for s in span.link_span_ids]
    return out


def _scope(scope: InstrumentationScope) -> Value:
    out: Value = {"name": scope.name}
    if scope.version:
        out["version"] = scope.version
    if scope.attributes:
        out["attributes"] = attributes(scope.attributes)
    return out


class SpanEncoder:
    """Builds export requests of spans that share one resource (a sink's), encoded once here."""

    def __init__(self, resource: Resource) -> None:
        self._resource: Value = {"attributes": attributes(resource.attributes)}
        self._schema_url = resource.schema_url or ""

    def request(self, spans: Sequence[SpanData]) -> ExportTraceServiceRequest:
        """One request: the resource, then one ``ScopeSpans`` per scope in the order first met (the SDK's grouping)."""
        by_scope: dict[InstrumentationScope, list[Value]] = {}
        scope: InstrumentationScope | None = None
        group: list[Value] = []
        for span in spans:
            if span.scope is not scope:  # a sink's spans share one scope object: hash it once per run of them
                scope = span.scope
                group = by_scope.setdefault(scope, [])
            group.append(_span(span))
        scope_spans = [{"scope": _scope(scope), "spans": group, "schema_url": scope.schema_url or ""}
                       for scope, group in by_scope.items()]
        if not scope_spans:
            return ExportTraceServiceRequest()
        # nested dicts, converted by one constructor call (typed as the message's fields: the stubs want messages)
        fields: dict[str, Any] = {"resource_spans": [
            {"resource": self._resource, "scope_spans": scope_spans, "schema_url": self._schema_url}]}
        return ExportTraceServiceRequest(**fields)
