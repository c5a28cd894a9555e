"""End to end: real agno runs in real Postgres -> Service (collector + outbox + trace sink) -> the real
OTLP/HTTP exporter -> a real receiver. The spans are checked against what agno stored (its rows and
its own API), delivery against the durable outbox, and a backend outage against the metrics."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from exporter.commands.service import Service
from exporter.db import Database
from exporter.records.ids import trace_id_hex
from exporter.state.store import PostgresState
from tests.helpers.agno_app import AgnoApp
from tests.helpers.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.helpers.scrape import Samples, scrape_text
from tests.helpers.support import DEADLINE
from tests.pg.test_collect_e2e import make_service, wait_counted

US = 1_000  # ns
SOURCE = "ai.agno_runs"
KIND_INTERNAL = Span.SpanKind.SPAN_KIND_INTERNAL
KIND_CLIENT = Span.SpanKind.SPAN_KIND_CLIENT
STATUS_UNSET = Status.StatusCode.STATUS_CODE_UNSET
STATUS_ERROR = Status.StatusCode.STATUS_CODE_ERROR


pytestmark = pytest.mark.usefixtures("otel_env")


# ---------------------------------------------------------------------------------------------
# what agno stored, what the exporter's state says


def stored_rows(db_url: str) -> dict[str, dict[str, Any]]:
    """agno's runs table, run_id -> row (run_data as a dict), in creation order."""
    with psycopg.connect(db_url, row_factory=psycopg.rows.dict_row) as conn:
        rows = conn.execute("SELECT * FROM ai.agno_runs ORDER BY created_at, run_id").fetchall()
    return {r["run_id"]: r for r in rows}


def top_level_of(rows: dict[str, dict[str, Any]]) -> dict[str, str]:
    """run_id -> id of its top-level run (the trace it belongs to)."""
    out = {}
    for run_id in rows:
        root = run_id
        while rows[root]["parent_run_id"]:
            root = rows[root]["parent_run_id"]
        out[run_id] = root
    return out


def outbox(db_url: str) -> dict[str, bool]:
    """run_id -> traces_exported, from the exporter's state."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT run_id, traces_exported FROM agno_exporter.runs WHERE source = %s", (SOURCE,)
        ).fetchall()
    return dict(rows)


def reset_outbox(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE agno_exporter.runs SET traces_exported = false WHERE source = %s", (SOURCE,))


def run_name(row: dict[str, Any]) -> str:
    data = row["run_data"]
    return str(data.get("agent_name") or data.get("team_name"))


def model_messages(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's own assistant messages: one model call each."""
    return [m for m in row["run_data"].get("messages") or []
            if m.get("role") == "assistant" and not m.get("from_history")]


def tools_of(row: dict[str, Any]) -> list[dict[str, Any]]:
    return list(row["run_data"].get("tools") or [])


def span_count(row: dict[str, Any]) -> int:
    return 1 + len(model_messages(row)) + len(tools_of(row))


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Poll a blocking condition (database reads) off the loop until it holds."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def all_exported(db_url: str, run_ids: set[str]) -> Callable[[], bool]:
    def check() -> bool:
        state = outbox(db_url)
        return set(state) == run_ids and all(state.values())
    return check


def start_traced_service(db_url: str, rx: OtlpReceiver) -> Service:
    # endpoint: the receiver's base URL (make_span_exporter appends /v1/traces for http/protobuf)
    return make_service(db_url, traces={"endpoint": rx.base_url, "min_backoff": "20ms", "max_backoff": "200ms"})


def shrink_sink_backoff(service: Service) -> None:
    """Backoff bounds come from the settings (traces.min_backoff / max_backoff) given above."""
    assert service.trace_sink is not None, "traces not enabled"


def exact_ns(seconds: float) -> int:
    """The exact value of agno's float epoch seconds, in ns (no float rounding of ``seconds * 1e9``)."""
    return round(Decimal(seconds) * 1_000_000_000)


