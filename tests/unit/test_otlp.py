"""The OTLP request the delivery builds itself (exporter.sinks.otel.otlp) is the SDK encoder's, byte for byte, and
goes out through the SDK exporters' own HTTP and gRPC paths with their configuration."""

from __future__ import annotations

import asyncio
import json
from concurrent import futures
from typing import Any

import grpc
import pytest
from agno.tracing.schemas import Span as AgnoSpan
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry

from exporter.records.nesting import delegating_tool
from exporter.records.parse import build_run_record
from exporter.records.runs import RunRecord
from exporter.sinks.otel.agno_rows import span_data_from_agno_row
from exporter.sinks.otel.delivery import PendingTrace, TraceSink
from exporter.sinks.otel.exporters import RequestExporter, make_span_exporter
from exporter.sinks.otel.otlp import SpanEncoder
from exporter.sinks.otel.traces import SpanData, make_resource, readable, span_data
from tests.helpers.otlp_receiver import OtlpReceiver
from tests.helpers.reference import runs_v3

TEAM = "33c13799-ab45-4edb-b696-9d1bff761ac4"
MEMBER = "06655f9a-4f71-4228-8499-871d201e9fcf"


def records(with_content: bool) -> dict[str, RunRecord]:
    return {r["run_id"]: build_run_record(r, r["run_data"], with_content=with_content) for r in runs_v3()}


def every_span(with_content: bool) -> list[SpanData]:
    recs = records(with_content)
    spans = [s for r in recs.values() for s in span_data(
        r, root_run_id=r.parent_run_id or r.run_id, parent_run_id=r.parent_run_id, capture_content=with_content)]
    team, member = recs[TEAM], recs[MEMBER]
    # a team with its member nested (the delegation call covers it), the member under that call
    spans += span_data(team, root_run_id=TEAM, capture_content=with_content, nested={TEAM: (member,)})
    spans += span_data(member, root_run_id=TEAM, parent_run_id=TEAM, parent_tool=delegating_tool(team, member),
                       capture_content=with_content)
    # agno's own spans, as agno writes them (another scope in the same request)
    for original in spans[:6]:
        row = AgnoSpan.from_otel_span(readable(original, Resource.create({}))).to_dict()
        row["attributes"] = json.loads(json.dumps(row["attributes"]))
        spans.append(span_data_from_agno_row(row))
    return spans


def sdk_bytes(spans: list[SpanData], resource: Resource) -> bytes:
    return bytes(encode_spans([readable(s, resource) for s in spans]).SerializePartialToString())


@pytest.mark.parametrize("with_content", [False, True])
def test_the_request_is_the_sdk_encoders_byte_for_byte(with_content: bool) -> None:
    spans = every_span(with_content)
    assert len({s.scope.name for s in spans}) == 2 and any(s.link_span_ids for s in spans)
    assert any(s.status_message for s in spans) and any(s.parent_span_id is None for s in spans)
    for resource in (Resource.create({"service.name": "agno-test"}), make_resource({"deployment": "x"})):
        encoder = SpanEncoder(resource)
        assert encoder.request(spans).SerializePartialToString() == sdk_bytes(spans, resource)
        for one in spans:  # and each span alone
            assert encoder.request([one]).SerializePartialToString() == sdk_bytes([one], resource)
    assert SpanEncoder(Resource.create({})).request([]).SerializePartialToString() == b""  # the probe


def test_values_the_sdk_leaves_out_are_left_out() -> None:
    (span, *_) = every_span(False)
    odd = SpanData(**{**{f: getattr(span, f) for f in SpanData.__slots__},
                      "attributes": {"big": 2**64, "ok": 1, "mixed": [1, object()], "f": 0.5, "flag": True,
                                     "list": ("a", "b")}})
    resource = Resource.create({})
    assert SpanEncoder(resource).request([odd]).SerializePartialToString() == sdk_bytes([odd], resource)


