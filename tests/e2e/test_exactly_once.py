"""Nothing lost, nothing doubled: out-of-order commits, restarts after kill -9, REGENERATED runs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from typing import Any

import aiohttp
import psycopg
import pytest
from prometheus_client import CollectorRegistry

from exporter.db import ConnectOptions, Database
from exporter.ingest.collector import RunCollector
from exporter.ingest.poll import CollectorOptions
from exporter.ingest.readers import AgnoSource
from exporter.sinks.prometheus import families as prom
from exporter.sinks.prometheus.sink import PrometheusSink
from exporter.state.store import PostgresState
from tests.helpers.agno_app import AgnoApp
from tests.helpers.scrape import Samples
from tests.helpers.support import DEADLINE, exporter_cmd, free_port


def make_collector(db_url: str, rediscover: float = 300.0, **opts: Any) -> RunCollector:
    """rediscover=0 when the layout changes under the collector (agno 3.x's migration, an upgraded app)."""
    source = AgnoSource(Database(ConnectOptions(db_url, read_only=True)), "ai", "agno_runs", "agno_sessions",
                        rediscover=rediscover)
    state = PostgresState(Database(ConnectOptions(db_url)), "agno_exporter", source.key)
    return RunCollector(source, state, PrometheusSink(prom.new_store(300)),
                        prom.SelfMetrics(CollectorRegistry(), "test"),
                        CollectorOptions(**opts))


async def close(c: RunCollector) -> None:
    await c.source.db.close()
    await c.state.db.close()


def exported_tokens(c: RunCollector) -> int:
    return int(sum(s.total for s in c.sink.store.series("agno_tokens").values()))


def exported_runs(c: RunCollector) -> int:
    return int(sum(s.total for s in c.sink.store.series("agno_runs").values()))


async def write_runs(db_url: str, sim_url: str, n: int) -> None:
    app = AgnoApp(db_url, sim_url)
    try:
        agent = app.agent()
        for _ in range(n):
            await app.run(agent)
    finally:
        await app.close()


def stored_tokens(conn: psycopg.Connection[Any], where: str = "TRUE") -> int:
    row = conn.execute(
        "SELECT coalesce(sum(coalesce((run_data->'metrics'->>'input_tokens')::bigint, 0)"
        " + coalesce((run_data->'metrics'->>'output_tokens')::bigint, 0)), 0) FROM ai.agno_runs WHERE " + where
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_out_of_order_commits_are_counted_once(db_url: str, sim_url: str) -> None:
    asyncio.run(write_runs(db_url, sim_url, 2))
    with psycopg.connect(db_url, autocommit=True) as conn:
        a, b = (r[0] for r in conn.execute("SELECT run_id FROM ai.agno_runs ORDER BY run_id"))
        truth = stored_tokens(conn)
        # Put both runs back in flight, as agno has them before their final UPDATE.
        conn.execute("UPDATE ai.agno_runs SET status = 'RUNNING', updated_at = updated_at - 60")

    async def main() -> None:
        # A tight clock_skew: it only covers the test stamping updated_at just before its UPDATE (the
        # assumption of exporter.ingest.cursor); far more time passes below, so only the watermark keeps run a.
        c = make_collector(db_url, clock_skew=0.5)
        try:
            assert (await c.poll_once()).counted == 0
            t1 = await psycopg.AsyncConnection.connect(db_url)
            t2 = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
            try:
                # T1 finishes run a first but stays open ...
                await t1.execute("UPDATE ai.agno_runs SET status = 'COMPLETED', updated_at = %s WHERE run_id = %s",
                                 (int(time.time()), a))
                await asyncio.sleep(1.1)
                # ... T2 finishes run b a second later and commits first.
                await t2.execute("UPDATE ai.agno_runs SET status = 'COMPLETED', updated_at = %s WHERE run_id = %s",
                                 (int(time.time()), b))
                assert (await c.poll_once()).counted == 1
                for _ in range(3):  # polls go on, time passes; the watermark must wait for T1
                    await asyncio.sleep(0.6)
                    assert (await c.poll_once()).counted == 0
                await t1.commit()
                assert (await c.poll_once()).counted == 1
                assert (await c.poll_once()).counted == 0
            finally:
                await t1.close()
                await t2.close()
            assert exported_runs(c) == 2
            assert exported_tokens(c) == truth
        finally:
            await close(c)

    asyncio.run(main())


def test_regenerated_run_is_not_counted_again(db_url: str, sim_url: str) -> None:
    asyncio.run(write_runs(db_url, sim_url, 1))

    async def main() -> None:
        c = make_collector(db_url)
        try:
            assert (await c.poll_once()).counted == 1
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute("UPDATE ai.agno_runs SET status = 'REGENERATED', updated_at = updated_at + 5")
            assert (await c.poll_once()).counted == 0
            assert exported_runs(c) == 1
        finally:
            await close(c)
        # A fresh process (memory empty) loads the same totals and still does not recount.
        c2 = make_collector(db_url)
        try:
            assert (await c2.poll_once()).counted == 0
            assert exported_runs(c2) == 1
        finally:
            await close(c2)

    asyncio.run(main())


def multiply_runs(db_url: str, copies: int) -> None:
    """Fresh run ids for copies of real agno rows (what the benchmark generator does at scale)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        cols = "session_id, run_type, agent_id, team_id, workflow_id, user_id, parent_run_id, status, run_index," \
               " run_data, created_at, updated_at"
        conn.execute(
            f"INSERT INTO ai.agno_runs (run_id, {cols}) SELECT gen_random_uuid()::text, {cols}"
            f" FROM ai.agno_runs, generate_series(1, {copies})"
        )


async def scrape_runs(port: int) -> float | None:
    try:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
            return Samples(await r.text()).sum("agno_runs_total")
    except aiohttp.ClientError:
        return None


def counted_in_state(db_url: str) -> int:
    """Runs the exporter's state holds as counted (0 before its schema exists)."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT to_regclass('agno_exporter.runs') IS NOT NULL").fetchone()
        if not row or not row[0]:
            return 0
        row = conn.execute("SELECT count(*) FROM agno_exporter.runs WHERE status NOT LIKE 'SKIPPED:%'").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.slow
def test_kill_9_mid_stream_then_restart(db_url: str, sim_url: str) -> None:
    asyncio.run(write_runs(db_url, sim_url, 3))
    multiply_runs(db_url, 999)  # 3000 runs
    with psycopg.connect(db_url) as conn:
        truth_runs = conn.execute("SELECT count(*) FROM ai.agno_runs").fetchone()[0]  # type: ignore[index]
        truth_tokens = stored_tokens(conn)
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update({"AGNO_EXPORTER_COLLECTOR__BATCH_SIZE": "20", "AGNO_EXPORTER_COLLECTOR__POLL_INTERVAL": "100ms"})

    async def main() -> None:
        kills = 0
        while True:
            durable = counted_in_state(db_url)
            port = free_port()
            proc = subprocess.Popen([*exporter_cmd(), "collect", "--db-url", db_url, "--listen", f"127.0.0.1:{port}"],
                                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                # Each round waits (a generous deadline: starting up and counting are slow on a loaded
                # machine) until this process has counted 400 runs more than the state held when it
                # started (what /metrics shows before its state is loaded is no measure), or all of
                # them, and kills it then: every round makes progress, however slow the machine.
                seen = None
                deadline = time.monotonic() + 2 * DEADLINE
                while seen != truth_runs and (seen or 0) < durable + 400:
                    assert time.monotonic() < deadline, f"no progress in {2 * DEADLINE:g}s after {kills} kills"
                    assert proc.poll() is None, "collector died by itself"
                    await asyncio.sleep(0.02)
                    seen = await scrape_runs(port)
                    assert seen is None or seen <= truth_runs, "a run was counted twice"
                if seen == truth_runs:
                    print(f"\nall {truth_runs} runs counted after {kills} kill -9s mid-stream")
                    return
                proc.send_signal(signal.SIGKILL)  # mid-stream
                kills += 1
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                proc.wait(10)

    asyncio.run(main())

    async def check() -> None:
        c = make_collector(db_url)
        try:
            await c.start()  # what a restarted process loads
            assert exported_runs(c) == truth_runs
            assert exported_tokens(c) == truth_tokens
            assert (await c.poll_once()).counted == 0
        finally:
            await close(c)

    asyncio.run(check())