def index_spans(spans: list[ReceivedSpan]) -> dict[str, list[ReceivedSpan]]:
    """agno.run_id -> that run's spans."""
    by_run: dict[str, list[ReceivedSpan]] = defaultdict(list)
    for s in spans:
        by_run[str(s.attributes.get("agno.run_id"))].append(s)
    return by_run


# ---------------------------------------------------------------------------------------------
# 1. runs -> traces, checked against agno


def test_runs_become_traces_matching_agno(db_url: str, sim_url: str) -> None:
    with OtlpReceiver() as rx:
        asyncio.run(_runs_become_traces(db_url, sim_url, rx))


async def _runs_become_traces(db_url: str, sim_url: str, rx: OtlpReceiver) -> None:
    app = AgnoApp(db_url, sim_url)
    try:
        agent = app.agent()
        team = app.team()
        broken = app.agent("BrokenAgent", base_url="http://127.0.0.1:9/v1")
        outputs = [await app.run(agent), await app.run(team), await app.run(broken)]
        rows = stored_rows(db_url)
        # agno's own API: the run outputs, the member's through the member agent
        truth: dict[str, Any] = {}
        runners: list[Any] = [agent, team, broken]
        for runner, out in zip(runners, outputs, strict=True):
            truth[out.run_id] = await runner.aget_run_output(run_id=out.run_id, session_id=out.session_id)
        member_rows = [r for r in rows.values() if r["parent_run_id"]]
        assert len(member_rows) == 1 and member_rows[0]["parent_run_id"] == outputs[1].run_id
        member = member_rows[0]
        members: Any = team.members
        truth[member["run_id"]] = await members[0].aget_run_output(
            run_id=member["run_id"], session_id=member["session_id"])
    finally:
        await app.close()
    assert len(rows) == 4 and set(truth) == set(rows)
    assert all(t is not None for t in truth.values())
    roots = top_level_of(rows)
    expected_total = sum(span_count(r) for r in rows.values())

    service = start_traced_service(db_url, rx)
    await service.start()
    try:
        await wait_counted(service, len(rows))
        await wait_until(all_exported(db_url, set(rows)), "every run marked exported")
        first = rx.spans()
        metrics = Samples(await scrape_text(service.port))

        # Export again: reset the outbox and wake the sink -> the same spans, byte for byte. The first
        # export built the runs the collector handed over in memory (StateOutbox.offer); this one
        # re-reads them from agno's table, as after a restart: both paths must give the same spans.
        rx.clear()
        await asyncio.to_thread(reset_outbox, db_url)
        assert service.trace_sink is not None
        service.trace_sink.notify()
        await wait_until(all_exported(db_url, set(rows)), "every run marked exported again")
        second = rx.spans()
    finally:
        await service.stop()

    # Nothing missing, nothing extra, one export each.
    assert len(first) == expected_total, Counter(s.name for s in first)
    assert len({(s.trace_id, s.span_id) for s in first}) == expected_total
    assert metrics.sum("agno_exporter_spans_exported_total") == expected_total
    assert metrics.sum("agno_exporter_spans_failed_total") == 0
    assert metrics.sum("agno_exporter_spans_dropped_total") == 0

    check_traces(first, rows, roots, truth)

    # Re-export: identical ids (and identical everything else) — exporting twice is idempotent.
    def key(s: ReceivedSpan) -> tuple[str, str]:
        return s.trace_id, s.span_id

    assert sorted(first, key=key) == sorted(second, key=key)
    assert [(s.trace_id, s.span_id, s.parent_span_id) for s in sorted(first, key=key)] == [
        (s.trace_id, s.span_id, s.parent_span_id) for s in sorted(second, key=key)]


