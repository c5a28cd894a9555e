"""query-exporter, the peer a user would pick instead: metrics from SQL run on each scrape.

query-exporter (PyPI ``query-exporter``, the standard metrics-from-SQL Prometheus exporter) is
installed into a virtualenv of its own, built on first use and cached under
``~/.cache/agno-exporter/venvs/`` (``AGNO_EXPORTER_CACHE`` moves it), as the tests cache agno
releases. Without a package index it is skipped and the reason is printed; the idle-poll
baseline then falls back to its SQL run by psycopg directly.

Its configuration (:func:`config`, the 5.x format: ``databases`` with a ``dsn``, ``metrics``
with ``type``/``labels``, ``queries`` with ``databases``/``metrics``/``sql``) publishes the same
figures from ``agno_runs``: finished runs by run type, name and status with their summed
duration, and input/output tokens by run type, name and model. The queries have no ``interval``,
so query-exporter runs them on every scrape (its "aperiodic" queries); the counters are set
from the query's value (``increment: false``, the 5.x default), which is the only way to publish
a total that SQL recomputes. A scrape therefore costs the SQL aggregate over the whole table:
:func:`scrapes` reports its wall time and CPU (the query-exporter process, its Postgres backend,
and parallel workers through the postmaster's reaped-children CPU).

:func:`deletes` shows what it gets wrong when agno rows are deleted (retention, a user's cleanup):
its totals are recomputed from what is left, so its counters go down, which Prometheus reads as a
counter reset; ours keep what was counted.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import yaml

from .deployed import Collect, free_port, http_get, stats, wait_for
from .harness import FINAL, children_cpu_seconds, cpu_ns, expected_totals, metric_totals, parent_pid

REQUIREMENTS = ("query-exporter==5.0.2", "psycopg2-binary==2.9.13")  # the newest this index served, Nov 2026
APP = "bench-query-exporter"
_MARKER = ".bench-ready"
_FINAL_SQL = "ARRAY[" + ", ".join(f"'{s}'" for s in FINAL) + "]"
_NAME = "coalesce(run_data->>'agent_name', run_data->>'team_name', run_data->>'workflow_name', '')"
SQL_RUNS = f"""
SELECT run_type, {_NAME} AS name, status, count(*) AS agno_runs,
       coalesce(sum((run_data->'metrics'->>'duration')::float8), 0) AS agno_run_duration_seconds_sum
FROM ai.agno_runs WHERE status = ANY({_FINAL_SQL}) GROUP BY 1, 2, 3
"""
SQL_TOKENS = f"""
SELECT run_type, {_NAME} AS name, coalesce(run_data->>'model', '') AS model,
       coalesce(sum((run_data->'metrics'->>'input_tokens')::bigint), 0) AS agno_input_tokens,
       coalesce(sum((run_data->'metrics'->>'output_tokens')::bigint), 0) AS agno_output_tokens
FROM ai.agno_runs WHERE status = ANY({_FINAL_SQL}) AND run_type <> 'workflow' GROUP BY 1, 2, 3
"""


def cache_root() -> Path:
    base = os.environ.get("AGNO_EXPORTER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "agno-exporter")
    return Path(base) / "venvs"


def venv_python() -> Path | str:
    """query-exporter's virtualenv python, built on first use; or why it could not be built."""
    text = "\n".join(REQUIREMENTS) + "\n"
    key = hashlib.sha256(f"{text}{sys.version}{os.path.realpath(sys.base_prefix)}".encode()).hexdigest()[:16]
    root = cache_root()
    final = root / f"query-exporter-{key}"
    python = final / "bin" / "python"  # console scripts' shebangs break on the rename; bin/python does not
    if (final / _MARKER).is_file():
        return python
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / _MARKER).is_file():
            return python
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=root))
        try:
            for cmd in ([sys.executable, "-m", "venv", str(tmp)],
                        [str(tmp / "bin" / "python"), "-m", "pip", "install", "--no-input",
                         "--disable-pip-version-check", "-q", *REQUIREMENTS],
                        [str(tmp / "bin" / "python"), "-c", "import query_exporter.main, psycopg2"]):
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
                except subprocess.TimeoutExpired:
                    return f"{' '.join(cmd[:4])}: timed out (is PyPI reachable?)"
                if proc.returncode:
                    tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
                    return f"cannot install {' '.join(REQUIREMENTS)} (is PyPI reachable?): {tail}"
            (tmp / _MARKER).write_text(text)
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return python


