"""Ingest: runs per second from agno's table to exported metrics, against two baselines.

- the exporter, metrics only, and with spans delivered to an OTLP/HTTP backend (a first start that
  counts the whole table; with spans it is done when the trace outbox is empty);
- the fetch+parse limit: the same finished rows read with psycopg and their JSON parsed by
  orjson (the parser the product uses), nothing else, through a server-side cursor: the fastest
  plain read of those rows, the honest limit of any reader. The same read parsed by the standard
  library's json (psycopg's default loader, the baseline before) is measured beside it;
- agno's own API, the seed's way: list the finished runs, then ``aget_run_output(run_id,
  session_id)`` per run and read its ``metrics``.

Each is timed (wall) and its CPU per run is read over the same stretch: this process's
(``time.process_time``) and the whole Postgres server's when it runs on this host
(:func:`benchmarks.harness.server_cpu_ns`; the OTLP receiver's is not counted). That says where the
time goes, and how far a ratio can go on this machine: Python and Postgres share its cores, so a
reader's wall time cannot be below its CPU per run divided by the cores.

Run as ``python -m benchmarks.ingest URL SINK_URL`` (JSON on stdout), in a process of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from typing import Any

import orjson
import psycopg
from psycopg.types.json import set_json_loads

from .harness import FINAL, check_exact, make_service, server_cpu_ns

PAGE = 500


class Meter:
    """Wall time, this process's CPU and the Postgres server's CPU (None when not on this host) over a stretch."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> Meter:
        self.server0 = server_cpu_ns(self.url)  # first: its connection is not part of the stretch
        self.cpu0, self.t0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.cpu0
        server1 = server_cpu_ns(self.url)
        self.server = (server1 - self.server0) / 1e9 if server1 is not None and self.server0 is not None else None

    def result(self, n: int) -> dict[str, Any]:
        return {"runs": n, "seconds": self.seconds, "runs_per_second": n / self.seconds,
                "process_cpu_us_per_run": self.cpu / n * 1e6,
                "postgres_cpu_us_per_run": None if self.server is None else self.server / n * 1e6}


async def exporter_metrics(url: str, schema: str) -> dict[str, Any]:
    service = make_service(url, schema, collector={"batch_size": PAGE})
    await service.collector.start()
    with Meter(url) as meter:
        result = await service.collector.poll_once()
    check_exact(service, url)
    await service.stop()
    return meter.result(result.counted)


async def exporter_spans(url: str, schema: str, sink_url: str) -> dict[str, Any]:
    """Counting and span delivery run concurrently, as in the product; done when the outbox is empty."""
    service = make_service(url, schema, collector={"enabled": False, "batch_size": PAGE},
                           traces={"endpoint": sink_url, "poll_interval": "100ms"})
    await service.collector.start()
    with Meter(url) as meter:
        await service.start()  # web server + the trace sink
        result = await service.collector.poll_once()
        # Done when every deliverable run is delivered: a member run whose team is still open in agno's
        # table waits for it in the outbox (up to collector.stuck_after), as in the product. Each check is a
        # query on the event loop being measured, so it is the outbox's first row in its index order (a
        # count, or an EXISTS planned as a hash of the ledger, read every counted run each time).
        while await service.state.has_pending_traces(ready_only=True):
            await asyncio.sleep(0.1)
    check_exact(service, url)
    await service.stop()
    return meter.result(result.counted)


async def fetch_parse(url: str, stdlib_json: bool = False) -> dict[str, Any]:
    """The fastest plain read of the rows the exporter counts: psycopg, a server-side cursor, pages of
    ``PAGE`` rows, run_data parsed by orjson (or, with ``stdlib_json``, by psycopg's default json)."""
    cols = ("run_id, session_id, run_type, agent_id, team_id, workflow_id, user_id, parent_run_id, status,"
            " created_at, updated_at, run_data")
    n = 0
    async with await psycopg.AsyncConnection.connect(url) as conn:
        # measured with the connection open: its backend is alive when the server's CPU is read
        with Meter(url) as meter:
            async with conn.transaction():
                if not stdlib_json:
                    set_json_loads(orjson.loads, conn)
                cur = conn.cursor(name="everything")
                await cur.execute(f"SELECT {cols} FROM ai.agno_runs WHERE status = ANY(%s)", (FINAL,))
                while rows := await cur.fetchmany(PAGE):
                    n += len(rows)
    return meter.result(n)


async def agno_api(url: str, budget: float, limit: int) -> tuple[int, float]:
    """The seed's read loop: one ``aget_run_output`` per run (agno loads the run's session)."""
    from agno.agent import Agent
    from agno.team import Team

    from exporter.probes.agents import agno_db

    logging.getLogger("agno").setLevel(logging.ERROR)
    db = agno_db(url)
    runners: dict[str, Any] = {"agent": Agent(db=db, telemetry=False), "team": Team(members=[], db=db, telemetry=False)}
    async with await psycopg.AsyncConnection.connect(url) as conn:
        ids = await (await conn.execute(
            "SELECT run_id, session_id, run_type FROM ai.agno_runs WHERE status = ANY(%s) AND run_type = ANY(%s)"
            " ORDER BY run_id LIMIT %s", (FINAL, list(runners), limit))).fetchall()
    n, tokens = 0, 0
    t0 = time.perf_counter()
    for run_id, session_id, run_type in ids:
        out = await runners[run_type].aget_run_output(run_id=run_id, session_id=session_id)
        if out is None:
            raise AssertionError(f"agno's API did not find run {run_id}")
        m = out.metrics
        tokens += (m.input_tokens + m.output_tokens) if m is not None else 0
        n += 1
        if time.perf_counter() - t0 > budget:
            break
    seconds = time.perf_counter() - t0
    db.db_engine.dispose()
    return n, seconds


async def measure(url: str, sink_url: str, agno_budget: float, agno_limit: int, attempts: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # Each measured ``attempts`` times, alternating; the best of them (the least disturbed by the host).
    for attempt in range(attempts):
        for name in ("fetch_parse", "fetch_parse_stdlib_json", "metrics", "spans"):
            if name.startswith("fetch_parse"):
                got = await fetch_parse(url, stdlib_json=name.endswith("stdlib_json"))
            elif name == "metrics":
                got = await exporter_metrics(url, f"bench_ingest_m{attempt}")
            else:
                got = await exporter_spans(url, f"bench_ingest_s{attempt}", sink_url)
            if got["runs_per_second"] > out.get(name, {}).get("runs_per_second", 0):
                out[name] = got
    n, seconds = await agno_api(url, agno_budget, agno_limit)
    out["agno_api"] = {"runs": n, "seconds": seconds, "runs_per_second": n / seconds}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("sink_url")
    p.add_argument("--agno-budget", type=float, default=5.0, help="seconds to spend in agno's per-run loop")
    p.add_argument("--agno-limit", type=int, default=2000)
    p.add_argument("--attempts", type=int, default=2)
    args = p.parse_args(argv)
    json.dump(asyncio.run(measure(args.url, args.sink_url, args.agno_budget, args.agno_limit, args.attempts)),
              sys.stdout)


if __name__ == "__main__":
    main()