def check_traces(spans: list[ReceivedSpan], rows: dict[str, dict[str, Any]], roots: dict[str, str],
                 truth: dict[str, Any]) -> None:
    by_run = index_spans(spans)
    assert set(by_run) == set(rows)
    by_id = {(s.trace_id, s.span_id): s for s in spans}

    # One trace per top-level run; the member's spans in its team's trace.
    top_level = {run_id for run_id, r in rows.items() if not r["parent_run_id"]}
    assert {s.trace_id for s in spans} == {trace_id_hex(r) for r in top_level}
    for trace_id in {s.trace_id for s in spans}:
        assert sum(1 for s in spans if s.trace_id == trace_id and not s.parent_span_id) == 1, trace_id

    invoke_of: dict[str, ReceivedSpan] = {}
    for run_id, row in rows.items():
        mine = by_run[run_id]
        assert len(mine) == span_count(row), (run_id, [s.name for s in mine])
        assert {s.trace_id for s in mine} == {trace_id_hex(roots[run_id])}
        (invoke,) = [s for s in mine if s.name.startswith("invoke_agent ")]
        invoke_of[run_id] = invoke

    for run_id, row in rows.items():
        data, out = row["run_data"], truth[run_id]
        name = run_name(row)
        invoke = invoke_of[run_id]
        a = invoke.attributes

        # --- the run's span
        assert invoke.name == f"invoke_agent {name}" and invoke.kind == KIND_INTERNAL
        if row["parent_run_id"]:
            # nested under the team's call that delegated to it
            (call,) = [s for s in by_run[row["parent_run_id"]] if s.name == "execute_tool delegate_task_to_member"]
            assert invoke.parent_span_id == call.span_id
            assert call.parent_span_id == invoke_of[row["parent_run_id"]].span_id
            assert a["agno.parent_run_id"] == row["parent_run_id"]
        else:
            assert invoke.parent_span_id == "" and "agno.parent_run_id" not in a
        assert a["gen_ai.operation.name"] == "invoke_agent"
        assert a["gen_ai.agent.name"] == name == (getattr(out, "agent_name", None) or getattr(out, "team_name", None))
        assert a["gen_ai.agent.id"] == (row["agent_id"] or row["team_id"])
        assert a["gen_ai.conversation.id"] == a["agno.session_id"] == row["session_id"] == out.session_id
        assert a["gen_ai.request.model"] == data["model"] == "gpt-4o-mini"
        assert a["gen_ai.provider.name"] == "openai"
        assert a["agno.run.status"] == row["status"] == str(getattr(out.status, "value", out.status)).upper()
        assert a["agno.run_type"] == row["run_type"]
        assert invoke.resource.get("service.name") == "agno"
        # token counts equal agno's run metrics (its API and its row)
        m = out.metrics
        assert a["gen_ai.usage.input_tokens"] == m.input_tokens == data["metrics"].get("input_tokens", 0)
        assert a["gen_ai.usage.output_tokens"] == m.output_tokens == data["metrics"].get("output_tokens", 0)
        if m.time_to_first_token is not None:
            assert a["agno.time_to_first_token"] == m.time_to_first_token
        # the run span lasts agno's duration
        assert m.duration is not None
        assert abs((invoke.end_ns - invoke.start_ns) - m.duration * 1e9) <= US, (name, invoke, m.duration)

        if row["status"] == "ERROR":
            assert invoke.status_code == STATUS_ERROR
            assert a["error.type"] == "APIConnectionError"
            assert "Connection error" in invoke.status_message
            # no model call or tool was recorded: a span starting at agno's created_at
            assert invoke.start_ns == row["created_at"] * 1_000_000_000
            assert by_run[run_id] == [invoke]
            continue
        assert invoke.status_code == STATUS_UNSET and "error.type" not in a

        # --- one chat span per model call, with the message's own metrics
        messages = model_messages(row)
        assert len(messages) == 2  # the call that asks for the tool, the call that answers
        chats = {s.attributes["agno.message_id"]: s for s in by_run[run_id] if s.name.startswith("chat ")}
        assert set(chats) == {msg["id"] for msg in messages}
        api_messages = {msg.id: msg for msg in out.messages or []}
        chat_of_call: dict[str, ReceivedSpan] = {}
        for msg in messages:
            chat = chats[msg["id"]]
            c = chat.attributes
            mm = msg.get("metrics") or {}
            assert chat.name == "chat gpt-4o-mini" and chat.kind == KIND_CLIENT
            assert chat.parent_span_id == invoke.span_id
            assert c["gen_ai.operation.name"] == "chat"
            assert c["gen_ai.request.model"] == "gpt-4o-mini" and c["gen_ai.provider.name"] == "openai"
            assert c["gen_ai.conversation.id"] == row["session_id"]
            api = api_messages[msg["id"]].metrics
            assert c["gen_ai.usage.input_tokens"] == mm.get("input_tokens", 0) == api.input_tokens
            assert c["gen_ai.usage.output_tokens"] == mm.get("output_tokens", 0) == api.output_tokens
            # a non-streamed call (agno stored its duration): no time to first chunk, agno's own TTFT kept
            streamed = mm.get("duration") is None
            assert c["gen_ai.request.stream"] is streamed
            if mm.get("time_to_first_token") is not None:
                assert c["agno.time_to_first_token"] == mm["time_to_first_token"]
                assert c.get("gen_ai.response.time_to_first_chunk") == (mm["time_to_first_token"] if streamed
                                                                        else None)
            assert c["agno.timing"] == "reconstructed"
            if mm.get("duration") is not None:
                assert abs((chat.end_ns - chat.start_ns) - mm["duration"] * 1e9) <= US, (chat, mm)
            assert chat.start_ns >= msg["created_at"] * 1_000_000_000  # never before the call's own second
            for call in msg.get("tool_calls") or []:
                chat_of_call[call["id"]] = chat

        # --- one tool span per tool call, at agno's exact times
        tools = {s.attributes["gen_ai.tool.call.id"]: s for s in by_run[run_id] if s.name.startswith("execute_tool ")}
        stored_tools = tools_of(row)
        assert set(tools) == {t["tool_call_id"] for t in stored_tools} and len(stored_tools) == 1
        api_tools = {t.tool_call_id: t for t in out.tools or []}
        for t in stored_tools:
            span = tools[t["tool_call_id"]]
            assert span.name == f"execute_tool {t['tool_name']}"
            assert span.parent_span_id == invoke.span_id  # a sibling of the chat spans
            assert span.attributes["gen_ai.operation.name"] == "execute_tool"
            assert span.attributes["gen_ai.tool.name"] == t["tool_name"]
            start, end = t["metrics"]["start_time"], t["metrics"]["end_time"]
            api_metrics = api_tools[t["tool_call_id"]].metrics
            assert (start, end) == (api_metrics.start_time, api_metrics.end_time)
            if t["tool_name"] == "delegate_task_to_member":
                # agno times only the call's last moments, after the member ran: the span covers the
                # member's run and agno's interval, and says it is reconstructed
                (member_id,) = [m for m, r in rows.items() if r["parent_run_id"] == run_id]
                member_span = invoke_of[member_id]
                assert span.attributes["agno.timing"] == "reconstructed"
                assert span.start_ns <= member_span.start_ns and member_span.end_ns <= span.end_ns
                assert span.start_ns <= exact_ns(start) + US and exact_ns(end) - US <= span.end_ns
            else:
                assert span.attributes["agno.timing"] == "exact"
                # agno's exact times, to well under a microsecond
                assert abs(span.start_ns - exact_ns(start)) < US and abs(span.end_ns - exact_ns(end)) < US, (span, t)
            requester = chat_of_call[t["tool_call_id"]]
            assert span.links == ((requester.trace_id, requester.span_id),)
        expected_tool = "delegate_task_to_member" if row["run_type"] == "team" else "get_stock_price"
        assert [t["tool_name"] for t in stored_tools] == [expected_tool]

    # Children lie inside their parents (the member's run span inside its team's too).
    for s in spans:
        if s.parent_span_id:
            parent = by_id[(s.trace_id, s.parent_span_id)]
            assert parent.start_ns <= s.start_ns <= s.end_ns <= parent.end_ns, (s.name, parent.name, s, parent)


