"""Forwarding agno's own spans (traces.forward_agno_spans): real agno tracing writes ``agno_spans`` in a
real Postgres, the Service forwards them through the real OTLP/HTTP exporter to a real receiver.

Checked: every row arrives exactly once with agno's ids, names and times to the microsecond; a
restart sends nothing again; a backend that is down (across a restart too) gets everything once
it is back, with the failures counted; a transaction that commits late is not skipped; malformed
rows are counted skips; missing tables are waited for.
"""

from __future__ import annotations

import asyncio
import calendar
import io
import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from agno.db.postgres import PostgresDb
from agno.tracing.schemas import Span as AgnoSpan
from agno.tracing.schemas import create_trace_from_spans

from exporter.commands.check import run_check
from exporter.commands.service import Service
from exporter.config import load_settings
from exporter.sinks.otel.agno_spans import since_text
from tests.helpers.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.helpers.scrape import Samples, scrape_text, scrape_until
from tests.helpers.support import DEADLINE, sqlalchemy_url
from tests.pg.test_collect_e2e import make_service
from tests.pg.test_traces_e2e import wait_until

pytestmark = pytest.mark.usefixtures("otel_env")

TESTS = Path(__file__).resolve().parents[1]
TRACING_APP = TESTS / "helpers" / "agno_tracing_app.py"
SOURCE = "ai.agno_spans"
SCOPE = "agno.tracing"  # the instrumentation scope of forwarded spans
KINDS = {"INTERNAL": 1, "SERVER": 2, "CLIENT": 3, "PRODUCER": 4, "CONSUMER": 5}  # OTLP SpanKind
STATUS = {"UNSET": 0, "OK": 1, "ERROR": 2}  # OTLP StatusCode


# ---------------------------------------------------------------------------------------------
# helpers


def iso_ns(text: str) -> int:
    """agno's ISO 8601 text -> epoch ns (integer arithmetic: microseconds, exactly)."""
    moment = datetime.fromisoformat(text)
    return calendar.timegm(moment.utctimetuple()) * 1_000_000_000 + moment.microsecond * 1_000


