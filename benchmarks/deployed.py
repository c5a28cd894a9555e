"""The exporter as deployed: the running ``agno-exporter collect`` process, polling at its interval.

``Collect`` starts the real command (``python -m benchmarks.deployed child collect ...`` runs
``exporter.commands.cli.main`` unchanged, after two hooks that only record) and measures, from outside:

- the first start (a fresh state schema: it counts the whole table), checked for exactness
  against SQL sums of agno's rows through its own ``/metrics``;
- idle polls spaced by the configured ``--poll-interval`` (5 s in full mode): per poll the wall
  time and the CPU of the exporter process (``time.process_time``, every thread) and of the
  Postgres backends it is connected to (``/proc/<backend pid>/task/*/schedstat``: nanoseconds
  of CPU, read before and after the poll; the pids come from its connections, with no query).
  Parallel workers exit after their query, so they cannot be read that way: over each phase the
  postmaster's reaped-children CPU (cutime + cstime) and, on PostgreSQL 18+,
  ``pg_stat_database.parallel_workers_launched`` say whether any ran and what they cost.
  pg_stat_statements would give per-statement times, but it needs ``shared_preload_libraries``
  (a server restart, not there by default) and reports execution wall time, not CPU;
- real scrapes of its ``/metrics`` over HTTP, then its resident memory (VmHWM, VmRSS) *after* them:
  the first scrape builds the cached exposition body, which is part of what it holds.

The hooks, the only places this module reaches into the exporter (re-point them if modules move):
``exporter.db.connect`` (to learn the backend pids) and ``exporter.ingest.collector.RunCollector.poll_once``
(to time each poll). Each poll writes one JSON line to ``$BENCH_POLL_LOG``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from .harness import (
    children_cpu_seconds,
    cpu_ns,
    expected_totals,
    median,
    memory_kib,
    metric_totals,
    parent_pid,
    percentile,
)

ROOT = Path(__file__).resolve().parent.parent
POLL_LOG = "BENCH_POLL_LOG"
APP = "bench-collect"  # application_name of its connections (-state, -leader appended by the exporter)


# --- inside the collect process ------------------------------------------------------------------


def _install_hooks(log_path: str) -> None:
    from exporter import db as exporter_db
    from exporter.ingest.collector import RunCollector as Collector

    conns: list[psycopg.AsyncConnection[Any]] = []
    connect = exporter_db.connect

    async def recording_connect(opts: exporter_db.ConnectOptions) -> psycopg.AsyncConnection[dict[str, Any]]:
        conn = await connect(opts)
        conns.append(conn)
        return conn

    def backends() -> tuple[list[int], int | None]:
        pids = sorted(c.info.backend_pid for c in conns if not c.closed)
        total = 0
        for pid in pids:
            ns = cpu_ns(pid)
            if ns is None:
                return pids, None
            total += ns
        return pids, total

    poll_once = Collector.poll_once
    out = open(log_path, "a", buffering=1)  # noqa: SIM115  # open for the life of the process

    async def timed_poll(self: Collector) -> Any:
        pids0, pg0 = backends()
        t0, c0 = time.monotonic(), time.process_time()
        result = await poll_once(self)
        c1, t1 = time.process_time(), time.monotonic()
        pids1, pg1 = backends()
        same = pids0 == pids1 and pg0 is not None and pg1 is not None
        out.write(json.dumps({"t0": t0, "wall": t1 - t0, "cpu": c1 - c0, "counted": result.counted,
                              "pg": (pg1 - pg0) / 1e9 if same and pg0 is not None and pg1 is not None else None,
                              "pids": pids1}) + "\n")
        return result

    exporter_db.connect = recording_connect
    setattr(Collector, "poll_once", timed_poll)  # noqa: B010  # a method: mypy forbids assigning it directly


def child(argv: list[str]) -> int:
    _install_hooks(os.environ[POLL_LOG])
    from exporter.commands.cli import main

    return main(argv)


# --- outside: the benchmark ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as r:
        body = r.read()
    return time.perf_counter() - t0, bytes(body)


def wait_for(what: str, check: Callable[[], Any], timeout: float, alive: Callable[[], None]) -> Any:
    """Poll ``check`` until it returns something truthy (a condition, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not (out := check()):
        alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)
    return out


