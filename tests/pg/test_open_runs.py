"""Open runs are read from what changed (exporter.ingest.openruns): an idle poll reads none of agno's rows,
however many runs are open; runs that finish later are counted once; deleted open runs leave the gauges."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg

from exporter.commands.index import create_index_sql
from exporter.ingest.collector import RunCollector
from exporter.ingest.openruns import OpenRunsTracker
from exporter.ingest.readers import AgnoSource
from exporter.ingest.runs_table import RunsTable
from tests.e2e.test_exactly_once import close, exported_runs, make_collector, multiply_runs, write_runs
from tests.helpers.support import DEADLINE


def in_progress(c: RunCollector) -> int:
    return sum(n for _, _, _, n, _, _ in c.open_runs)


def tracker(c: RunCollector) -> OpenRunsTracker:
    assert isinstance(c.source, AgnoSource)
    (reader,) = c.source.readers
    assert isinstance(reader, RunsTable)
    return reader.open


def reopen(db_url: str, n: int, index: bool = True) -> None:
    """Leave ``n`` of agno's runs RUNNING, every row stamped an hour ago (history: nothing is new)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE ai.agno_runs SET updated_at = updated_at - 3600, created_at = created_at - 3600")
        conn.execute("UPDATE ai.agno_runs SET status = 'RUNNING' WHERE run_id IN"
                     " (SELECT run_id FROM ai.agno_runs WHERE parent_run_id IS NULL ORDER BY run_id LIMIT %s)", (n,))
        if index:
            conn.execute(create_index_sql("ai", "agno_runs"))


def sql(db_url: str, query: str, *params: Any) -> None:
    # A connection of its own: closing it flushes its backend's statistics (the deleted-rows counter).
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(query, params)


async def idle_poll_cost(c: RunCollector) -> tuple[int, int, int]:
    """(rows of agno's table the open runs' update read, whole reads, runs counted) of one poll."""
    t = tracker(c)
    rows, whole = t.rows_read, t.whole_reads
    result = await c.poll_once()
    return t.rows_read - rows, t.whole_reads - whole, result.counted


async def poll_until(c: RunCollector, condition: Callable[[], bool], what: str) -> int:
    """Poll until ``condition()`` holds; returns the runs counted meanwhile. Deletions show through
    the deleting backend's statistics, flushed within seconds: no fixed wait."""
    counted = 0

    async def go() -> None:
        nonlocal counted
        while not condition():
            counted += (await c.poll_once()).counted
            await asyncio.sleep(0.05)  # pacing only: the loop ends on the condition

    try:
        await asyncio.wait_for(go(), DEADLINE)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None
    return counted


def test_idle_poll_reads_no_row_of_agnos_table_whatever_the_open_runs(db_url: str, sim_url: str) -> None:
    asyncio.run(write_runs(db_url, sim_url, 2))
    multiply_runs(db_url, 49)  # 100 runs (agent runs: rows of their own)
    reopen(db_url, 20)

    async def main() -> None:
        c = make_collector(db_url)
        try:
            assert (await c.poll_once()).counted == 80  # the backfill, and every open run read once
            assert in_progress(c) == 20
            assert tracker(c).whole_reads == 1
            for _ in range(3):
                assert await idle_poll_cost(c) == (0, 0, 0)
            assert in_progress(c) == 20
        finally:
            await close(c)
        # Ten times the history and the open runs, counted afresh: the idle poll still reads nothing.
        multiply_runs(db_url, 9)
        sql(db_url, "DROP SCHEMA agno_exporter CASCADE")
        c = make_collector(db_url)
        try:
            await c.poll_once()
            assert in_progress(c) == 200
            for _ in range(3):
                assert await idle_poll_cost(c) == (0, 0, 0)
        finally:
            await close(c)

    asyncio.run(main())