def config(url: str) -> dict[str, Any]:
    """query-exporter's configuration for the same figures as ours (5.x format)."""
    sep = "&" if "?" in url else "?"
    dsn = f"{url}{sep}application_name={APP}".replace("postgresql://", "postgresql+psycopg2://", 1)
    by_name = ["run_type", "name"]
    return {
        "databases": {"agno": {"dsn": dsn}},
        "metrics": {
            "agno_runs": {"type": "counter", "description": "Finished agno runs", "labels": [*by_name, "status"]},
            "agno_run_duration_seconds_sum": {"type": "counter", "description": "Summed run duration",
                                              "labels": [*by_name, "status"]},
            "agno_input_tokens": {"type": "counter", "description": "Input tokens", "labels": [*by_name, "model"]},
            "agno_output_tokens": {"type": "counter", "description": "Output tokens", "labels": [*by_name, "model"]},
        },
        "queries": {
            "runs": {"databases": ["agno"], "metrics": ["agno_runs", "agno_run_duration_seconds_sum"],
                     "sql": SQL_RUNS},
            "tokens": {"databases": ["agno"], "metrics": ["agno_input_tokens", "agno_output_tokens"],
                       "sql": SQL_TOKENS},
        },
    }


def totals(body: bytes) -> tuple[int, int]:
    return metric_totals(body, "agno_runs_total", ("agno_input_tokens_total", "agno_output_tokens_total"), None)


class QueryExporter:
    def __init__(self, python: Path, url: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-query-exporter-"))
        (self.dir / "config.yaml").write_text(yaml.safe_dump(config(url)))
        self.port = free_port()
        self.stderr = open(self.dir / "stderr.log", "wb")  # noqa: SIM115  # closed in stop()
        self.proc = subprocess.Popen(
            [str(python), "-c", "from query_exporter.main import script; script()", "--config",
             str(self.dir / "config.yaml"), "-H", "127.0.0.1", "-p", str(self.port), "-L", "warning"],
            cwd=self.dir, stdout=subprocess.DEVNULL, stderr=self.stderr)
        self.url = url

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"query-exporter exited ({self.proc.returncode}):\n"
                               f"{(self.dir / 'stderr.log').read_text()[-4000:]}")

    def scrape(self) -> tuple[float, bytes]:
        def up() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                return False
        wait_for("query-exporter to listen", up, 60, self.alive)
        dt, body = http_get(f"http://127.0.0.1:{self.port}/metrics")
        if b"agno_runs_total" not in body:
            raise RuntimeError(f"query-exporter's scrape has no agno_runs:\n{body[:2000]!r}\n"
                               f"{(self.dir / 'stderr.log').read_text()[-2000:]}")
        return dt, body

    def backend(self) -> int | None:
        with psycopg.connect(self.url) as conn:
            row = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (APP,)).fetchone()
        return int(row[0]) if row else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> QueryExporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def scrapes(python: Path, url: str, n: int) -> dict[str, Any]:
    """A warm-up scrape (connects, checks the figures), then ``n`` timed ones with their CPU."""
    with QueryExporter(python, url) as qe:
        _, body = qe.scrape()
        got, want = totals(body), expected_totals(url)
        if got != want:
            raise AssertionError(f"query-exporter's config is off: {got} runs/tokens, agno's rows hold {want}")
        backend = qe.backend()
        postmaster = parent_pid(backend) if backend else None
        walls: list[float] = []
        cpu: dict[str, list[float]] = {"process": [], "backend": [], "exited_children": []}
        for _ in range(n):
            before = (cpu_ns(qe.proc.pid), cpu_ns(backend) if backend else None,
                      children_cpu_seconds(postmaster) if postmaster else None)
            dt, _ = qe.scrape()
            after = (cpu_ns(qe.proc.pid), cpu_ns(backend) if backend else None,
                     children_cpu_seconds(postmaster) if postmaster else None)
            walls.append(dt)
            for key, b, a, scale in zip(cpu, before, after, (1e9, 1e9, 1.0), strict=True):
                if a is not None and b is not None:
                    cpu[key].append((a - b) / scale)
        out: dict[str, Any] = {"scrapes": n, "wall": stats(walls), "bytes": len(body)}
        for key, xs in cpu.items():
            out[f"{key}_cpu"] = stats(xs) if len(xs) == n else None
        if len(cpu["process"]) == n and len(cpu["backend"]) == n:
            out["cpu"] = stats([sum(xs) for xs in zip(*cpu.values(), strict=False)]
                               if len(cpu["exited_children"]) == n else
                               [p + b for p, b in zip(cpu["process"], cpu["backend"], strict=True)])
        return out


