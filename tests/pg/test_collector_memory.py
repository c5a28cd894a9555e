"""The collector on an in-memory source: agno's own rows (tests/fixtures, agno 3.1.10) served from a list by a
fake source that implements exporter.ingest.readers.Source, counted into the real Postgres state, published
to a recording sink beside the Prometheus sink.

What the Postgres-source tests check end to end, here with every input constructed: each final run is
published once (a second poll, a restart on the same state and a row re-stamped by agno publish nothing
again), the watermark follows the snapshot's writers, and the Prometheus sink sees what the recording
sink saw, applied only after the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from exporter.db import ConnectOptions, Database
from exporter.ingest.collector import RunCollector
from exporter.ingest.poll import CollectorOptions, PollResult
from exporter.ingest.source import Candidate, Page, Snapshot
from exporter.records.nesting import build_row_runs
from exporter.records.runs import RunRecord
from exporter.sink import NothingStaged, Sinks
from exporter.sinks.prometheus import families as prom
from exporter.sinks.prometheus.sink import PrometheusSink
from exporter.state.rows import SeriesRow, Staged
from exporter.state.store import PostgresState
from tests.helpers.reference import runs_v3

TABLE = ("ai", "agno_runs")


class MemoryReader:
    """One agno 3.x runs table, held as rows; listed by (updated_at, run_id) like the real reader."""

    key = "memory"
    appeared = False
    written = TABLE

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def _listed(self, since: float | None) -> list[dict[str, Any]]:
        final = [r for r in self.rows if r["status"] in ("COMPLETED", "ERROR", "CANCELLED")]
        return sorted((r for r in final if since is None or r["updated_at"] >= int(since)),
                      key=lambda r: (r["updated_at"], r["run_id"]))

    def _page(self, rows: list[dict[str, Any]], after: Any, limit: int) -> Page:
        start = 0 if after is None else after
        chunk = rows[start:start + limit]
        items = [Candidate(r["run_id"], r["updated_at"], r["status"], r["session_id"]) for r in chunk]
        return Page(items, start + limit if start + limit < len(rows) else None, len(chunk))

    async def candidate_page(self, since: float, after: Any, limit: int) -> Page:
        return self._page(self._listed(since), after, limit)

    async def backfill(self, after: Any, limit: int) -> Page:
        return self._page(self._listed(None), after, limit)

    async def fetch_runs(self, refs: Sequence[tuple[str, str | None]]) -> list[dict[str, Any]]:
        wanted = {run_id for run_id, _ in refs}
        return [dict(r) for r in self.rows if r["run_id"] in wanted]

    async def backfill_size(self) -> tuple[int | None, str]:
        return len(self.rows), "runs"


@dataclass
class MemorySource:
    """exporter.ingest.readers.Source over rows in memory; ``now`` and ``writers`` make the snapshot."""

    rows: list[dict[str, Any]]
    now: float
    writers: tuple[float | None, ...] = ()
    reader: MemoryReader = field(init=False)

    def __post_init__(self) -> None:
        self.reader = MemoryReader(self.rows)

    async def refresh(self, force: bool = False) -> list[MemoryReader]:
        return [self.reader]

    async def snapshot(self) -> Snapshot:
        return Snapshot(self.now, {TABLE: self.writers})

    async def begin_poll(self, since: Mapping[str, float], limit: int) -> tuple[Snapshot, dict[str, Page]]:
        return await self.snapshot(), {}  # each page is listed by the reader

    async def row_ids(self, refs: Sequence[tuple[str, str | None]]) -> set[str]:
        return {r["run_id"] for r in self.rows} & {run_id for run_id, _ in refs}

    async def ancestors(self, refs: Sequence[tuple[str, str | None]]) -> dict[str, str]:
        parent = {r["run_id"]: r["parent_run_id"] for r in self.rows}
        roots = {}
        for run_id, _ in refs:
            root = run_id
            while parent.get(root):
                root = parent[root]
            roots[run_id] = root
        return roots

    async def open_runs(self, now: float, stuck_after: float,
                        since: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
        return []

    def forget_open(self) -> None:
        pass

    def deletion_signal(self) -> object | None:
        return None  # nothing is forgotten (the ledger's bounding has Postgres tests of its own)

    async def session_run_counts(self, session_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        return {}  # no session is complete: the session check waits (it has Postgres tests of its own)

    async def sessions(self, session_ids: Sequence[str]) -> list[dict[str, Any]]:
        return []

    async def session_runs(self, session_id: str) -> list[dict[str, Any]]:
        return []


@dataclass
class RecordingSink:
    """exporter.sink.Sink that records what it is told, and when."""

    published_ids: list[str] = field(default_factory=list)
    staged: list[list[str]] = field(default_factory=list)  # run ids staged per batch, in the transaction
    restored: int = 0

    def restore(self, rows: Iterable[SeriesRow]) -> None:
        self.restored += 1

    def prepare(self, records: Sequence[RunRecord], trace_ids: Mapping[str, str]) -> Any:
        sink = self

        class Prepared:
            costs: Mapping[str, tuple[float, float]] = {}

            def stage(self, fresh: Sequence[RunRecord], new_sessions: Sequence[tuple[str, str]],
                      now: float) -> Staged:
                sink.staged.append([r.run_id for r in fresh])
                return NothingStaged()

        return Prepared()

    def stage_disagreements(self, sessions: Sequence[tuple[str, str, str]], now: float) -> Staged:
        return NothingStaged()

    def published(self, records: Sequence[RunRecord]) -> None:
        self.published_ids.extend(r.run_id for r in records)


def expected_run_ids(rows: list[dict[str, Any]]) -> set[str]:
    """What agno's rows hold that is final: each row's run and the runs nested in it."""
    return {rec.run_id for row in rows if row["status"] in ("COMPLETED", "ERROR", "CANCELLED")
            for rec in build_row_runs(row, row["run_data"]).records if rec.final}


def make(db_url: str, source: MemorySource, sink: RecordingSink) -> tuple[RunCollector, PrometheusSink]:
    state = PostgresState(Database(ConnectOptions(db_url)), "agno_exporter", "memory")
    prometheus = PrometheusSink(prom.new_store(300))
    c = RunCollector(source, state, Sinks([prometheus, sink]), prom.SelfMetrics(CollectorRegistry(), "test"),
                     CollectorOptions(batch_size=2, top_sessions=0))
    return c, prometheus


def runs_total(p: PrometheusSink) -> int:
    return round(sum(s.total for s in p.store.series("agno_runs").values()))


def test_each_run_is_published_once_through_the_sink(db_url: str) -> None:
    rows = runs_v3()
    expected = expected_run_ids(rows)
    newest = max(r["updated_at"] for r in rows)

    async def main() -> None:
        source = MemorySource(rows, now=newest + 10.0, writers=(newest + 5.0,))
        sink = RecordingSink()
        c, prometheus = make(db_url, source, sink)
        try:
            first = await c.poll_once()
            assert first.counted == len(expected) and first.skipped == 0
            assert sorted(sink.published_ids) == sorted(expected)
            # batch_size=2: several transactions, each staging exactly what it counted
            assert len(sink.staged) >= 2 and sorted(i for ids in sink.staged for i in ids) == sorted(expected)
            assert runs_total(prometheus) == len(expected)
            # the open writer holds the watermark at its start
            assert c.watermarks["memory"].low == newest + 5.0

            # nothing new: a second poll publishes nothing; the writer is gone, the watermark reaches now
            source.writers = ()
            source.now = newest + 20.0
            second = await c.poll_once()
            assert second.counted == 0 and sorted(sink.published_ids) == sorted(expected)
            assert c.watermarks["memory"].low == newest + 20.0

            # agno re-stamps a counted row (a later save): listed again, published never again
            rows[0]["updated_at"] = newest + 20
            third = await c.poll_once()
            assert third.counted == 0 and len(sink.published_ids) == len(expected)

            # a new finished run is published once
            new = {**rows[1], "run_id": "memory-new-run", "updated_at": newest + 21, "parent_run_id": None}
            rows.append(new)
            source.now = newest + 30.0
            fourth = await c.poll_once()
            assert fourth.counted == 1 and sink.published_ids[-1] == "memory-new-run"
            assert runs_total(prometheus) == len(expected) + 1
        finally:
            await c.state.db.close()

        # a restart on the same state: the sinks are restored from it, nothing is published again
        sink2 = RecordingSink()
        c2, prometheus2 = make(db_url, source, sink2)
        try:
            again = await c2.poll_once()
            assert again.counted == 0 and sink2.published_ids == [] and sink2.restored == 1
            assert runs_total(prometheus2) == len(expected) + 1  # the Prometheus sink reloaded its series
        finally:
            await c2.state.db.close()

    asyncio.run(main())


def test_polls_start_an_interval_apart_however_long_they_take(db_url: str) -> None:
    """The loop waits what is left of ``interval`` after a poll (a fixed cadence, as Prometheus scrapes),
    so a run waits at most one interval for the poll that counts it; time is driven by a fake timer."""
    rows = runs_v3()
    newest = max(r["updated_at"] for r in rows)
    now = [0.0]
    waits: list[float] = []

    async def main() -> None:
        source = MemorySource(rows, now=newest + 10.0)
        state = PostgresState(Database(ConnectOptions(db_url)), "agno_exporter", "memory")

        async def fake_sleep(seconds: float) -> None:
            waits.append(seconds)
            now[0] += seconds
            if len(waits) == 3:
                raise asyncio.CancelledError

        c = RunCollector(source, state, PrometheusSink(prom.new_store(300)),
                         prom.SelfMetrics(CollectorRegistry(), "test"), CollectorOptions(top_sessions=0),
                         sleep=fake_sleep, timer=lambda: now[0])
        poll_once = c.poll_once
        durations = iter([0.25, 0.0, 1.5])  # a backfill, an idle poll, a poll longer than the interval

        async def timed_poll() -> PollResult:
            result = await poll_once()
            now[0] += next(durations)
            return result

        c.poll_once = timed_poll  # type: ignore[method-assign]
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await c.run(interval=1.0)
        finally:
            await state.db.close()
        assert waits == [0.75, 1.0, 0.0]

    asyncio.run(main())


def test_idle_polls_repeat_the_top_k_query_only_when_a_session_leaves_the_window(db_url: str) -> None:
    """The top-K sessions change without new counts only when one of them leaves the window: idle polls
    before then make no query for them (it sorts every session of the window); the one after does."""
    rows = runs_v3()
    newest = max(r["updated_at"] for r in rows)
    t0 = newest + 10.0

    async def main() -> None:
        source = MemorySource(rows, now=t0)
        state = PostgresState(Database(ConnectOptions(db_url)), "agno_exporter", "memory")
        calls: list[float] = []
        top_sessions = state.top_sessions

        async def counting(since: float, limit: int) -> Any:
            calls.append(since)
            return await top_sessions(since, limit)

        state.top_sessions = counting  # type: ignore[method-assign]
        window = 3600.0
        c = RunCollector(source, state, PrometheusSink(prom.new_store(300)),
                         prom.SelfMetrics(CollectorRegistry(), "test"),
                         CollectorOptions(top_sessions=3, top_sessions_window=window), clock=lambda: source.now)
        try:
            assert (await c.poll_once()).counted > 0
            assert len(calls) == 1 and c.top
            expires = min(t.last_seen for t in c.top) + window
            for dt in (60.0, 600.0, expires - t0 - 1.0):  # idle polls, minutes apart, all before it
                source.now = t0 + dt
                assert (await c.poll_once()).counted == 0
            assert len(calls) == 1
            source.now = expires + 1.0  # the top sessions leave the window: one query, and they are gone
            await c.poll_once()
            assert len(calls) == 2 and c.top == []
            source.now += 600.0
            await c.poll_once()
            assert len(calls) == 2  # nothing in the window: nothing can leave it
        finally:
            await state.db.close()

    asyncio.run(main())