def exporter_transactions_older_than(db_url: str, seconds: float) -> list[tuple[Any, ...]]:
    """The exporter's connections that have been inside one transaction for longer than ``seconds``."""
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT application_name, state, left(query, 80) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE 'agno-exporter%%'"
            " AND xact_start < now() - make_interval(secs => %s)",
            (seconds,),
        ).fetchall()


def test_collector_and_sink_never_interleave_transactions(
    db_url: str, sim_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The collector and the trace sink run concurrently on the service's database connections:
    a transaction of one must never nest into (or commit out of order with) one of the other's —
    that leaves a connection idle in transaction for good (nothing it writes afterwards is ever
    committed, and it holds back vacuum on agno's database)."""
    with OtlpReceiver() as rx:
        asyncio.run(_never_interleave(db_url, sim_url, rx))
    nesting = [r.getMessage() for r in caplog.records
               if "nesting level" in r.getMessage() or (r.exc_info and "nesting level" in str(r.exc_info[1]))]
    assert not nesting, nesting


async def _never_interleave(db_url: str, sim_url: str, rx: OtlpReceiver) -> None:
    app = AgnoApp(db_url, sim_url)
    try:
        await app.run(app.agent())
        await app.run(app.team())
    finally:
        await app.close()
    rows = await asyncio.to_thread(stored_rows, db_url)
    service = make_service(db_url, traces={"endpoint": rx.base_url}, collector={"poll_interval": "50ms"})
    await service.start()
    try:
        await wait_counted(service, len(rows))
        await wait_until(all_exported(db_url, set(rows)), "every run marked exported")

        def reset() -> None:
            try:
                with psycopg.connect(db_url) as conn:
                    conn.execute("SET lock_timeout = '2s'")  # a wedged transaction holds the rows' locks
                    conn.execute("UPDATE agno_exporter.runs SET traces_exported = false WHERE source = %s",
                                 (SOURCE,))
            except psycopg.errors.LockNotAvailable:
                stuck = exporter_transactions_older_than(db_url, 1.0)
                raise AssertionError(f"the outbox rows stay locked by an exporter transaction: {stuck}") from None

        # Keep both tasks busy on the same connections: the collector polls every 50 ms while the
        # sink re-exports the whole outbox again and again.
        assert service.trace_sink is not None
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            await asyncio.to_thread(reset)
            service.trace_sink.notify()
            await asyncio.sleep(0.02)
        await wait_until(all_exported(db_url, set(rows)), "every run marked exported after the re-exports")
        # A wedged connection stays inside its transaction for good; a busy one (a loaded machine can
        # make one slow) leaves it: wait until no exporter transaction is older than a second.
        await wait_until(lambda: not exporter_transactions_older_than(db_url, 1.0),
                         "no exporter transaction open for more than 1 s")
    finally:
        await service.stop()


# ---------------------------------------------------------------------------------------------
# 2. the backend is down for a while, then back


def test_backend_down_metrics_flow_then_every_run_arrives(db_url: str, sim_url: str) -> None:
    with OtlpReceiver() as rx:
        rx.down()  # connections to its port are refused from the start
        asyncio.run(_backend_down_then_back(db_url, sim_url, rx))


async def _backend_down_then_back(db_url: str, sim_url: str, rx: OtlpReceiver) -> None:
    service = start_traced_service(db_url, rx)
    await service.start()
    shrink_sink_backoff(service)
    try:
        # Runs are written and collected while the backend refuses connections.
        app = AgnoApp(db_url, sim_url)
        try:
            await app.run(app.agent())
            await app.run(app.agent("StreamedAgent", tools=False), stream=True)
            await app.run(app.team())
            await app.run(app.agent("BrokenAgent", base_url="http://127.0.0.1:9/v1"))
        finally:
            await app.close()
        rows = await asyncio.to_thread(stored_rows, db_url)
        assert len(rows) == 5
        await wait_counted(service, len(rows))

        def failing() -> bool:
            value = service.registry.get_sample_value
            # retried (not given up on), and a retry came after the last run was counted
            return (value("agno_exporter_trace_export_errors_total", {"origin": "runs"}) or 0) >= 3 and (
                value("agno_exporter_trace_backlog_runs") == len(rows))

        await wait_until(failing, "failed export attempts over the whole backlog")
        # Metrics keep flowing: every run is on /metrics while no span got through.
        down = Samples(await scrape_text(service.port))
        assert down.sum("agno_runs_total") == len(rows)
        assert down.sum("agno_runs_total", status="ERROR") == 1
        assert down.sum("agno_exporter_up") == 1
        assert down.sum("agno_exporter_spans_failed_total") > 0
        assert down.sum("agno_exporter_trace_export_errors_total") >= 3
        assert down.sum("agno_exporter_spans_exported_total") == 0
        assert down.sum("agno_exporter_spans_dropped_total") == 0
        assert down.sum("agno_exporter_trace_backlog_runs") == len(rows)
        state = await asyncio.to_thread(outbox, db_url)
        assert set(state) == set(rows) and not any(state.values())  # all waiting in the outbox
        assert rx.spans() == []

        await asyncio.to_thread(rx.up)
        await wait_until(all_exported(db_url, set(rows)), "the outbox to drain after the backend came back")
        back = Samples(await scrape_text(service.port))
    finally:
        await service.stop()

    # Delivery is at least once: a span may arrive twice, then identical.
    unique: dict[tuple[str, str], ReceivedSpan] = {}
    for s in rx.spans():
        assert unique.setdefault((s.trace_id, s.span_id), s) == s
    spans = list(unique.values())
    by_run = index_spans(spans)
    roots = top_level_of(rows)
    assert set(by_run) == set(rows)  # no run missing
    for run_id, row in rows.items():
        assert len(by_run[run_id]) == span_count(row), (run_id, [s.name for s in by_run[run_id]])
        assert {s.trace_id for s in by_run[run_id]} == {trace_id_hex(roots[run_id])}
    assert len(spans) == sum(span_count(r) for r in rows.values())
    assert back.sum("agno_exporter_spans_exported_total") >= len(spans)
    assert back.sum("agno_exporter_spans_dropped_total") == 0
    assert back.sum("agno_exporter_trace_backlog_runs") == 0
    assert back.sum("agno_runs_total") == len(rows)  # counted once, whatever the span delivery did


# ---------------------------------------------------------------------------------------------
# 4. workflow steps and team members nest in their parent's trace


def test_step_and_member_runs_nest_under_their_parents(db_url: str, sim_url: str) -> None:
    with OtlpReceiver() as rx:
        asyncio.run(_nesting(db_url, sim_url, rx))


async def pending(service: Service, ready_only: bool) -> bool:
    """``has_pending_traces`` of the service's state, on a connection of its own (the collector's may be
    in a transaction of its poll)."""
    db = Database(service.state.db.opts)
    try:
        return await PostgresState(db, service.state.schema, service.state.source).has_pending_traces(ready_only)
    finally:
        await db.close()


async def _nesting(db_url: str, sim_url: str, rx: OtlpReceiver) -> None:
    from agno.workflow import Step, Workflow

    from tests.helpers.truth import workflow_truth
    from tests.pg.test_workflows import plain, set_status, step_team

    app = AgnoApp(db_url, sim_url)
    try:
        inner = Workflow(name="InnerFlow", telemetry=False,
                         steps=[Step(name="inner_write", agent=plain(app, "Writer"))])
        flow = Workflow(name="StepFlow", db=app.db, telemetry=False, steps=[
            Step(name="research", agent=plain(app, "Researcher", tools=True)),
            Step(name="team", team=step_team(app)),
            Step(name="sub", workflow=inner),
        ])
        out = await flow.arun("What is the stock price of AAPL?")
        stored = await flow.aget_run_output(run_id=out.run_id, session_id=out.session_id)
        team_out = await app.run(app.team())  # a team with a row of its own, and its member's row
    finally:
        await app.close()
    truth = {r["run_id"]: r for r in workflow_truth(stored)}
    assert len(truth) == 6  # StepFlow, Researcher, StepTeam, StockAgent, InnerFlow, Writer
    rows = stored_rows(db_url)
    (member,) = [r for r in rows.values() if r["parent_run_id"] == team_out.run_id]

    def spans_of(run: dict[str, Any]) -> int:
        calls = [m for m in run["messages"] if m["role"] == "assistant" and not m["from_history"]]
        return 1 + len(calls) + len(run["tools"])

    # The team's row is not final when the exporter first meets its member's: the member waits.
    set_status(db_url, [team_out.run_id], "RUNNING")
    service = start_traced_service(db_url, rx)
    await service.start()
    try:
        await wait_counted(service, len(truth) + 1)
        await wait_until(lambda: all(v for k, v in outbox(db_url).items() if k in truth), "the workflow exported")
        assert outbox(db_url)[member["run_id"]] is False  # held for its team
        assert await pending(service, ready_only=False) and not await pending(service, ready_only=True)
        set_status(db_url, [team_out.run_id], "COMPLETED")
        await wait_until(all_exported(db_url, {*truth, team_out.run_id, member["run_id"]}), "everything exported")
        assert not await pending(service, ready_only=False)
        spans = rx.spans()
    finally:
        await service.stop()

    by_run = index_spans(spans)
    assert set(by_run) == {*truth, team_out.run_id, member["run_id"]}
    for run_id, run in truth.items():
        assert len(by_run[run_id]) == spans_of(run), run_id
        assert {s.trace_id for s in by_run[run_id]} == {trace_id_hex(out.run_id)}
    for run_id in (team_out.run_id, member["run_id"]):
        assert {s.trace_id for s in by_run[run_id]} == {trace_id_hex(team_out.run_id)}
    assert len(by_run[member["run_id"]]) == span_count(member)
    for trace_id in {s.trace_id for s in spans}:
        assert sum(1 for s in spans if s.trace_id == trace_id and not s.parent_span_id) == 1

    def invoke(run_id: str) -> ReceivedSpan:
        (span,) = [s for s in by_run[run_id] if s.name.startswith("invoke_")]
        return span

    def delegation(team_id: str) -> ReceivedSpan:
        (span,) = [s for s in by_run[team_id] if s.name == "execute_tool delegate_task_to_member"]
        return span

    assert invoke(out.run_id).name == "invoke_workflow StepFlow" and not invoke(out.run_id).parent_span_id
    for run_id, run in truth.items():
        if run_id == out.run_id:
            continue
        parent = run["parent_run_id"]
        span = invoke(run_id)
        if truth[parent]["team_name"]:  # the step team's member: under the call that delegated to it
            assert span.parent_span_id == delegation(parent).span_id, run["agent_name"]
        else:  # a step: under its workflow (InnerFlow's step under InnerFlow)
            assert span.parent_span_id == invoke(parent).span_id, run
        assert span.attributes["agno.parent_run_id"] == parent
    assert invoke(member["run_id"]).parent_span_id == delegation(team_out.run_id).span_id
    # tokens on each step's span are agno's own
    for run_id, run in truth.items():
        m = run["metrics"] or {}
        assert invoke(run_id).attributes["gen_ai.usage.input_tokens"] == m.get("input_tokens", 0)

    # Children lie inside their parents: a workflow covers its steps, a delegation call the member
    # run it started (agno times only its last moments).
    by_id = {(s.trace_id, s.span_id): s for s in spans}
    for s in spans:
        if s.parent_span_id:
            parent_span = by_id[(s.trace_id, s.parent_span_id)]
            assert parent_span.start_ns <= s.start_ns <= s.end_ns <= parent_span.end_ns, (s.name, parent_span.name)