def test_open_runs_that_finish_later_are_counted_once(db_url: str, sim_url: str) -> None:
    asyncio.run(write_runs(db_url, sim_url, 4))
    reopen(db_url, 3)

    async def main() -> None:
        c = make_collector(db_url)
        try:
            assert (await c.poll_once()).counted == 1
            assert in_progress(c) == 3
            # Two of them finish (agno stamps the row it writes): counted once, out of the gauge.
            sql(db_url, "UPDATE ai.agno_runs SET status = 'COMPLETED', updated_at = extract(epoch FROM now())::bigint"
                        " WHERE run_id IN (SELECT run_id FROM ai.agno_runs WHERE status = 'RUNNING' ORDER BY run_id"
                        " LIMIT 2)")
            rows, whole, counted = await idle_poll_cost(c)
            assert (rows, whole, counted) == (2, 0, 2)  # the two rows written, nothing else
            assert in_progress(c) == 1
            assert (await c.poll_once()).counted == 0
            assert exported_runs(c) == 3
        finally:
            await close(c)
        # A restart in between: the new process reads every open run once, counts nothing again.
        c = make_collector(db_url)
        try:
            assert (await c.poll_once()).counted == 0
            assert in_progress(c) == 1 and exported_runs(c) == 3
            sql(db_url, "UPDATE ai.agno_runs SET status = 'ERROR', updated_at = extract(epoch FROM now())::bigint"
                        " WHERE status = 'RUNNING'")
            assert (await c.poll_once()).counted == 1
            assert in_progress(c) == 0 and exported_runs(c) == 4
            assert (await c.poll_once()).counted == 0
        finally:
            await close(c)

    asyncio.run(main())


def test_deleted_open_runs_leave_the_gauges(db_url: str, sim_url: str) -> None:
    asyncio.run(write_runs(db_url, sim_url, 3))
    reopen(db_url, 3)

    async def main() -> None:
        c = make_collector(db_url)
        try:
            await c.poll_once()
            assert in_progress(c) == 3
            # A delete leaves no stamp: the table's deleted-rows counter says the open runs must be read again.
            sql(db_url, "DELETE FROM ai.agno_runs WHERE run_id = (SELECT min(run_id) FROM ai.agno_runs"
                        " WHERE status = 'RUNNING')")
            # the counter shows once the deleting backend flushed it
            await poll_until(c, lambda: in_progress(c) == 2, "the deleted run to leave the gauge")
            assert tracker(c).whole_reads >= 2
            # A TRUNCATE moves no counter, but the table's file changes.
            sql(db_url, "TRUNCATE ai.agno_runs CASCADE")
            await c.poll_once()
            assert in_progress(c) == 0
        finally:
            await close(c)

    asyncio.run(main())


def test_without_the_index_every_open_run_is_read_each_poll(db_url: str, sim_url: str) -> None:
    asyncio.run(write_runs(db_url, sim_url, 2))
    reopen(db_url, 1, index=False)

    async def main() -> None:
        c = make_collector(db_url)
        try:
            await c.poll_once()
            # Without an index on updated_at the window would be a second scan of the whole table.
            assert await idle_poll_cost(c) == (1, 1, 0)
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute(create_index_sql("ai", "agno_runs"))
            # The whole read that poll makes anyway finds the index (the catalog is read in the same
            # statement); from the next poll on the window is used.
            assert await idle_poll_cost(c) == (1, 1, 0)
            for _ in range(2):
                assert await idle_poll_cost(c) == (0, 0, 0)
        finally:
            await close(c)

    asyncio.run(main())


