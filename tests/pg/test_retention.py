"""The state stays bounded: the run ledger forgets what agno deleted (exporter.ingest.retention), the span
dedupe what left the re-read window, without counting or sending anything twice."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from agno.db.postgres import PostgresDb
from agno.tracing.schemas import Span as AgnoSpan
from agno.tracing.schemas import create_trace_from_spans
from prometheus_client import CollectorRegistry

from exporter.db import ConnectOptions, Database
from exporter.ingest.spans_table import SpansTable
from exporter.sinks.otel.agno_spans import PollerOptions, SpanPoller
from exporter.state.store import PostgresState
from tests.e2e.test_exactly_once import close, exported_runs, exported_tokens, make_collector, write_runs
from tests.helpers.support import sqlalchemy_url
from tests.pg.test_open_runs import poll_until


def one(db_url: str, query: str, *params: Any) -> Any:
    # A connection of its own: closing it flushes its backend's statistics (the deleted-rows counter).
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def ledger(db_url: str) -> int:
    return int(one(db_url, "SELECT count(*) FROM agno_exporter.runs"))


def test_runs_agno_deleted_are_forgotten_and_counters_stay(db_url: str, sim_url: str) -> None:
    asyncio.run(write_runs(db_url, sim_url, 4))

    async def main() -> None:
        c = make_collector(db_url, forget_after=0.0, prune_interval=0.0)
        try:
            assert (await c.poll_once()).counted == 4
            runs, tokens = exported_runs(c), exported_tokens(c)
            assert ledger(db_url) == 4
            # agno's retention deletes two runs (their sessions stay: the runs alone go).
            one(db_url, "DELETE FROM ai.agno_runs WHERE run_id IN (SELECT run_id FROM ai.agno_runs ORDER BY run_id"
                        " LIMIT 2) RETURNING 1")
            assert await poll_until(c, lambda: c.pruner.forgotten == 2, "the deleted runs to be forgotten") == 0
            assert ledger(db_url) == 2
            assert (exported_runs(c), exported_tokens(c)) == (runs, tokens)
            # A run agno still holds, rewritten under its id (REGENERATED): still recognised.
            one(db_url, "UPDATE ai.agno_runs SET status = 'REGENERATED', updated_at = updated_at + 5"
                        " WHERE run_id = (SELECT min(run_id) FROM ai.agno_runs) RETURNING 1")
            for _ in range(3):
                assert (await c.poll_once()).counted == 0
            assert ledger(db_url) == 2
        finally:
            await close(c)
        # A restart: the totals come back from the state, nothing is counted again.
        c = make_collector(db_url, forget_after=0.0, prune_interval=0.0)
        try:
            for _ in range(3):
                assert (await c.poll_once()).counted == 0
            assert (exported_runs(c), exported_tokens(c)) == (runs, tokens)
            assert ledger(db_url) == 2
        finally:
            await close(c)

    asyncio.run(main())


def test_a_run_written_back_within_the_grace_is_not_counted_again(db_url: str, sim_url: str) -> None:
    asyncio.run(write_runs(db_url, sim_url, 2))

    async def main() -> None:
        c = make_collector(db_url, forget_after=3600.0, prune_interval=0.0)
        try:
            assert (await c.poll_once()).counted == 2
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute("CREATE TABLE saved AS SELECT * FROM ai.agno_runs WHERE run_id ="
                             " (SELECT min(run_id) FROM ai.agno_runs)")
                conn.execute("DELETE FROM ai.agno_runs WHERE run_id IN (SELECT run_id FROM saved)")

            def marked() -> bool:
                return bool(one(db_url, "SELECT count(*) FROM agno_exporter.runs WHERE missing_since IS NOT NULL"))

            await poll_until(c, marked, "the deleted run to be found gone")
            # The app saves the run again (same id, a new stamp) within the grace: the ledger still has it.
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute("INSERT INTO ai.agno_runs SELECT * FROM saved")
                conn.execute("UPDATE ai.agno_runs SET updated_at = extract(epoch FROM now())::bigint"
                             " WHERE run_id IN (SELECT run_id FROM saved)")
            assert (await c.poll_once()).counted == 0
            # The grace ends (as if an hour passed): the sweep that would forget it finds it held again.
            c.pruner.grace = 0.0
            assert await poll_until(c, lambda: not marked(), "the mark to clear") == 0
            assert (await c.poll_once()).counted == 0
            assert exported_runs(c) == 2 and ledger(db_url) == 2 and c.pruner.forgotten == 0
        finally:
            await close(c)

    asyncio.run(main())


def test_forwarded_spans_are_forgotten_once_out_of_the_window(db_url: str) -> None:
    """agno inserts a span once and never rewrites it: past the re-read window (and delivered) its
    dedupe row goes, and it is not listed again."""
    def span(span_id: str, created: datetime) -> AgnoSpan:
        return AgnoSpan(span_id=span_id, trace_id="0af7651916cd43dd8448eb211c80319c", parent_span_id=None,
                        name="Agent.arun", span_kind="INTERNAL", status_code="OK", status_message=None,
                        start_time=created, end_time=created + timedelta(seconds=1), duration_ms=1000,
                        attributes={}, created_at=created)

    now = datetime.now(UTC)
    old = [span(f"00000000000000{i:02x}", now - timedelta(hours=3)) for i in range(3)]
    db = PostgresDb(db_url=sqlalchemy_url(db_url))
    try:
        db.upsert_trace(create_trace_from_spans(old))  # type: ignore[arg-type]
        db.create_spans(old)
    finally:
        db.db_engine.dispose()

    def queue() -> dict[str, bool]:
        with psycopg.connect(db_url) as conn:
            return {r[0]: r[1] for r in conn.execute("SELECT span_id, exported FROM agno_exporter.forwarded_spans")}

    async def main() -> None:
        source = SpansTable(Database(ConnectOptions(db_url, read_only=True)), "ai", "agno_spans", "agno_traces")
        state = PostgresState(Database(ConnectOptions(db_url)), "agno_exporter", source.key)
        # queued_at is the poller's clock: queued two hours ago, as if the spans had waited that long
        poller = SpanPoller(source, state, CollectorRegistry(), PollerOptions(forget_interval=0.0),
                            clock=lambda: now.timestamp() - 7200)
        try:
            assert await poller.poll_once() == 3  # the backfill
            assert await poller.poll_once() == 0
            assert set(queue()) == {s.span_id for s in old} and poller.forgotten == 0  # not delivered yet
            await state.mark_spans_exported([s.span_id for s in old])
            assert await poller.poll_once() == 0
            assert queue() == {} and poller.forgotten == 3
            assert await poller.poll_once() == 0  # never listed again
            # A new span is queued; undelivered, its row stays whatever its age.
            db2 = PostgresDb(db_url=sqlalchemy_url(db_url))
            try:
                db2.create_spans([span("00000000000000ff", datetime.now(UTC))])
            finally:
                db2.db_engine.dispose()
            assert await poller.poll_once() == 1
            assert await poller.poll_once() == 0
            assert queue() == {"00000000000000ff": False}
        finally:
            await source.db.close()
            await state.db.close()

    asyncio.run(main())


def test_a_first_start_does_not_sweep_the_ledger_it_just_filled(db_url: str, sim_url: str) -> None:
    """A new state counts agno's whole table in its first poll; sweeping that ledger for deleted runs
    (1,000 rows a poll) cost every idle poll for hours at 10^6 runs. Deletions after it still count."""
    asyncio.run(write_runs(db_url, sim_url, 3))

    async def main() -> None:
        c = make_collector(db_url, forget_after=0.0, prune_interval=0.0, prune_batch=1)
        try:
            assert (await c.poll_once()).counted == 3
            for _ in range(3):
                assert (await c.poll_once()).counted == 0
            assert c.pruner.steps == 0 and c.pruner.swept is not None
            one(db_url, "DELETE FROM ai.agno_runs WHERE run_id = (SELECT min(run_id) FROM ai.agno_runs) RETURNING 1")
            assert await poll_until(c, lambda: c.pruner.forgotten == 1, "the deleted run to be forgotten") == 0
            assert ledger(db_url) == 2 and c.pruner.steps > 0
        finally:
            await close(c)
        # A restart over a ledger that holds runs, with no record of a sweep: it sweeps.
        one(db_url, "DELETE FROM agno_exporter.meta WHERE key LIKE %s RETURNING 1", "ledger_swept:%")
        c = make_collector(db_url, forget_after=0.0, prune_interval=0.0, prune_batch=1)
        try:
            await c.poll_once()
            assert c.pruner.steps == 1
        finally:
            await close(c)

    asyncio.run(main())
