"""The OpenTelemetry sink: span tree, attributes and timing built from real agno rows, and delivery
through the real OTLP/HTTP exporter to a real receiver that can fail like a broken backend."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import pytest
from agno.tracing.schemas import Span as AgnoSpan
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from exporter.records.ids import span_id_for, trace_id_for
from exporter.records.nesting import delegating_tool
from exporter.records.parse import build_run_record
from exporter.records.runs import RunRecord, TokenAnomaly
from exporter.sinks.otel.agno_rows import span_from_agno_row
from exporter.sinks.otel.delivery import PendingTrace, TraceSink
from exporter.sinks.otel.exporters import make_span_exporter
from exporter.sinks.otel.layout import epoch_ns, layout_run
from exporter.sinks.otel.traces import build_spans, make_resource
from tests.helpers.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.helpers.reference import runs_v3

AGENT = "485a6b32-658c-47db-8117-4458909ee26a"  # one tool call
FAILED_DELEGATION = "a294fee3-fc8a-4542-b852-ebaaefa0cfe5"  # team run, its tool call failed
TEAM = "33c13799-ab45-4edb-b696-9d1bff761ac4"
MEMBER = "06655f9a-4f71-4228-8499-871d201e9fcf"  # parent_run_id = TEAM
ERROR_RUN = "0080d6cb-fc74-4f48-8cb9-494befe92dbc"  # status ERROR, metrics hold only duration

RESOURCE = Resource.create({"service.name": "agno-test"})
US = 1_000  # one microsecond in ns: the resolution of agno's float epoch seconds is ~0.25 µs


@pytest.fixture(scope="module")
def rows() -> dict[str, dict[str, Any]]:
    return {row["run_id"]: row for row in runs_v3()}


@pytest.fixture(scope="module")
def records(rows: dict[str, dict[str, Any]]) -> dict[str, RunRecord]:
    return {run_id: build_run_record(row, row["run_data"]) for run_id, row in rows.items()}


@pytest.fixture(scope="module")
def content_records(rows: dict[str, dict[str, Any]]) -> dict[str, RunRecord]:
    return {run_id: build_run_record(row, row["run_data"], with_content=True) for run_id, row in rows.items()}


def root_of(record: RunRecord) -> str:
    return record.parent_run_id or record.run_id  # one level deep in the reference rows


def spans_of(record: RunRecord, *, capture_content: bool = False) -> list[ReadableSpan]:
    return build_spans(
        record,
        root_run_id=root_of(record),
        parent_run_id=record.parent_run_id,
        resource=RESOURCE,
        capture_content=capture_content,
    )


def by_name(spans: Iterable[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


def sid(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def tid(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


def start(span: ReadableSpan) -> int:
    assert span.start_time is not None
    return span.start_time


def end(span: ReadableSpan) -> int:
    assert span.end_time is not None
    return span.end_time


# ---------------------------------------------------------------------------------------------
# the tree


def test_agent_run_tree(records: dict[str, RunRecord]) -> None:
    record = records[AGENT]
    spans = spans_of(record)
    assert [s.name for s in spans] == [
        "invoke_agent BackgroundMetricsAgent",
        "chat gpt-4o-mini",
        "chat gpt-4o-mini",
        "execute_tool get_stock_price",
    ]
    run, chat0, chat1, tool = spans
    assert {tid(s) for s in spans} == {trace_id_for(AGENT)}
    assert sid(run) == span_id_for(AGENT) and run.parent is None
    assert [sid(chat0), sid(chat1)] == [span_id_for(AGENT, "chat", "0"), span_id_for(AGENT, "chat", "1")]
    assert sid(tool) == span_id_for(AGENT, "tool", "call_1")
    # chat and tool spans are siblings under the run span (GenAI agent-span conventions) ...
    for child in (chat0, chat1, tool):
        assert child.parent is not None and child.parent.span_id == sid(run)
    # ... and the tool span links to the model call that requested it
    assert [link.context.span_id for link in tool.links] == [sid(chat0)]
    assert (run.kind, chat0.kind, tool.kind) == (SpanKind.INTERNAL, SpanKind.CLIENT, SpanKind.INTERNAL)


@pytest.mark.parametrize("member_first", [True, False])
def test_team_and_member_share_one_trace_whichever_is_built_first(
    records: dict[str, RunRecord], member_first: bool
) -> None:
    order = [records[MEMBER], records[TEAM]] if member_first else [records[TEAM], records[MEMBER]]
    spans = [s for record in order for s in spans_of(record)]
    assert {tid(s) for s in spans} == {trace_id_for(TEAM)}
    roots = [s for s in spans if s.parent is None]
    assert [s.name for s in roots] == ["invoke_agent FinanceTeam"]
    member_run = next(s for s in spans if s.name == "invoke_agent StockAgent")
    assert member_run.parent is not None and member_run.parent.span_id == span_id_for(TEAM)
    assert sid(member_run) == span_id_for(MEMBER)
    # every parent id points at a span of the same trace
    ids = {sid(s) for s in spans}
    assert all(s.parent is None or s.parent.span_id in ids for s in spans)


def test_a_member_nests_under_the_delegation_call_that_started_it(records: dict[str, RunRecord]) -> None:
    team, member = records[TEAM], records[MEMBER]
    tool = delegating_tool(team, member)
    # agno's call delegate_task_to_member(member_id="stockagent") (its child_run_id is empty: not streamed)
    assert tool is not None and tool.name == "delegate_task_to_member" and tool.member_id == member.entity_id
    assert tool.child_run_id is None
    member_spans = build_spans(member, root_run_id=TEAM, parent_run_id=TEAM, parent_tool=tool, resource=RESOURCE)
    team_spans = build_spans(team, root_run_id=TEAM, resource=RESOURCE, nested={TEAM: (member,)})
    (delegation,) = by_name(team_spans, "execute_tool delegate_task_to_member")
    member_run = member_spans[0]
    assert sid(delegation) == span_id_for(TEAM, "tool", tool.call_id)
    assert member_run.parent is not None and member_run.parent.span_id == sid(delegation)
    # agno times only the last moments of a delegation call (after the member ran): the span covers
    # the member's run, so it is reconstructed; the member's own spans do not depend on the team's.
    assert tool.start_time is not None and tool.start_time > (member.created_at + (member.duration or 0))
    assert start(delegation) <= start(member_run) and end(member_run) <= end(delegation)
    assert delegation.attributes is not None and delegation.attributes["agno.timing"] == "reconstructed"
    assert [(sid(s), start(s), end(s)) for s in member_spans] == [
        (sid(s), start(s), end(s)) for s in build_spans(member, root_run_id=TEAM, parent_run_id=TEAM,
                                                        parent_tool=tool, resource=RESOURCE)]
    # the team's run span still covers all its children, and lasts agno's duration
    team_run = team_spans[0]
    assert all(start(team_run) <= start(s) and end(s) <= end(team_run) for s in (*team_spans, *member_spans))
    # a member of another agent, or of another run, is not matched
    assert delegating_tool(team, replace(member, entity_id="someone-else")) is None
    assert delegating_tool(team, replace(member, parent_run_id="another-run")) is None
    # without the member's record the call keeps agno's exact times
    (alone,) = by_name(spans_of(team), "execute_tool delegate_task_to_member")
    assert alone.attributes is not None and alone.attributes["agno.timing"] == "exact"
    assert start(alone) == epoch_ns(tool.start_time)


def test_a_delegation_call_handed_the_same_member_twice_is_told_by_its_times(
        records: dict[str, RunRecord]) -> None:
    team, member = records[TEAM], records[MEMBER]
    (call,) = team.tool_calls
    assert call.start_time is not None and call.end_time is not None
    # a second call to the same member, an hour earlier: the member ran within the first one only
    earlier = replace(call, index=1, call_id="call_earlier", start_time=call.start_time - 3600,
                      end_time=call.end_time - 3600)
    twice = replace(team, tool_calls=(earlier, replace(call, start_time=float(member.created_at))))
    tool = delegating_tool(twice, member)
    assert tool is not None and tool.call_id == call.call_id
    # two calls that both contain the member's run: it cannot be told, the member hangs under the run
    ambiguous = replace(twice, tool_calls=(replace(earlier, start_time=float(member.created_at),
                                                   end_time=call.end_time), twice.tool_calls[1]))
    assert delegating_tool(ambiguous, member) is None


def test_rebuilding_gives_byte_identical_ids_and_payload(records: dict[str, RunRecord]) -> None:
    for record in records.values():
        first, second = spans_of(record), spans_of(record)
        assert [(tid(s), sid(s), s.parent and s.parent.span_id) for s in first] == [
            (tid(s), sid(s), s.parent and s.parent.span_id) for s in second
        ]
        assert encode_spans(first).SerializeToString() == encode_spans(second).SerializeToString()


# ---------------------------------------------------------------------------------------------
# attributes


def test_invoke_span_attributes_equal_the_record(records: dict[str, RunRecord]) -> None:
    for record in records.values():
        run = spans_of(record)[0]
        a = dict(run.attributes or {})
        assert a["gen_ai.operation.name"] == "invoke_agent"
        assert a["gen_ai.agent.name"] == record.name
        assert a["gen_ai.agent.id"] == record.entity_id
        assert a["gen_ai.conversation.id"] == record.session_id == a["agno.session_id"]
        assert a["gen_ai.provider.name"] == record.provider == "openai"
        assert a["gen_ai.request.model"] == record.model == "gpt-4o-mini"
        assert a["gen_ai.usage.input_tokens"] == record.totals["input"]
        assert a["gen_ai.usage.output_tokens"] == record.totals["output"]
        assert a["agno.run_id"] == record.run_id
        assert a["agno.run.status"] == record.status
        assert a["agno.run_type"] == record.run_type
        assert a.get("agno.parent_run_id") == record.parent_run_id
        assert a.get("agno.time_to_first_token") == record.time_to_first_token
        assert "user.id" not in a  # no user in the reference rows
        assert not any(k.startswith("gen_ai.usage.cache") for k in a)
    team = dict(spans_of(records[TEAM])[0].attributes or {})
    assert team["gen_ai.agent.name"] == "FinanceTeam" and team["agno.run_type"] == "team"
    assert team["gen_ai.usage.input_tokens"] == 300  # the leader's own calls only
    member = dict(spans_of(records[MEMBER])[0].attributes or {})
    assert member["agno.parent_run_id"] == TEAM


def test_chat_and_tool_span_attributes(records: dict[str, RunRecord]) -> None:
    for record in records.values():
        spans = spans_of(record)
        chats = by_name(spans, "chat ")
        assert len(chats) == len(record.model_calls)
        for span, call in zip(chats, record.model_calls, strict=True):
            a = dict(span.attributes or {})
            assert a["gen_ai.operation.name"] == "chat"
            assert a["gen_ai.request.model"] == call.model
            assert a["gen_ai.provider.name"] == call.provider
            assert a["gen_ai.usage.input_tokens"] == call.input_tokens
            assert a["gen_ai.usage.output_tokens"] == call.output_tokens
            assert a["gen_ai.conversation.id"] == record.session_id
            assert a.get("agno.time_to_first_token") == call.time_to_first_token
            # the conventions' time to first chunk is for streamed calls only (the reference runs are
            # not streamed: agno stored each call's whole duration as its TTFT)
            assert a["gen_ai.request.stream"] is call.streamed is False
            assert "gen_ai.response.time_to_first_chunk" not in a
            assert (a["agno.model_role"], a["agno.model_call.source"]) == ("model", "message")
        if record.model_calls:  # the reference runs: per-call tokens add up to the run totals
            assert sum(c.input_tokens for c in record.model_calls) == record.totals["input"]
        tools = by_name(spans, "execute_tool ")
        assert len(tools) == len(record.tool_calls)
        for span, tool in zip(tools, record.tool_calls, strict=True):
            a = dict(span.attributes or {})
            assert a["gen_ai.operation.name"] == "execute_tool"
            assert a["gen_ai.tool.name"] == tool.name
            assert a["gen_ai.tool.call.id"] == tool.call_id
            assert a["gen_ai.tool.type"] == "function"
            assert a["agno.timing"] == "exact"


def test_extra_usage_user_anomalies_and_workflow(records: dict[str, RunRecord]) -> None:
    record = replace(
        records[AGENT],
        user_id="user-7",
        totals={**records[AGENT].totals, "cache_read": 50, "cache_write": 5, "reasoning": 7},
        anomalies=(TokenAnomaly("total_mismatch", "gpt-4o-mini", "openai"),
                   TokenAnomaly("cache_exceeds_input", "gpt-4o-mini", "openai")),
    )
    a = dict(spans_of(record)[0].attributes or {})
    assert a["user.id"] == "user-7"
    assert a["gen_ai.usage.cache_read.input_tokens"] == 50
    assert a["gen_ai.usage.cache_creation.input_tokens"] == 5
    assert a["gen_ai.usage.reasoning.output_tokens"] == 7
    assert "gen_ai.usage.audio.input_tokens" not in a  # zero: not stored by agno, not emitted
    assert a["agno.token_anomalies"] == ["total_mismatch", "cache_exceeds_input"]

    workflow = replace(
        records[AGENT],
        run_type="workflow",
        name="Pipeline",
        entity_id="pipeline",
        model="unknown",
        model_calls=(),
        tool_calls=(),
        workflow_step_names=("fetch", "summarise"),
    )
    (span,) = spans_of(workflow)
    w = dict(span.attributes or {})
    assert span.name == "invoke_workflow Pipeline"
    assert w["gen_ai.operation.name"] == "invoke_workflow"
    assert w["gen_ai.workflow.name"] == "Pipeline"
    assert "gen_ai.agent.name" not in w and "gen_ai.request.model" not in w
    assert w["agno.workflow.steps"] == ["fetch", "summarise"]


def test_error_run_and_failed_tool_call(records: dict[str, RunRecord]) -> None:
    (run,) = spans_of(records[ERROR_RUN])  # failed before any model call answered
    assert run.status.status_code is StatusCode.ERROR
    assert run.status.description == "Connection error."
    assert dict(run.attributes or {})["error.type"] == "APIConnectionError"
    assert dict(run.attributes or {})["agno.run.status"] == "ERROR"

    spans = spans_of(records[FAILED_DELEGATION])
    (tool,) = by_name(spans, "execute_tool ")
    assert tool.status.status_code is StatusCode.ERROR
    assert dict(tool.attributes or {})["error.type"] == "ToolCallError"
    assert spans[0].status.status_code is StatusCode.UNSET  # the run itself completed
    assert "error.type" not in dict(spans[0].attributes or {})


def test_content_only_when_enabled(content_records: dict[str, RunRecord]) -> None:
    keys = {"gen_ai.input.messages", "gen_ai.output.messages"}
    for record in content_records.values():
        for span in spans_of(record):  # the record carries content, capture is off
            assert not keys & set(span.attributes or {})
    run, chat0, chat1, _ = spans_of(content_records[AGENT], capture_content=True)
    a = dict(run.attributes or {})
    assert json.loads(str(a["gen_ai.input.messages"])) == [
        {"role": "user", "parts": [{"type": "text", "content": "What is the stock price of AAPL?"}]}
    ]
    assert json.loads(str(a["gen_ai.output.messages"])) == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "AAPL is trading at 123.45 USD."}],
            "finish_reason": "stop",
        }
    ]
    assert json.loads(str(dict(chat0.attributes or {})["gen_ai.output.messages"])) == [
        {
            "role": "assistant",
            "parts": [{"type": "tool_call", "id": "call_1", "name": "get_stock_price"}],
            "finish_reason": "tool_call",
        }
    ]
    out1 = json.loads(str(dict(chat1.attributes or {})["gen_ai.output.messages"]))
    assert out1[0]["parts"] == [{"type": "text", "content": "AAPL is trading at 123.45 USD."}]


# ---------------------------------------------------------------------------------------------
# timing


def assert_well_formed(spans: Sequence[ReadableSpan]) -> None:
    by_id = {sid(s): s for s in spans}
    for span in spans:
        assert end(span) >= start(span), span.name
        if span.parent is not None and span.parent.span_id in by_id:
            parent = by_id[span.parent.span_id]
            assert start(parent) <= start(span) and end(span) <= end(parent), span.name


def test_timestamps_of_the_reference_runs(records: dict[str, RunRecord]) -> None:
    for record in records.values():
        spans = spans_of(record)
        assert_well_formed(spans)
        run = spans[0]
        assert start(run) >= record.created_at * 1_000_000_000
        assert record.duration is not None
        assert abs((end(run) - start(run)) - record.duration * 1e9) < US  # agno's duration, exactly
        for span, tool in zip(by_name(spans, "execute_tool "), record.tool_calls, strict=True):
            assert tool.start_time is not None and tool.end_time is not None
            assert (start(span), end(span)) == (epoch_ns(tool.start_time), epoch_ns(tool.end_time))
            assert abs(start(span) / 1e9 - tool.start_time) < 1e-6
        chats = by_name(spans, "chat ")
        for span, call in zip(chats, record.model_calls, strict=True):
            assert call.duration is not None and call.created_at is not None
            assert abs((end(span) - start(span)) - call.duration * 1e9) < US
            assert start(span) >= call.created_at * 1_000_000_000
        if len(chats) == 2 and record.tool_calls:
            (tool_span,) = by_name(spans, "execute_tool ")
            # the call that requested the tool ends when it starts; the next starts when it ends
            assert end(chats[0]) == start(tool_span) and start(chats[1]) == end(tool_span)


def test_timing_edge_cases(records: dict[str, RunRecord]) -> None:
    base = records[AGENT]
    # no stored duration: a zero-length span at created_at
    (span,) = spans_of(replace(base, duration=None, model_calls=(), tool_calls=()))
    assert start(span) == end(span) == base.created_at * 1_000_000_000

    # no exact tool times: calls back to back from created_at, each no earlier than its own created_at
    tools = tuple(replace(t, start_time=None, end_time=None) for t in base.tool_calls)
    calls = (base.model_calls[0], replace(base.model_calls[1], created_at=base.created_at + 2))
    spans = spans_of(replace(base, tool_calls=tools, model_calls=calls))
    assert_well_formed(spans)
    run, chat0, chat1, tool = spans
    assert start(run) == start(chat0) == base.created_at * 1_000_000_000
    assert start(tool) == end(chat0)
    assert start(chat1) == (base.created_at + 2) * 1_000_000_000
    assert end(run) == end(chat1)  # widened beyond created_at + duration to contain the call
    assert dict(tool.attributes or {})["agno.timing"] == "reconstructed"

    # contradictory data: a tool measured after created_at + duration still sits inside its run
    late = tuple(replace(t, start_time=base.created_at + 5.0, end_time=base.created_at + 5.5) for t in tools)
    spans = spans_of(replace(base, tool_calls=late))
    assert_well_formed(spans)
    assert end(spans[0]) >= epoch_ns(base.created_at + 5.5)

    # parallel tools requested by one call: the next call waits for the last of them; a tool no
    # call requested still gets its exact times
    first = base.tool_calls[0]
    assert first.start_time is not None
    t0 = first.start_time
    parallel = (
        replace(first, call_id="a", start_time=t0, end_time=t0 + 0.3),
        replace(first, call_id="b", index=1, start_time=t0 + 0.01, end_time=t0 + 0.2),
        replace(first, call_id="orphan", index=2, start_time=t0 + 0.05, end_time=t0 + 0.06),
    )
    calls = (replace(base.model_calls[0], tool_call_ids=("a", "b")), base.model_calls[1])
    spans = spans_of(replace(base, model_calls=calls, tool_calls=parallel, duration=0.5))
    assert_well_formed(spans)
    chat0, chat1 = by_name(spans, "chat ")
    tool_a, tool_b, orphan = by_name(spans, "execute_tool ")
    assert end(chat0) == start(tool_a) == epoch_ns(t0)
    assert start(chat1) == end(tool_a) == epoch_ns(t0 + 0.3)
    assert (start(orphan), end(orphan)) == (epoch_ns(t0 + 0.05), epoch_ns(t0 + 0.06))
    assert [link.context.span_id for link in tool_b.links] == [sid(chat0)] and not orphan.links

    # zero and missing durations never give negative spans
    no_durations = tuple(replace(c, duration=None) for c in base.model_calls)
    assert_well_formed(spans_of(replace(base, model_calls=no_durations, duration=0.0)))
    layout = layout_run(replace(base, model_calls=no_durations, duration=0.0))
    assert all(t.end_ns >= t.start_ns for t in (layout.run, *layout.chats, *layout.tools))


# ---------------------------------------------------------------------------------------------
# resource and exporter factory


def test_make_resource_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    default = make_resource()
    assert default.attributes["service.name"] == "agno"
    assert default.attributes["telemetry.distro.name"] == "agno-exporter"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=staging")
    env = make_resource()
    assert env.attributes["service.name"] == "from-env"
    assert env.attributes["deployment.environment.name"] == "staging"
    assert make_resource({"service.name": "configured"}).attributes["service.name"] == "configured"


def test_make_span_exporter_protocols(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"):
        monkeypatch.delenv(var, raising=False)
    http = make_span_exporter("http://127.0.0.1:1", None, None, 1.0)
    grpc = make_span_exporter("http://127.0.0.1:1", "grpc", {"x-a": "b"}, 1.0)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    grpc_from_env = make_span_exporter("http://127.0.0.1:1")
    try:
        assert isinstance(http, HttpSpanExporter)
        assert isinstance(grpc, GrpcSpanExporter)
        assert isinstance(grpc_from_env, GrpcSpanExporter)
    finally:
        for exporter in (http, grpc, grpc_from_env):
            exporter.shutdown()
    with pytest.raises(ValueError, match="unsupported OTLP protocol"):
        make_span_exporter("http://127.0.0.1:1", "http/json")


def test_http_exporter_honours_otel_env(
    records: dict[str, RunRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    spans = spans_of(records[AGENT])
    with OtlpReceiver() as rx:
        for var in ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.base_url)  # base URL: /v1/traces appended
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")
        from_env = make_span_exporter()
        explicit = make_span_exporter(rx.base_url, "http/protobuf", {"x-tenant": "explicit"}, 1.0)
        try:
            assert from_env.export(spans).name == "SUCCESS"
            assert explicit.export(spans).name == "SUCCESS"
        finally:
            from_env.shutdown()
            explicit.shutdown()
        requests = rx.requests()
        assert [r[2].get("x-tenant") for r in requests] == ["acme", "explicit"]
        assert len(rx.spans()) == 2 * len(spans)


# ---------------------------------------------------------------------------------------------
# delivery through the real OTLP/HTTP exporter


class FakeOutbox:
    """TraceOutbox in memory; checks that a run is marked only once its spans reached the receiver."""

    def __init__(self, items: Iterable[PendingTrace], receiver: OtlpReceiver | None = None) -> None:
        self.items = list(items)
        self.exported: list[str] = []
        self.limits: list[int] = []
        self.returned: list[int] = []
        self.receiver = receiver
        self.may_drop: set[str] = set()
        self.marked_unreceived: list[str] = []

    async def pending(self, limit: int) -> Sequence[PendingTrace]:
        self.limits.append(limit)
        done = set(self.exported)
        out = [p for p in self.items if p.record.run_id not in done][:limit]
        self.returned.append(len(out))
        return out

    async def mark_exported(self, run_ids: Sequence[str]) -> None:
        if self.receiver is not None:
            received = {s.attributes.get("agno.run_id") for s in self.receiver.spans()}
            self.marked_unreceived += [r for r in run_ids if r not in received and r not in self.may_drop]
        self.exported.extend(run_ids)

    def add(self, items: Iterable[PendingTrace]) -> None:
        self.items.extend(items)


def pending_of(records: dict[str, RunRecord], order: Sequence[str]) -> list[PendingTrace]:
    return [PendingTrace(records[r], root_of(records[r])) for r in order]


ALL = [MEMBER, AGENT, FAILED_DELEGATION, TEAM, ERROR_RUN]  # the member before its team


def expected_ids(records: dict[str, RunRecord], run_ids: Iterable[str]) -> set[tuple[str, str, str]]:
    out = set()
    for run_id in run_ids:
        for s in spans_of(records[run_id]):
            parent = f"{s.parent.span_id:016x}" if s.parent else ""
            out.add((f"{tid(s):032x}", f"{sid(s):016x}", parent))
    return out


def received_ids(spans: Iterable[ReceivedSpan]) -> list[tuple[str, str, str]]:
    return [(s.trace_id, s.span_id, s.parent_span_id) for s in spans]


def make_sink(
    outbox: FakeOutbox, exporter: SpanExporter, registry: CollectorRegistry, **kwargs: Any
) -> TraceSink:
    options: dict[str, Any] = {"min_backoff": 0.01, "max_backoff": 0.05, **kwargs}
    return TraceSink(outbox, exporter, resource=RESOURCE, registry=registry, **options)


def metric(registry: CollectorRegistry, name: str) -> float:
    """A delivery self-metric of the runs' sink: labelled origin="runs" (the backlog gauge is per origin,
    without the label). A metric that does not exist fails the test rather than reading as 0."""
    value = registry.get_sample_value(name, {"origin": "runs"})
    if value is None:
        value = registry.get_sample_value(name)
    assert value is not None, f"no sample {name}"
    return value


def drain(sink: TraceSink, passes: int = 20) -> int:
    async def go() -> int:
        total = 0
        for _ in range(passes):
            n = await sink.flush_once()
            if not n:
                break
            total += n
        return total

    return asyncio.run(go())


def test_all_runs_arrive_and_are_marked_after_success(records: dict[str, RunRecord]) -> None:
    registry = CollectorRegistry()
    with OtlpReceiver() as rx:
        outbox = FakeOutbox(pending_of(records, ALL), rx)
        exporter = make_span_exporter(rx.base_url, "http/protobuf", None, 0.5)
        try:
            sink = make_sink(outbox, exporter, registry, batch_size=2, max_spans_per_export=5)
            assert drain(sink) == len(ALL)
        finally:
            exporter.shutdown()
        got = rx.spans()
    assert sorted(outbox.exported) == sorted(ALL) and not outbox.marked_unreceived
    assert sorted(received_ids(got)) == sorted(expected_ids(records, ALL))  # nothing missing, no extra
    assert set(outbox.limits) == {2} and max(outbox.returned) <= 2  # never more than batch_size at once
    assert all(n <= 5 for _, n, _ in rx.requests())  # requests carry whole runs, at most 5 spans here
    assert metric(registry, "agno_exporter_spans_exported_total") == len(got)
    assert metric(registry, "agno_exporter_spans_failed_total") == 0
    assert metric(registry, "agno_exporter_trace_backlog_runs") == 0
    assert metric(registry, "agno_exporter_trace_export_duration_seconds_count") >= 3
    # the team and its member arrived as one tree
    team_trace = f"{trace_id_for(TEAM):032x}"
    tree = [s for s in got if s.trace_id == team_trace]
    assert len(tree) == 8 and sum(1 for s in tree if not s.parent_span_id) == 1
    assert (
        next(s for s in tree if s.name == "invoke_agent StockAgent").parent_span_id
        == f"{span_id_for(TEAM):016x}"
    )
    assert {s.resource["service.name"] for s in got} == {"agno-test"}
    tool = next(s for s in got if s.name == "execute_tool get_stock_price" and s.trace_id != team_trace)
    assert tool.links == ((f"{trace_id_for(AGENT):032x}", f"{span_id_for(AGENT, 'chat', '0'):016x}"),)
    assert tool.start_ns == epoch_ns(records[AGENT].tool_calls[0].start_time or 0.0)  # exact on the wire


def test_backend_503_then_down_then_back(records: dict[str, RunRecord]) -> None:
    registry = CollectorRegistry()
    with OtlpReceiver() as rx:
        outbox = FakeOutbox(pending_of(records, ALL), rx)
        exporter = make_span_exporter(rx.base_url, "http/protobuf", None, 0.5)
        try:
            sink = make_sink(outbox, exporter, registry)
            rx.status = 503
            assert asyncio.run(sink.flush_once()) == 0
            rx.status = 500
            assert asyncio.run(sink.flush_once()) == 0
            rx.status = 200
            rx.down()
            assert asyncio.run(sink.flush_once()) == 0
            assert outbox.exported == [] and rx.spans() == []  # nothing marked, nothing stored
            assert metric(registry, "agno_exporter_spans_failed_total") > 0
            assert metric(registry, "agno_exporter_trace_export_errors_total") >= 3
            assert metric(registry, "agno_exporter_trace_backlog_runs") == len(ALL)
            rx.up()
            assert drain(sink) == len(ALL)
        finally:
            exporter.shutdown()
        got = rx.spans()
    assert sorted(received_ids(got)) == sorted(expected_ids(records, ALL))  # same ids, none missing
    assert sorted(outbox.exported) == sorted(ALL) and not outbox.marked_unreceived
    assert metric(registry, "agno_exporter_spans_dropped_total") == 0


def test_run_loop_backs_off_while_down_and_delivers_when_back(records: dict[str, RunRecord]) -> None:
    registry = CollectorRegistry()
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)
        await asyncio.sleep(delay)

    # Generous for a loaded machine, yet half the sink's 60 s poll interval: a run exported only by the
    # next poll (not by the collector's notify) still fails the last wait.
    async def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.01)

    with OtlpReceiver() as rx:
        rx.down()
        outbox = FakeOutbox(pending_of(records, ALL), rx)
        exporter = make_span_exporter(rx.base_url, "http/protobuf", None, 0.5)
        sink = make_sink(outbox, exporter, registry, sleep=sleep, poll_interval=60.0)

        async def scenario() -> None:
            task = asyncio.create_task(sink.run())
            try:
                await wait_until(lambda: metric(registry, "agno_exporter_trace_export_errors_total") >= 3)
                assert outbox.exported == []
                await asyncio.to_thread(rx.up)
                await wait_until(lambda: len(outbox.exported) == len(ALL))
                # idle now; new runs are exported as soon as the collector notifies (not after 60 s)
                more = replace(records[AGENT], run_id="0b5e1d1e-extra-run")
                outbox.add([PendingTrace(more, more.run_id)])
                threading.Thread(target=sink.notify).start()  # from another thread, as a collector may
                await wait_until(lambda: "0b5e1d1e-extra-run" in outbox.exported)
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

        try:
            asyncio.run(scenario())
        finally:
            exporter.shutdown()
        got = rx.spans()
    assert delays and all(0 < d <= 0.05 for d in delays)
    assert expected_ids(records, ALL) <= set(received_ids(got))
    assert not outbox.marked_unreceived


def test_a_run_the_backend_keeps_rejecting_is_dropped_and_counted(records: dict[str, RunRecord]) -> None:
    registry = CollectorRegistry()
    with OtlpReceiver() as rx:
        rx.reject = lambda spans: (
            400 if any(s.attributes.get("agno.run_id") == AGENT for s in spans) else None
        )
        outbox = FakeOutbox(pending_of(records, ALL), rx)
        outbox.may_drop = {AGENT}
        exporter = make_span_exporter(rx.base_url, "http/protobuf", None, 0.5)
        try:
            sink = make_sink(outbox, exporter, registry, drop_after_rejections=2)
            first = asyncio.run(sink.flush_once())
            assert first == len(ALL) - 1 and AGENT not in outbox.exported  # the others got through
            assert metric(registry, "agno_exporter_spans_dropped_total") == 0
            asyncio.run(sink.flush_once())
        finally:
            exporter.shutdown()
        got = rx.spans()
    assert sorted(outbox.exported) == sorted(ALL) and not outbox.marked_unreceived
    assert metric(registry, "agno_exporter_spans_dropped_total") == len(spans_of(records[AGENT])) == 4
    assert not any(s.attributes.get("agno.run_id") == AGENT for s in got)
    assert sorted(received_ids(got)) == sorted(expected_ids(records, set(ALL) - {AGENT}))


def test_a_run_whose_spans_cannot_be_built_is_dropped(records: dict[str, RunRecord]) -> None:
    registry = CollectorRegistry()
    broken = replace(records[AGENT], tool_calls=(object(),))  # type: ignore[arg-type]
    with OtlpReceiver() as rx:
        outbox = FakeOutbox([PendingTrace(broken, AGENT), *pending_of(records, [TEAM])], rx)
        outbox.may_drop = {AGENT}
        exporter = make_span_exporter(rx.base_url, "http/protobuf", None, 0.5)
        try:
            sink = make_sink(outbox, exporter, registry)
            assert asyncio.run(sink.flush_once()) == 1
        finally:
            exporter.shutdown()
    assert sorted(outbox.exported) == sorted([AGENT, TEAM])
    assert metric(registry, "agno_exporter_spans_dropped_total") == 4  # 1 run + 2 chat + 1 tool span


# ---------------------------------------------------------------------------------------------
# agno's own tracing tables


def test_span_from_agno_row_keeps_ids_and_times(records: dict[str, RunRecord]) -> None:
    for original in spans_of(records[AGENT]) + spans_of(records[ERROR_RUN]):
        row = AgnoSpan.from_otel_span(original).to_dict()  # what agno writes to agno_spans
        row["attributes"] = json.loads(json.dumps(row["attributes"]))  # JSONB round trip
        span = span_from_agno_row(row, resource=RESOURCE)
        assert (tid(span), sid(span)) == (tid(original), sid(original))
        assert (span.parent and span.parent.span_id) == (original.parent and original.parent.span_id)
        assert span.name == original.name and span.kind == original.kind
        assert span.status.status_code == original.status.status_code
        assert abs(start(span) - start(original)) <= 2 * US and abs(end(span) - end(original)) <= 2 * US
        assert dict(span.attributes or {}) == {
            k: list(v) if isinstance(v, tuple) else v for k, v in (original.attributes or {}).items()
        }
    with pytest.raises(ValueError):
        span_from_agno_row({"trace_id": "zz", "span_id": "01"}, resource=RESOURCE)