def agno_exporter_cmd() -> list[str]:
    """The installed console script (next to this interpreter), as a user runs it."""
    script = shutil.which("agno-exporter", path=str(Path(sys.executable).parent))
    entry = "import sys; from exporter.commands.cli import main; sys.exit(main())"
    return [script] if script else [sys.executable, "-c", entry]


def stats(xs: list[float]) -> dict[str, float]:
    return {"median": median(xs), "p95": percentile(xs, 95), "max": max(xs)}


class Collect:
    """One ``agno-exporter collect`` process on ``url`` with a fresh state schema."""

    def __init__(self, url: str, schema: str, interval: float) -> None:
        self.url, self.interval = url, interval
        self.dir = Path(tempfile.mkdtemp(prefix="bench-collect-"))
        self.log = self.dir / "polls.jsonl"
        self.log.touch()
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                   **{POLL_LOG: str(self.log), "AGNO_EXPORTER_STATE__SCHEMA": schema,
                      "AGNO_EXPORTER_DATABASE__APPLICATION_NAME": APP})
        self.stderr = open(self.dir / "stderr.log", "wb")  # noqa: SIM115  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.deployed", "child", "collect", "--db-url", url,
             "--poll-interval", f"{round(interval * 1000)}ms", "--listen", f"127.0.0.1:{self.port}",
             "--log-level", "warning"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self.stderr)

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"collect exited ({self.proc.returncode}):\n"
                               f"{(self.dir / 'stderr.log').read_text()[-4000:]}")

    def polls(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.endswith("}")]

    def wait_polls(self, n: int, after: float, timeout: float) -> list[dict[str, Any]]:
        """The first ``n`` polls that started after monotonic time ``after``."""
        def got() -> list[dict[str, Any]]:
            recs = [p for p in self.polls() if p["t0"] > after]
            return recs[:n] if len(recs) >= n else []
        return list(wait_for(f"{n} polls of collect", got, timeout, self.alive))

    def metrics(self) -> tuple[float, bytes]:
        return http_get(f"http://127.0.0.1:{self.port}/metrics")

    def backfill(self, timeout: float = 3600) -> dict[str, Any]:
        """Wait for the first start to count the table (until a poll counts nothing); check exactness."""
        def done() -> list[dict[str, Any]]:
            recs = self.polls()
            return recs if recs and recs[-1]["counted"] == 0 and any(r["counted"] for r in recs) else []
        recs = wait_for("the first start to count the table", done, timeout, self.alive)
        counting = [r for r in recs if r["counted"]]
        _, body = self.metrics()
        runs, tokens = metric_totals(body)
        want = expected_totals(self.url)
        if (runs, tokens) != want:
            raise AssertionError(f"collect exports {runs} runs / {tokens} tokens, agno's rows hold {want}")
        seconds = sum(r["wall"] for r in counting)
        counted = sum(r["counted"] for r in counting)
        return {"counted": counted, "seconds": seconds, "runs_per_second": counted / seconds,
                "cpu_seconds": sum(r["cpu"] for r in counting)}

    def idle(self, n: int, conn: psycopg.Connection[Any]) -> dict[str, Any]:
        """``n`` idle polls at the configured spacing: per poll, and the whole process over the phase."""
        last = self.polls()[-1]
        pids = last["pids"]
        postmaster = parent_pid(pids[0]) if pids else None

        def snapshot() -> tuple[float, int | None, int | None, float | None, int | None]:
            pg = [cpu_ns(p) for p in pids]
            return (time.monotonic(), cpu_ns(self.proc.pid), None if None in pg else sum(x or 0 for x in pg),
                    children_cpu_seconds(postmaster) if postmaster else None, parallel_workers(conn))

        s0 = snapshot()
        recs = self.wait_polls(n, s0[0], timeout=n * self.interval * 3 + 600)
        s1 = snapshot()
        if any(r["counted"] for r in recs):
            raise AssertionError("an idle poll counted runs: the table changed under the benchmark")
        pg = [r["pg"] for r in recs if r["pg"] is not None]
        out: dict[str, Any] = {
            "polls": n, "interval": self.interval, "wall": stats([r["wall"] for r in recs]),
            "exporter_cpu": stats([r["cpu"] for r in recs]),
            "postgres_cpu": stats(pg) if len(pg) == n else None,
            "total_cpu": stats([r["cpu"] + r["pg"] for r in recs]) if len(pg) == n else None,
        }
        # Over the phase, everything the process did (timers between polls too) and the backends,
        # per poll interval; and what else Postgres spent in processes that exited (parallel workers,
        # autovacuum workers: an upper bound for parallel workers).
        span = s1[0] - s0[0]
        intervals = span / self.interval
        out["phase"] = {
            "seconds": span,
            "exporter_cpu_per_interval": (s1[1] - s0[1]) / 1e9 / intervals if s0[1] and s1[1] else None,
            "backend_cpu_per_interval": ((s1[2] - s0[2]) / 1e9 / intervals
                                         if s0[2] is not None and s1[2] is not None else None),
            "exited_postgres_children_cpu": s1[3] - s0[3] if s0[3] is not None and s1[3] is not None else None,
            "parallel_workers_launched": s1[4] - s0[4] if s0[4] is not None and s1[4] is not None else None,
        }
        return out

    def scrapes(self, n: int) -> dict[str, Any]:
        walls, cpus = [], []
        body = b""
        for _ in range(n):
            c0 = cpu_ns(self.proc.pid)
            dt, body = self.metrics()
            c1 = cpu_ns(self.proc.pid)
            walls.append(dt)
            if c0 is not None and c1 is not None:
                cpus.append((c1 - c0) / 1e9)
        samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        return {"scrapes": n, "wall": stats(walls), "cpu": stats(cpus) if cpus else None, "bytes": len(body),
                "samples": samples, "memory_kib": memory_kib(self.proc.pid)}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Collect:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def parallel_workers(conn: psycopg.Connection[Any]) -> int | None:
    """Parallel workers launched in this database so far (PostgreSQL 18+), else None."""
    try:
        row = conn.execute("SELECT parallel_workers_launched FROM pg_stat_database"
                           " WHERE datname = current_database()").fetchone()
    except psycopg.errors.UndefinedColumn:
        return None
    return int(row[0]) if row else None