@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_http_export_request_uses_the_sdk_configuration(monkeypatch: pytest.MonkeyPatch,
                                                        compression: str | None) -> None:
    spans = every_span(False)[:5]
    request = SpanEncoder(Resource.create({"service.name": "agno-test"})).request(spans)
    with OtlpReceiver() as rx:
        for var in ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.base_url)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme")
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", raising=False)
        if compression:
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", compression)
        else:
            monkeypatch.delenv("OTEL_EXPORTER_OTLP_COMPRESSION", raising=False)
        exporter = make_span_exporter()
        try:
            assert isinstance(exporter, RequestExporter) and exporter.accepts_requests
            assert exporter.export_request(request) is SpanExportResult.SUCCESS
            rx.status = 400
            assert exporter.export_request(request) is SpanExportResult.FAILURE
        finally:
            exporter.shutdown()
        assert exporter.export_request(request) is SpanExportResult.FAILURE  # after shutdown, as export()
        assert [r[2].get("x-tenant") for r in rx.requests()] == ["acme", "acme"]
        # the body was sent encoded as the environment says (the receiver decoded it to read the spans)
        assert {r[2].get("Content-Encoding") for r in rx.requests()} == {compression}
        got = rx.spans()
    assert [(s.span_id, s.name) for s in got] == [(f"{s.span_id:016x}", s.name) for s in spans]
    assert {s.resource["service.name"] for s in got} == {"agno-test"}


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.requests: list[tuple[bytes, dict[str, str]]] = []

    def Export(self, request: ExportTraceServiceRequest, context: Any) -> ExportTraceServiceResponse:
        self.requests.append((request.SerializePartialToString(), dict(context.invocation_metadata())))
        return ExportTraceServiceResponse()


def test_grpc_export_request_goes_through_the_sdk_channel() -> None:
    spans = every_span(False)
    resource = Resource.create({"service.name": "agno-test"})
    collector = _Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    exporter = make_span_exporter(f"http://127.0.0.1:{port}", "grpc", {"x-tenant": "acme"}, 5.0)
    try:
        assert isinstance(exporter, RequestExporter) and exporter.accepts_requests
        assert exporter.export_request(SpanEncoder(resource).request(spans)) is SpanExportResult.SUCCESS
        assert exporter.export([readable(s, resource) for s in spans]) is SpanExportResult.SUCCESS  # the SDK path
    finally:
        exporter.shutdown()
        server.stop(None)
    (ours, ours_meta), (sdk, _) = collector.requests
    assert ours == sdk == sdk_bytes(spans, resource) and ours_meta["x-tenant"] == "acme"


class _Outbox:
    def __init__(self, items: list[PendingTrace]) -> None:
        self.items, self.exported = items, list[str]()

    async def pending(self, limit: int) -> list[PendingTrace]:
        return [p for p in self.items if p.key not in self.exported][:limit]

    async def mark_exported(self, keys: Any) -> None:
        self.exported += keys


class _Recording(SpanExporter):
    """A plain SDK exporter (no export_request): the sink hands it ReadableSpans."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []

    def export(self, spans: Any) -> SpanExportResult:
        if spans:
            self.payloads.append(bytes(encode_spans(spans).SerializePartialToString()))
        return SpanExportResult.SUCCESS


def test_the_sink_sends_the_same_bytes_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    recs = records(False)
    items = [PendingTrace(r, r.parent_run_id or r.run_id) for r in recs.values()]
    resource = Resource.create({"service.name": "agno-test"})
    plain = _Recording()
    asyncio.run(TraceSink(_Outbox(items), plain, resource=resource, registry=CollectorRegistry()).flush_once())
    for var in ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"):
        monkeypatch.delenv(var, raising=False)
    with OtlpReceiver() as rx:
        exporter = make_span_exporter(rx.base_url, "http/protobuf", None, 2.0)
        sent: list[bytes] = []
        original = exporter.export_request  # type: ignore[attr-defined]

        def recording(request: ExportTraceServiceRequest) -> SpanExportResult:
            sent.append(request.SerializePartialToString())
            result: SpanExportResult = original(request)
            return result

        monkeypatch.setattr(exporter, "export_request", recording)
        try:
            outbox = _Outbox(items)
            asyncio.run(TraceSink(outbox, exporter, resource=resource, registry=CollectorRegistry()).flush_once())
        finally:
            exporter.shutdown()
    assert sent == plain.payloads and len(sent) >= 1
    assert sorted(outbox.exported) == sorted(recs)


def test_requests_go_through_the_sdk_exporters_only_where_their_hooks_are_as_expected() -> None:
    """The fast path relies on SDK internals; a release whose hooks differ falls back to ``export``."""
    from exporter.sinks.otel.exporters import _grpc_hooks_fit, grpc_exporter_class

    class Renamed:
        def _export(self, data: Any, timeout: float) -> None: ...

        def _translate_data(self, data: Any) -> None: ...

    class Missing:
        def _export(self, data: Any) -> None: ...

    assert grpc_exporter_class().accepts_requests  # type: ignore[attr-defined]  # the installed SDK
    assert not _grpc_hooks_fit(Renamed) and not _grpc_hooks_fit(Missing) and not _grpc_hooks_fit(object)
    http = make_span_exporter("http://127.0.0.1:9/v1/traces", "http/protobuf")
    assert isinstance(http, RequestExporter) and http.accepts_requests
    del http._client  # type: ignore[attr-defined]  # as in a release without it
    assert not http.accepts_requests
