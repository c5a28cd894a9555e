"""Freshness: from a run's commit in agno's table to its appearance in ``/metrics``, at a poll interval.

The exporter runs as in production (its poll loop, on a table that was counted already); a
writer commits one new session at a random moment within each poll interval (so commits fall
uniformly between polls), its run named uniquely, and the time until the run's name is in the
exported series is recorded. The series store is what ``/metrics`` renders at the instant of a
scrape, so it is checked every millisecond instead of rendering /metrics a thousand times a
second (which would slow the collector it measures); a real scrape confirms each probe at the end.
The baseline is the poll interval itself: what a run committed just after a poll waits.

With ``wake=True`` the wake-up is on (:mod:`exporter.ingest.notify`: the trigger installed on agno's runs
table, the collector LISTENing) and the poll interval is long, so every probe is counted by a
poll a notification started; probes are then committed a random ``spacing`` apart (a poll does not
gate them). Its baseline is the poll-only figure at a short interval, measured in the same run. A
bare LISTEN client beside the exporter records when each commit's notification arrives: the floor
(Postgres's delivery), so what is above it is the exporter's poll. :func:`write_cost` measures the
trigger's price on agno's side: a commit that makes a run final, with the trigger and without.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import aiohttp
import psycopg

from exporter.commands.index import create_index, index_name
from exporter.commands.notify_trigger import Watched, create_triggers, drop_triggers
from exporter.db import ConnectOptions
from exporter.ingest.notify import CHANNEL

from .generate import Generator, copy_in
from .harness import make_service, median, percentile


def _insert(url: str, gen: Generator, name: str) -> float:
    session, runs = gen.fresh(name)
    with psycopg.connect(url) as conn:
        copy_in(conn, [(session, runs)])
        conn.commit()
        return time.perf_counter()  # the commit has returned: the run is visible from now on


async def measure(url: str, schema: str, gen: Generator, interval: float, probes: int, seed: int = 3,
                  wake: bool = False, spacing: float | None = None, index: bool = False) -> dict[str, Any]:
    """Commit ``probes`` runs, each a random time up to ``spacing`` (default: the poll interval) after
    the previous one was counted; p50/p99/max of commit -> counted (seconds), and the polls by what
    started them. With ``wake`` also the floor (commit -> a bare listener's notification); the trigger
    is installed for the run and dropped after. With ``index`` the opt-in index (``create-index``) too."""
    rng = random.Random(seed)
    if index:
        await create_index(ConnectOptions(url), "ai", "agno_runs")
    floor: list[float] = []
    arrivals: list[float] = []
    listener: asyncio.Task[None] | None = None
    if wake:
        await create_triggers(ConnectOptions(url), [Watched("ai", "agno_runs", "runs")])
        bare = await psycopg.AsyncConnection.connect(url, autocommit=True)
        await bare.execute(f"LISTEN {CHANNEL}")

        async def listen() -> None:
            async for _ in bare.notifies():
                arrivals.append(time.perf_counter())

        listener = asyncio.create_task(listen())
    service = make_service(url, schema, collector={"poll_interval": f"{interval}s", "wake_on_notify": wake})
    await service.start()
    names: list[str] = []
    lags: list[float] = []
    try:
        while not service.collector.ready or (wake and not _sample(service, "agno_exporter_notify_listening")):
            await asyncio.sleep(0.01)
        series = service.store.series("agno_runs")
        before = {r: _sample(service, "agno_exporter_wakeups_total", reason=r) for r in ("interval", "notify")}
        for i in range(probes):
            await asyncio.sleep(rng.uniform(0, interval if spacing is None else spacing))
            name = f"FreshnessProbe{i}-{int(time.time())}"
            heard = len(arrivals)
            committed = await asyncio.to_thread(_insert, url, gen, name)
            deadline = committed + 10 * interval + 10
            while not any(labels[1] == name for labels in series):
                if time.perf_counter() > deadline:
                    raise AssertionError(f"probe {name} never reached /metrics")
                await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - committed)
            if wake:
                while len(arrivals) == heard:  # the notification precedes the count: already there
                    await asyncio.sleep(0.001)
                floor.append(max(0.0, arrivals[heard] - committed))
            names.append(name)
        polls = {r: _sample(service, "agno_exporter_wakeups_total", reason=r) - n for r, n in before.items()}
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{service.port}/metrics") as r:
            body = await r.text()
        missing = [n for n in names if f'name="{n}"' not in body]
        if missing:
            raise AssertionError(f"probes counted but not in /metrics: {missing}")
    finally:
        await service.stop()
        if listener is not None:
            listener.cancel()
            await bare.close()
            await drop_triggers(ConnectOptions(url), "ai")
        if index:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await conn.execute(f"DROP INDEX ai.{index_name('agno_runs')}")
    out = {"interval": interval, "probes": probes, "index": index, "p50": median(lags), "p99": percentile(lags, 99),
           "max": max(lags), "polls": polls}
    if wake:
        out.update(spacing=spacing, floor_p50=median(floor), floor_p99=percentile(floor, 99))
    return out


def _sample(service: Any, name: str, **labels: str) -> float:
    return float(service.registry.get_sample_value(name, labels) or 0.0)


def write_cost(url: str, commits: int) -> dict[str, float]:
    """Median seconds per commit of an UPDATE that makes a run final (agno's last write of a run), on
    two scratch copies of agno's runs table, one with the wake-up trigger and one without, commit for
    commit in turns (so a busy machine slows both alike). ``running_*``: the same for an update to
    RUNNING (the trigger's WHEN clause says no: what agno's other writes of a run pay). A LISTEN
    connection is open throughout, as when the exporter runs."""
    scratch = "bench_notify"
    variants = {"without": ("plain_runs", "COMPLETED"), "with": ("agno_runs", "COMPLETED"),
                "running_without": ("plain_runs", "RUNNING"), "running_with": ("agno_runs", "RUNNING")}
    times: dict[str, list[float]] = {k: [] for k in variants}
    with psycopg.connect(url, autocommit=True) as conn, psycopg.connect(url, autocommit=True) as listening:
        conn.execute(f"DROP SCHEMA IF EXISTS {scratch} CASCADE")
        conn.execute(f"CREATE SCHEMA {scratch}")
        for table in ("agno_runs", "plain_runs"):
            conn.execute(f"CREATE TABLE {scratch}.{table} (LIKE ai.agno_runs INCLUDING ALL)")
            conn.execute(f"INSERT INTO {scratch}.{table} SELECT * FROM ai.agno_runs LIMIT 1")
        (run_id,) = conn.execute(f"SELECT run_id FROM {scratch}.agno_runs").fetchone() or ("",)
        listening.execute(f"LISTEN {CHANNEL}")
        try:
            asyncio.run(create_triggers(ConnectOptions(url), [Watched(scratch, "agno_runs", "runs")]))
            order = list(variants)
            for i in range(commits):
                for key in order[i % 4:] + order[:i % 4]:  # each variant first as often as the others
                    table, status = variants[key]
                    t0 = time.perf_counter()
                    conn.execute(f"UPDATE {scratch}.{table} SET status = %s, updated_at = %s WHERE run_id = %s",
                                 (status, i, run_id))
                    times[key].append(time.perf_counter() - t0)
        finally:
            conn.execute(f"DROP SCHEMA IF EXISTS {scratch} CASCADE")
    return {k: median(v) for k, v in times.items()}