def create_index(url: str) -> float:
    """``agno-exporter create-index``, the opt-in index on (updated_at, run_id); returns seconds."""
    t0 = time.perf_counter()
    subprocess.run([*agno_exporter_cmd(), "create-index", "--db-url", url], check=True, capture_output=True,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)
    return time.perf_counter() - t0


def measure(url: str, schema: str, interval: float, plain_polls: int, indexed_polls: int,
            scrapes: int) -> dict[str, Any]:
    """One table size: first start, idle polls without then with the index, scrapes, memory after them.

    The index is dropped again at the end (the next size is loaded and first polled without it)."""
    from exporter.commands.index import index_name

    with Collect(url, schema, interval) as c, psycopg.connect(url, autocommit=True) as conn:
        out: dict[str, Any] = {"ingest": c.backfill()}
        out["idle_no_index"] = c.idle(plain_polls, conn)
        out["create_index_seconds"] = create_index(url)
        out["idle"] = c.idle(indexed_polls, conn)
        out["scrape"] = c.scrapes(scrapes)
        row = conn.execute("SELECT count(*), pg_total_relation_size('ai.agno_runs') FROM ai.agno_runs").fetchone()
        assert row is not None
        out["rows"], out["table_bytes"] = int(row[0]), int(row[1])
        conn.execute(f"DROP INDEX IF EXISTS ai.{index_name('agno_runs')}")
    return out


if __name__ == "__main__":
    if sys.argv[1:2] != ["child"]:
        sys.exit("usage: python -m benchmarks.deployed child COLLECT-ARGS... (started by benchmarks)")
    sys.exit(child(sys.argv[2:]))
