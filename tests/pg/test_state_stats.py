"""The state keeps its tables' planner statistics fresh.

Without statistics Postgres plans ``source = %s AND run_id = ANY(ids)`` as a read of every counted
run of the source, per lookup: a backfill with ``batch_size: 250`` ran at 1,400 runs/s instead of
6,300 on 10^5 runs when autovacuum was off. autovacuum analyzes a table after 50 changed rows at
the earliest, so on these few runs a fresh ``reltuples`` can only come from the state's own ANALYZE.
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from exporter.db import ConnectOptions, Database
from exporter.state import schema as state_module
from exporter.state.store import PostgresState
from tests.e2e.test_exactly_once import close, exported_runs, make_collector, write_runs


def reltuples(db_url: str, table: str) -> float:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)",
                           (f"agno_exporter.{table}",)).fetchone()
    assert row is not None
    return float(row[0])


def test_tables_are_analyzed_when_they_double(db_url: str, sim_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module, "ANALYZE_MIN_ROWS", 2)
    asyncio.run(write_runs(db_url, sim_url, 3))

    async def main() -> None:
        c = make_collector(db_url, batch_size=1)  # one run per commit: growth 1, 2 (analyze), 1
        try:
            await c.start()
            await c.poll_once()
            assert exported_runs(c) == 3
        finally:
            await close(c)

    asyncio.run(main())
    assert reltuples(db_url, "runs") == 2  # analyzed when the second run was counted, not after
    assert reltuples(db_url, "sessions") == -1  # three runs of one session: one row, below the minimum


def test_a_never_analyzed_state_is_analyzed_at_start(db_url: str, sim_url: str) -> None:
    asyncio.run(write_runs(db_url, sim_url, 3))

    async def main() -> None:
        c = make_collector(db_url)
        try:
            await c.start()
            await c.poll_once()
        finally:
            await close(c)
        assert reltuples(db_url, "runs") == -1  # 3 rows: far below the default minimum
        db = Database(ConnectOptions(db_url))
        try:
            await PostgresState(db, "agno_exporter", "restarted").setup()
        finally:
            await db.close()

    asyncio.run(main())
    assert reltuples(db_url, "runs") == 3
    assert reltuples(db_url, "sessions") == 1