def span_rows(db_url: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(db_url, row_factory=psycopg.rows.dict_row) as conn:
        return {r["span_id"]: r for r in conn.execute("SELECT * FROM ai.agno_spans").fetchall()}


def queue_state(db_url: str) -> dict[str, bool]:
    """span_id -> exported, from the exporter's state (empty before the exporter created it)."""
    with psycopg.connect(db_url) as conn:
        try:
            return dict(conn.execute("SELECT span_id, exported FROM agno_exporter.forwarded_spans WHERE source = %s",
                                     (SOURCE,)).fetchall())
        except psycopg.errors.UndefinedTable:
            return {}


def all_exported(db_url: str, span_ids: set[str]) -> Callable[[], bool]:
    def check() -> bool:
        state = queue_state(db_url)
        return span_ids <= set(state) and all(state[s] for s in span_ids)
    return check


def forwarded(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [s for s in spans if s.scope == SCOPE]


def forwarding_service(db_url: str, rx: OtlpReceiver, **collector: Any) -> Service:
    # Small pages and batches: several pages per poll and several passes per backlog.
    return make_service(
        db_url,
        traces={"endpoint": rx.base_url, "forward_agno_spans": True, "min_backoff": "20ms", "max_backoff": "200ms",
                "batch_size": 10},
        collector={"batch_size": 7, **collector},
    )


def run_traced_app(db_url: str, sim_url: str, runs: int, batch: bool = False) -> None:
    """agno with its tracing on, in a process of its own (setup_tracing sets a global tracer provider)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS.parent), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, str(TRACING_APP), db_url, sim_url, str(runs), *(["--batch"] * batch)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Wait on in-process state (no database reads)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def more_polls(service: Service, n: int = 3) -> None:
    """Wait for ``n`` more polls of agno's spans table: "nothing more arrives" is then checked over
    polls that really ran, however slow the machine."""
    poller = service.span_poller
    assert poller is not None
    target = poller.polls + n
    await wait_for(lambda: poller.polls >= target, f"{n} more polls of agno's spans")


def check_forwarded(received: list[ReceivedSpan], rows: dict[str, dict[str, Any]]) -> None:
    """Each row arrived exactly once, as agno stored it."""
    counts = Counter(s.span_id for s in received)
    assert set(counts) == set(rows), (set(rows) - set(counts), set(counts) - set(rows))
    assert all(n == 1 for n in counts.values()), [k for k, n in counts.items() if n > 1]
    for s in received:
        row = rows[s.span_id]
        assert s.trace_id == row["trace_id"] and s.parent_span_id == (row["parent_span_id"] or ""), (s, row)
        assert s.name == row["name"]
        assert s.kind == KINDS[row["span_kind"]] and s.status_code == STATUS[row["status_code"]]
        assert (s.start_ns, s.end_ns) == (iso_ns(row["start_time"]), iso_ns(row["end_time"])), (s, row)
        for key, value in (row["attributes"] or {}).items():
            if isinstance(value, (str, int, float, bool)):
                assert s.attributes[key] == value, key
        assert s.resource.get("service.name") == "agno"


# ---------------------------------------------------------------------------------------------
# end to end with real agno tracing


@pytest.mark.slow
def test_every_span_once_across_restarts(db_url: str, sim_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agno_exporter.agno_spans")
    with OtlpReceiver() as rx:
        asyncio.run(_every_span_once(db_url, sim_url, rx))
    waiting = [r for r in caplog.records if r.getMessage().startswith(f"no table {SOURCE}")]
    assert len(waiting) == 1  # logged once, however many polls found no table


async def _every_span_once(db_url: str, sim_url: str, rx: OtlpReceiver) -> None:
    service = forwarding_service(db_url, rx)
    await service.start()
    try:
        poller = service.span_poller
        # Started before agno's tracing ever wrote: keeps polling, waits for the table.
        await wait_for(lambda: poller.polls >= 3, "polls without agno's tracing tables")
        assert poller.table_missing
        # One span per transaction (agno's default SimpleSpanProcessor) ...
        await asyncio.to_thread(run_traced_app, db_url, sim_url, 1)
        rows = await asyncio.to_thread(span_rows, db_url)
        await wait_until(all_exported(db_url, set(rows)), "the spans of the first app run forwarded")
        # ... then many spans per transaction (BatchSpanProcessor), read by the incremental path.
        await asyncio.to_thread(run_traced_app, db_url, sim_url, 1, True)
        rows = await asyncio.to_thread(span_rows, db_url)
        await wait_until(all_exported(db_url, set(rows)), "the spans of the second app run forwarded")
        await more_polls(service)  # nothing more may arrive
        first = await scrape_until(service.port, lambda s: s.sum(
            "agno_exporter_spans_exported_total", origin="agno_tracing") >= len(rows))
    finally:
        await service.stop()
    # two agent runs and two team runs, each a trace: run, model call, tool and delegation spans
    roots = sorted(r["name"] for r in rows.values() if not r["parent_span_id"])
    assert roots == ["BackgroundMetricsAgent.arun"] * 2 + ["FinanceTeam.arun"] * 2 and len(rows) >= 20
    received = forwarded(rx.spans())
    check_forwarded(received, rows)
    assert first.sum("agno_exporter_agno_spans_queued_total") == len(rows)
    assert first.sum("agno_exporter_spans_exported_total", origin="agno_tracing") == len(rows)
    assert first.sum("agno_exporter_spans_failed_total", origin="agno_tracing") == 0
    assert first.sum("agno_exporter_spans_dropped_total", origin="agno_tracing") == 0
    assert first.sum("agno_exporter_agno_spans_backlog") == 0
    assert first.sum("agno_exporter_rows_skipped_total") == 0
    # The exporter's own spans of the same runs still flow beside them, under their own ids.
    assert first.sum("agno_exporter_spans_exported_total", origin="runs") > 0
    assert not {s.trace_id for s in received} & {s.trace_id for s in rx.spans() if s.scope != SCOPE}

    # A restart re-reads the recent window (clock_skew) and sends nothing again. The window is made far
    # longer than this test can take on a loaded machine, so the spans sent above are certainly in it
    # (with the default 10 s, a slow restart could leave none to re-read and the check below would fail).
    rx.clear()
    service = forwarding_service(db_url, rx, clock_skew="10m")
    await service.start()
    try:
        poller = service.span_poller
        await wait_for(lambda: poller.polls >= 3, "polls after the restart")
        window = since_text(poller.watermark.low - service.settings.collector.clock_skew)
        assert sum(r["created_at"] >= window for r in rows.values()) > 0  # spans already sent were re-read
        await more_polls(service)
        again = Samples(await scrape_text(service.port))
    finally:
        await service.stop()
    assert forwarded(rx.spans()) == []
    assert again.sum("agno_exporter_agno_spans_queued_total") == 0
    assert again.sum("agno_exporter_spans_exported_total", origin="agno_tracing") == 0


@pytest.mark.slow
def test_backend_down_across_a_restart_then_every_span_once(db_url: str, sim_url: str) -> None:
    with OtlpReceiver() as rx:
        rx.down()  # connections refused from the start
        asyncio.run(_backend_down(db_url, sim_url, rx))


async def _backend_down(db_url: str, sim_url: str, rx: OtlpReceiver) -> None:
    await asyncio.to_thread(run_traced_app, db_url, sim_url, 1)
    rows = await asyncio.to_thread(span_rows, db_url)

    def failing(service: Service) -> Callable[[], bool]:
        def check() -> bool:
            value = service.registry.get_sample_value
            return (value("agno_exporter_spans_failed_total", {"origin": "agno_tracing"}) or 0) > 0 and (
                value("agno_exporter_trace_export_errors_total", {"origin": "agno_tracing"}) or 0) >= 2
        return check

    service = forwarding_service(db_url, rx)
    await service.start()
    try:
        await wait_until(lambda: set(queue_state(db_url)) == set(rows), "every span queued")
        await wait_for(failing(service), "failed exports while the backend is down")
        down = Samples(await scrape_text(service.port))
    finally:
        await service.stop()
    assert down.sum("agno_exporter_spans_exported_total", origin="agno_tracing") == 0
    assert down.sum("agno_exporter_spans_dropped_total", origin="agno_tracing") == 0
    assert down.sum("agno_exporter_agno_spans_backlog") > 0
    assert not any((await asyncio.to_thread(queue_state, db_url)).values())  # all waiting in Postgres
    assert rx.spans() == []

    # Restarted while the backend is still down: the queue survives, failures go on being counted.
    service = forwarding_service(db_url, rx)
    await service.start()
    try:
        await wait_for(failing(service), "failed exports after the restart")
        await asyncio.to_thread(rx.up)
        await wait_until(all_exported(db_url, set(rows)), "the queue drained after the backend came back")
        await more_polls(service)
        back = await scrape_until(service.port, lambda s: s.sum(
            "agno_exporter_spans_exported_total", origin="agno_tracing") >= len(rows))
    finally:
        await service.stop()
    check_forwarded(forwarded(rx.spans()), rows)
    assert back.sum("agno_exporter_spans_exported_total", origin="agno_tracing") == len(rows)
    assert back.sum("agno_exporter_spans_failed_total", origin="agno_tracing") > 0
    assert back.sum("agno_exporter_spans_dropped_total", origin="agno_tracing") == 0
    assert back.sum("agno_exporter_agno_spans_queued_total") == 0  # queued before the restart, not again


# ---------------------------------------------------------------------------------------------
# late commits, malformed rows, check


def agno_span(trace_id: str, span_id: str, name: str, start: datetime, parent: str | None = None) -> AgnoSpan:
    return AgnoSpan(span_id=span_id, trace_id=trace_id, parent_span_id=parent, name=name, span_kind="INTERNAL",
                    status_code="OK", status_message=None, start_time=start, end_time=start + timedelta(seconds=0.25),
                    duration_ms=250, attributes={"agno.test": name, "n": 1}, created_at=datetime.now(UTC))


def insert_span(conn: psycopg.Connection[Any], row: dict[str, Any]) -> None:
    """The INSERT agno's create_spans issues (one row, its columns as Span.to_dict gives them)."""
    row = {**row, "attributes": json.dumps(row["attributes"])}
    cols = ", ".join(row)
    conn.execute(f"INSERT INTO ai.agno_spans ({cols}) VALUES ({', '.join(['%s'] * len(row))})",  # type: ignore[arg-type]
                 list(row.values()))


def test_late_commit_is_forwarded_and_malformed_rows_are_counted(db_url: str) -> None:
    with OtlpReceiver() as rx:
        asyncio.run(_late_commit(db_url, rx))


async def _late_commit(db_url: str, rx: OtlpReceiver) -> None:
    settings = load_settings(None, environ={}, overrides={
        "database": {"url": db_url}, "traces": {"endpoint": rx.base_url, "forward_agno_spans": True}})
    out = io.StringIO()
    await run_check(settings, out)
    assert f"no agno tracing table {SOURCE}" in out.getvalue()

    trace = "0af7651916cd43dd8448eb211c80319c"
    now = datetime.now(UTC)
    root = agno_span(trace, "b7ad6b7169203331", "Agent.arun", now)
    db = PostgresDb(db_url=sqlalchemy_url(db_url))
    try:
        # agno's own writes (DatabaseSpanExporter's calls): the trace row, then its spans
        await asyncio.to_thread(db.upsert_trace, create_trace_from_spans([root]))  # type: ignore[arg-type]
        await asyncio.to_thread(db.create_spans, [root])
    finally:
        db.db_engine.dispose()
    out = io.StringIO()
    await run_check(settings, out)
    assert "agno tracing tables: ai.agno_spans, ai.agno_traces; spans forwarded" in out.getvalue()

    # A clock_skew (1 s) far shorter than the time that passes below, so only the watermark (not the
    # slack) can keep the late span; it covers agno stamping a span just before inserting it.
    service = forwarding_service(db_url, rx, poll_interval="50ms", clock_skew="1s")
    await service.start()
    late_conn = await asyncio.to_thread(psycopg.connect, db_url)
    try:
        poller = service.span_poller
        await wait_until(all_exported(db_url, {root.span_id}), "the first span forwarded")
        # agno stamps created_at, then its transaction inserts the span and commits late.
        def stamp_and_insert() -> dict[str, Any]:
            row = agno_span(trace, "00f067aa0ba902b7", "OpenAIChat.ainvoke", now, parent=root.span_id).to_dict()
            insert_span(late_conn, row)  # transaction left open
            return row

        late = await asyncio.to_thread(stamp_and_insert)
        bad_ids = {**agno_span(trace, "e457b5a2e4d86bd1", "bad", now).to_dict(), "parent_span_id": "not-hex"}
        bad_time = {**agno_span(trace, "5b8efff798038103", "bad", now).to_dict(), "start_time": "yesterday"}
        later = agno_span(trace, "a1b2c3d4e5f60718", "get_stock_price", now, parent=root.span_id).to_dict()
        with psycopg.connect(db_url, autocommit=True) as conn:
            for row in (bad_ids, bad_time, later):
                insert_span(conn, row)
        await wait_until(all_exported(db_url, {later["span_id"], bad_ids["span_id"], bad_time["span_id"]}),
                         "the committed spans forwarded or skipped")
        polls, waited = poller.polls, time.monotonic()
        # well past clock_skew and into later seconds, over many polls
        await wait_for(lambda: poller.polls >= polls + 10 and time.monotonic() - waited >= 3.0, "ten polls and 3 s")
        assert late["span_id"] not in await asyncio.to_thread(queue_state, db_url)
        # The open transaction holds the watermark back, so the late span stays in the re-read window.
        assert since_text(poller.watermark.low - 1.0) <= late["created_at"]
        await asyncio.to_thread(late_conn.commit)
        await wait_until(all_exported(db_url, {late["span_id"]}), "the late span forwarded after its commit")
        metrics = await scrape_until(service.port, lambda s: s.sum(
            "agno_exporter_spans_exported_total", origin="agno_tracing") >= 3)
    finally:
        await asyncio.to_thread(late_conn.close)
        await service.stop()

    rows = await asyncio.to_thread(span_rows, db_url)
    good = {k: v for k, v in rows.items() if v["name"] != "bad"}
    assert len(good) == 3 and len(rows) == 5
    check_forwarded(forwarded(rx.spans()), good)
    assert metrics.sum("agno_exporter_rows_skipped_total", reason="agno_span_malformed") == 2
    assert metrics.sum("agno_exporter_spans_exported_total", origin="agno_tracing") == 3
    assert metrics.sum("agno_exporter_spans_dropped_total", origin="agno_tracing") == 0


def test_with_ha_only_the_leader_forwards(db_url: str) -> None:
    with OtlpReceiver() as rx:
        asyncio.run(_ha(db_url, rx))


async def _ha(db_url: str, rx: OtlpReceiver) -> None:
    now = datetime.now(UTC)
    traces = [f"{i + 1:032x}" for i in range(4)]
    spans = [agno_span(t, f"{(i + 1) * 16 + j + 1:016x}", f"span {j}", now + timedelta(seconds=j))
             for i, t in enumerate(traces) for j in range(6)]
    db = PostgresDb(db_url=sqlalchemy_url(db_url))
    try:
        for t in traces:  # as DatabaseSpanExporter writes them: per trace, the trace row then its spans
            mine = [sp for sp in spans if sp.trace_id == t]
            await asyncio.to_thread(db.upsert_trace, create_trace_from_spans(mine))  # type: ignore[arg-type]
            await asyncio.to_thread(db.create_spans, mine)
    finally:
        db.db_engine.dispose()
    replicas = [make_service(db_url, ha={"enabled": True},
                             traces={"endpoint": rx.base_url, "forward_agno_spans": True, "batch_size": 5})
                for _ in range(2)]
    for service in replicas:
        await service.start()
    try:
        await wait_until(all_exported(db_url, {sp.span_id for sp in spans}), "every span forwarded")
        await asyncio.sleep(0.5)  # the standby polls on: it must neither queue nor send
        got = [Samples(await scrape_text(service.port)) for service in replicas]
    finally:
        for service in replicas:
            await service.stop()
    leaders = [s.sum("agno_exporter_leader") for s in got]
    assert sorted(leaders) == [0, 1]
    leader, standby = (got[0], got[1]) if leaders[0] == 1 else (got[1], got[0])
    check_forwarded(forwarded(rx.spans()), await asyncio.to_thread(span_rows, db_url))
    assert leader.sum("agno_exporter_spans_exported_total", origin="agno_tracing") == len(spans)
    assert leader.sum("agno_exporter_agno_spans_queued_total") == len(spans)
    assert standby.sum("agno_exporter_spans_exported_total", origin="agno_tracing") == 0
    assert standby.sum("agno_exporter_agno_spans_queued_total") == 0


@pytest.mark.parametrize("moment", [
    datetime(2025, 1, 31, 12, 0, 5, tzinfo=UTC),  # isoformat() writes no fraction for microsecond 0
    datetime(2025, 1, 31, 12, 0, 5, 1, tzinfo=UTC),
    datetime(2025, 1, 31, 12, 0, 5, 999_999, tzinfo=UTC),
    datetime(2025, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC),
])
def test_watermark_bound_keeps_every_span_of_its_second(moment: datetime) -> None:
    second = moment.replace(microsecond=0).timestamp()
    for bound in (second, second + 0.999):  # any watermark inside that second
        assert since_text(bound) <= moment.isoformat()
    assert since_text(second + 1) > moment.isoformat()  # and the next second's bound excludes it
