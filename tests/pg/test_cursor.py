"""The low watermark (exporter.ingest.cursor): the rule itself, a simulation of its argument, and real
Postgres with transactions open beside agno's (another database, the same database, agno's table)."""

from __future__ import annotations

import asyncio
import logging
import math
import random
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from exporter.ingest.collector import RunCollector
from exporter.ingest.cursor import Watermark, WindowLog
from tests.e2e.test_exactly_once import close, exported_runs, exported_tokens, make_collector, stored_tokens, write_runs
from tests.helpers.support import PgServer

# ------------------------------------------------------------------------------------- the rule


def test_no_writer_moves_the_watermark_to_the_poll() -> None:
    wm = Watermark(low=100.0, max_lookback=3600)
    assert wm.advance(200.0, ()) == (200.0, False, 0, None)


def test_a_writer_holds_the_watermark_at_its_start_until_it_ends() -> None:
    wm = Watermark(low=100.0, max_lookback=3600)
    assert wm.advance(200.0, (150.0, 180.0)).low == 150.0
    assert wm.advance(210.0, (150.0,)).low == 150.0
    assert wm.advance(220.0, ()).low == 220.0
    assert wm.advance(230.0, (50.0,)).low == 220.0  # never backwards (the previous bound still holds)


def test_a_writer_open_before_the_first_poll_is_bounded_by_its_start() -> None:
    """No memory of earlier polls is needed: xact_start bounds it, so no clamp and no wide window."""
    wm = Watermark(low=0.0, max_lookback=3600)
    adv = wm.advance(10_000.0, (9_990.0,))
    assert adv == (9_990.0, False, 0, 9_990.0)


def test_a_hidden_start_keeps_the_previous_watermark() -> None:
    wm = Watermark(low=100.0, max_lookback=3600)
    adv = wm.advance(200.0, (None, 190.0))
    assert (adv.low, adv.clamped, adv.hidden) == (100.0, False, 1)
    assert wm.advance(300.0, ()).low == 300.0
    # At the very first poll nothing bounds it: the window is clamped, and reported as such.
    first = Watermark(low=0.0, max_lookback=3600)
    assert first.advance(10_000.0, (None,)) == (6_400.0, True, 1, None)


def test_a_writer_older_than_max_lookback_clamps() -> None:
    wm = Watermark(low=100.0, max_lookback=60)
    assert wm.advance(1_000.0, (500.0,)) == (940.0, True, 0, 500.0)
    assert wm.advance(1_010.0, ()) == (1_010.0, False, 0, None)


def test_a_clamp_is_reported_once_per_episode(caplog: pytest.LogCaptureFixture) -> None:
    """Each clamped poll is counted (by the caller), but the log says it when it starts and ends."""
    logger = logging.getLogger("test.cursor")
    caplog.set_level(logging.INFO, logger="test.cursor")
    wm, report = Watermark(low=100.0, max_lookback=60), WindowLog(logger, "ai.agno_runs", 60)
    for now in (1_000.0, 1_005.0, 1_010.0):
        report.report(wm.advance(now, (500.0,)), now)
    report.report(wm.advance(1_015.0, ()), 1_015.0)
    for now in (1_020.0, 1_025.0):
        report.report(wm.advance(now, (None,)), now)
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in messages] == [logging.WARNING, logging.INFO, logging.WARNING]
    assert "has been open for 500 s" in messages[0][1] and "clamped to collector.max_lookback" in messages[0][1]
    assert "pg_read_all_stats" in messages[2][1]


# ---------------------------------------------------------------------- the argument, simulated


@dataclass
class Txn:
    start: float  # xact_start
    lock: float  # first request of its write lock on the table
    commit: float
    stamps: list[int]  # updated_at of each row it writes (whole seconds, floored)
    hidden: bool  # its start not shown to the exporter's role


def simulate(seed: int, rule: str) -> list[str]:
    """Random transactions writing agno's table under the assumption of exporter.ingest.cursor (a stamp is at
    most ``skew`` older than its statement reaching the table, and transactions commit out of order),
    polled at random times. Returns the rows the first poll that saw them would not read (since =
    floor(L_{k-1} - skew)); "pg_locks" is what take_snapshot reads, "now" ignores writers."""
    rnd = random.Random(seed)
    skew = 2.0
    txns: list[Txn] = []
    for _ in range(200):
        start = rnd.uniform(0, 600)
        lock = start + rnd.expovariate(1 / 5)
        commit = lock + rnd.expovariate(1 / 20)
        writes = [lock, *sorted(rnd.uniform(lock, commit) for _ in range(rnd.randrange(3)))]
        stamps = [math.floor(q - rnd.uniform(0, skew)) for q in writes]
        txns.append(Txn(start, lock, commit, stamps, hidden=rnd.random() < 0.2))
    polls = sorted(rnd.uniform(0, 700) for _ in range(150))
    wm = Watermark(low=0.0, max_lookback=1e9)
    missed: list[str] = []
    previous = -math.inf
    for t in polls:
        since = math.floor(wm.low - skew) if wm.low else -math.inf  # the first poll is the backfill
        for i, z in enumerate(txns):
            if previous < z.commit <= t:  # first seen by this poll's reads
                missed += [f"txn {i} row {j}" for j, stamp in enumerate(z.stamps) if stamp < since]
        writers = [None if z.hidden else z.start for z in txns if z.lock <= t < z.commit] if rule == "pg_locks" else []
        wm.advance(t, writers)
        previous = t
    return missed