def sql_baseline(url: str, n: int) -> dict[str, Any]:
    """Without query-exporter: its two queries run by psycopg, per "scrape" (wall, backend CPU)."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        backend = int(row[0]) if row else 0
        postmaster = parent_pid(backend)
        walls, cpus = [], []
        for _ in range(n):
            b = (cpu_ns(backend), children_cpu_seconds(postmaster) if postmaster else None)
            t0 = time.perf_counter()
            for sql in (SQL_RUNS, SQL_TOKENS):
                conn.execute(sql).fetchall()
            walls.append(time.perf_counter() - t0)
            a = (cpu_ns(backend), children_cpu_seconds(postmaster) if postmaster else None)
            if a[0] is not None and b[0] is not None:
                cpus.append((a[0] - b[0]) / 1e9 + (a[1] - b[1] if a[1] is not None and b[1] is not None else 0))
    return {"scrapes": n, "wall": stats(walls), "cpu": stats(cpus) if len(cpus) == n else None}


def deletes(python: Path | None, url: str, interval: float) -> dict[str, Any]:
    """Both exporters count ``url``'s table, then the oldest quarter of the sessions is deleted."""
    with Collect(url, "bench_deletes", interval) as ours:
        ours.backfill()
        qe = QueryExporter(python, url) if python else None
        try:
            before = {"ours": metric_totals(ours.metrics()[1])}
            if qe:
                before["query_exporter"] = totals(qe.scrape()[1])
            with psycopg.connect(url) as conn:
                sessions = [r[0] for r in conn.execute(
                    "SELECT session_id FROM ai.agno_sessions ORDER BY created_at"
                    " LIMIT (SELECT count(*) / 4 FROM ai.agno_sessions)").fetchall()]
                row = conn.execute("SELECT count(*) FROM ai.agno_runs WHERE session_id = ANY(%s) AND status = ANY(%s)",
                                   (sessions, FINAL)).fetchone()
                conn.execute("DELETE FROM ai.agno_runs WHERE session_id = ANY(%s)", (sessions,))
                conn.execute("DELETE FROM ai.agno_sessions WHERE session_id = ANY(%s)", (sessions,))
            deleted = int(row[0]) if row else 0
            ours.wait_polls(2, time.monotonic(), timeout=60 + 10 * interval)  # it has looked since
            after = {"ours": metric_totals(ours.metrics()[1])}
            if qe:
                after["query_exporter"] = totals(qe.scrape()[1])
        finally:
            if qe:
                qe.stop()
    return {"deleted_runs": deleted, "before": before, "after": after}
