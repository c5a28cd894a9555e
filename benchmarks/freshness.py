"""Freshness: from a run's commit in agno's table to its appearance in ``/metrics``, at a poll interval.

The exporter runs as in production (its poll loop, on a table that was counted already); a
writer commits one new session at a random moment within each poll interval (so commits fall
uniformly between polls), its run named uniquely, and the time until the run's name is in the
exported series is recorded. The series store is what ``/metrics`` renders at the instant of a
scrape, so it is checked every millisecond instead of rendering /metrics a thousand times a
second (which would slow the collector it measures); a real scrape confirms each probe at the end.
The baseline is the poll interval itself: what a run committed just after a poll waits.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import aiohttp
import psycopg

from .generate import Generator, copy_in
from .harness import make_service, median, percentile


def _insert(url: str, gen: Generator, name: str) -> float:
    session, runs = gen.fresh(name)
    with psycopg.connect(url) as conn:
        copy_in(conn, [(session, runs)])
        conn.commit()
        return time.perf_counter()  # the commit has returned: the run is visible from now on


async def measure(url: str, schema: str, gen: Generator, interval: float, probes: int, seed: int = 3) -> dict[str, Any]:
    rng = random.Random(seed)
    service = make_service(url, schema, collector={"poll_interval": f"{interval}s"})
    await service.start()
    names: list[str] = []
    lags: list[float] = []
    try:
        while not service.collector.ready:
            await asyncio.sleep(0.01)
        series = service.store.series("agno_runs")
        for i in range(probes):
            await asyncio.sleep(rng.uniform(0, interval))
            name = f"FreshnessProbe{i}-{int(time.time())}"
            committed = await asyncio.to_thread(_insert, url, gen, name)
            deadline = committed + 10 * interval + 10
            while not any(labels[1] == name for labels in series):
                if time.perf_counter() > deadline:
                    raise AssertionError(f"probe {name} never reached /metrics")
                await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - committed)
            names.append(name)
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{service.port}/metrics") as r:
            body = await r.text()
        missing = [n for n in names if f'name="{n}"' not in body]
        if missing:
            raise AssertionError(f"probes counted but not in /metrics: {missing}")
    finally:
        await service.stop()
    return {"interval": interval, "probes": probes, "p50": median(lags), "p99": percentile(lags, 99),
            "max": max(lags)}