def test_idle_poll_is_one_round_trip_of_two_statements(db_url: str, sim_url: str,
                                                       monkeypatch: Any) -> None:
    """With the index, an idle poll sends the snapshot and the first candidate page (which brings the
    open runs' window) in one pipeline, and nothing else to agno's database."""
    asyncio.run(write_runs(db_url, sim_url, 2))
    reopen(db_url, 1)
    sent: list[str] = []
    pipelines: list[int] = []
    source_conn: list[Any] = [None]
    execute = psycopg.AsyncConnection.execute
    pipeline = psycopg.AsyncConnection.pipeline

    async def counting_execute(self: psycopg.AsyncConnection[Any], query: Any, *args: Any, **kw: Any) -> Any:
        if self is source_conn[0]:  # agno's database, not the exporter's state
            sent.append(str(query)[:40])
        return await execute(self, query, *args, **kw)

    def counting_pipeline(self: psycopg.AsyncConnection[Any]) -> Any:
        if self is source_conn[0]:
            pipelines.append(len(sent))
        return pipeline(self)

    monkeypatch.setattr(psycopg.AsyncConnection, "execute", counting_execute)
    monkeypatch.setattr(psycopg.AsyncConnection, "pipeline", counting_pipeline)

    async def main() -> None:
        c = make_collector(db_url)
        try:
            await c.poll_once()  # the backfill, the whole read of the open runs
            await c.poll_once()  # the first poll with a window
            source_conn[0] = await c.source.db.conn()
            for _ in range(3):
                sent.clear()
                pipelines.clear()
                assert await idle_poll_cost(c) == (0, 0, 0)
                assert len(sent) == 2, sent
                assert pipelines == [0]  # both in the one pipeline
            assert in_progress(c) == 1
        finally:
            await close(c)

    asyncio.run(main())


def test_a_runs_table_gone_mid_pipeline_is_looked_for_again(db_url: str, sim_url: str) -> None:
    """The idle poll's pipeline fails as a whole when agno's table is gone (renamed by a migration, dropped):
    the poll says so and looks for agno's tables again; when the table is back nothing is counted twice."""
    asyncio.run(write_runs(db_url, sim_url, 2))
    reopen(db_url, 1)

    async def main() -> None:
        c = make_collector(db_url)  # the reader is kept (no rediscovery until a poll fails)
        try:
            assert (await c.poll_once()).counted == 1
            await c.poll_once()  # a poll with the window: the pipelined first page
            assert tracker(c).wants_window(c.watermarks["ai.agno_runs"].low)
            sql(db_url, "ALTER TABLE ai.agno_runs RENAME TO agno_runs_away")
            assert (await c.poll_once()).counted == 0
            assert (await c.poll_once()).counted == 0
            sql(db_url, "ALTER TABLE ai.agno_runs_away RENAME TO agno_runs")
            for _ in range(3):
                assert (await c.poll_once()).counted == 0
            assert exported_runs(c) == 1 and in_progress(c) == 1
        finally:
            await close(c)

    asyncio.run(main())


def test_a_burst_larger_than_a_page_is_counted_once_from_the_window(db_url: str, sim_url: str) -> None:
    """The first candidate page is cut from the open runs' window: when more runs finished than a page holds
    (``batch_size`` 2 here), the rest are listed after it, and each is counted once."""
    asyncio.run(write_runs(db_url, sim_url, 2))
    reopen(db_url, 1)

    async def main() -> None:
        c = make_collector(db_url, batch_size=2)
        try:
            first = (await c.poll_once()).counted
            await c.poll_once()
            assert tracker(c).wants_window(c.watermarks["ai.agno_runs"].low)
            # Seven new finished runs (fresh ids, stamped now) and one new open run, all in the window.
            multiply_runs(db_url, 1)
            sql(db_url, "UPDATE ai.agno_runs SET updated_at = extract(epoch FROM now())::bigint"
                        " WHERE updated_at < extract(epoch FROM now())::bigint - 1800")
            total = first + await poll_until(c, lambda: exported_runs(c) >= 2 * first, "the burst to be counted")
            assert total == exported_runs(c) == 2 * first
            for _ in range(2):
                assert (await c.poll_once()).counted == 0
            assert in_progress(c) == 2 and tracker(c).whole_reads == 1
        finally:
            await close(c)

    asyncio.run(main())