@pytest.mark.parametrize("seed", range(20))
def test_simulated_writers_are_never_missed(seed: int) -> None:
    assert simulate(seed, "pg_locks") == []


def test_the_simulation_can_fail() -> None:
    """Without the writers the same polls miss rows: the simulation tests the rule, not nothing."""
    assert any(simulate(seed, "now") for seed in range(20))


# ------------------------------------------------------------------------------ real Postgres


def lookback_clamped(c: RunCollector) -> float:
    return sum(s.value for m in c.m.lookback_clamped.collect() for s in m.samples if s.name.endswith("_total"))


def db_now(url: str) -> float:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
    assert row is not None
    return float(row[0])


def open_transaction(url: str, *statements: str) -> tuple[psycopg.Connection[Any], float]:
    """A transaction left open after ``statements``; returns it and its xact_start."""
    conn = psycopg.connect(url)
    for stmt in statements:
        conn.execute(stmt)
    row = conn.execute("SELECT extract(epoch FROM now())::float8").fetchone()  # now() = xact_start
    assert row is not None
    return conn, float(row[0])


def test_transactions_beside_agnos_neither_clamp_nor_widen_the_window(db_url: str, sim_url: str,
                                                                      pg_server: PgServer) -> None:
    """Open before the first poll and held while real agno runs are written: a transaction in
    another database of the cluster, and one in agno's database writing other tables (one of them
    named like agno's, in another schema). Neither clamps nor holds the watermark; every run is
    counted exactly. A transaction holding a write lock on agno's table does hold it, at its start."""
    other_url = pg_server.create_database()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA other; CREATE TABLE other.agno_runs (x int); CREATE TABLE public.report (x int)")
    held = []
    try:
        held.append(open_transaction(other_url, "CREATE TABLE t (x int)", "INSERT INTO t VALUES (1)",
                                     "SELECT pg_current_xact_id()"))
        held.append(open_transaction(db_url, "INSERT INTO other.agno_runs VALUES (1)",
                                     "INSERT INTO public.report VALUES (1)"))

        async def main() -> None:
            c = make_collector(db_url, max_lookback=1.0)  # any clamp at all would show
            try:
                for n in (2, 1):
                    await write_runs(db_url, sim_url, n)
                    before = db_now(db_url)
                    await c.poll_once()
                    # the window starts at this poll: no transaction beside agno's widened it
                    assert c.watermarks["ai.agno_runs"].low >= before
                with psycopg.connect(db_url) as conn:
                    truth = stored_tokens(conn)
                assert exported_runs(c) == 3 and exported_tokens(c) == truth
                assert lookback_clamped(c) == 0

                # A transaction that may write agno's table (it holds RowExclusiveLock on it, no row
                # changed yet) holds the watermark at its start, and only while it is open.
                writer, started = open_transaction(db_url, "UPDATE ai.agno_runs SET status = status WHERE false")
                try:
                    await c.poll_once()
                    assert c.watermarks["ai.agno_runs"].low == pytest.approx(started, abs=1e-3)
                finally:
                    writer.rollback()
                    writer.close()
                before = db_now(db_url)
                await c.poll_once()
                assert c.watermarks["ai.agno_runs"].low >= before
            finally:
                await close(c)

        asyncio.run(main())
    finally:
        for conn, _ in held:
            conn.rollback()
            conn.close()
        pg_server.drop_database(other_url)


def test_a_writer_open_before_the_first_poll_does_not_clamp(db_url: str, sim_url: str) -> None:
    """A transaction already writing agno's table when a fresh exporter starts (max_lookback short):
    its start bounds the window, which is not clamped; its run, committed later with a stamp from
    before the first poll, is counted."""
    asyncio.run(write_runs(db_url, sim_url, 2))
    with psycopg.connect(db_url) as conn:
        run_id = conn.execute("SELECT run_id FROM ai.agno_runs ORDER BY run_id LIMIT 1").fetchone()[0]  # type: ignore[index]
    # agno has this run in flight: RUNNING, then its final UPDATE stamped now, committing late
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE ai.agno_runs SET status = 'RUNNING', updated_at = updated_at - 60 WHERE run_id = %s",
                     (run_id,))
    writer, started = open_transaction(
        db_url, f"UPDATE ai.agno_runs SET status = 'COMPLETED', updated_at = {math.floor(db_now(db_url))}"
        f" WHERE run_id = '{run_id}'")
    try:
        async def main() -> None:
            c = make_collector(db_url, clock_skew=1.0, max_lookback=3600.0)
            try:
                assert (await c.poll_once()).counted == 1  # the backfill: the other run
                assert c.watermarks["ai.agno_runs"].low == pytest.approx(started, abs=1e-3)
                await asyncio.to_thread(writer.commit)
                assert (await c.poll_once()).counted == 1  # the late commit, within the window
                assert lookback_clamped(c) == 0 and exported_runs(c) == 2
            finally:
                await close(c)

        asyncio.run(main())
    finally:
        writer.close()
