"""``python -m benchmarks [--quick] [--json FILE]``: every benchmark, each next to its baseline.

Steps: start Postgres (``DATABASE_URL``, else the embedded server, as the tests do), capture real
agno runs, then for each table size append generated runs (COPY) and measure that size in a fresh
process; ingest is compared with its baselines at one size; freshness runs on the largest table;
scrape and the agent-app overhead need no table. Prints one line per benchmark (value, baseline,
ratio, target, data size) and, with ``--json``, writes
``{"name": {"value", "unit", "baseline", "ratio", ...}}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from . import freshness, scrape
from .capture import capture, describe
from .generate import Generator, load
from .harness import Result

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]  # table sizes (runs); memory is compared between the first and the last
    ingest_size: int  # where ingest is compared with its baselines
    ingest_attempts: int
    idle_polls: int
    aggregates: int
    agno_budget: float  # seconds in agno's per-run read loop
    poll_interval: float
    probes: int
    scrape_series: int
    scrape_repeat: int
    overhead_runs: int
    overhead_rounds: int
    # the wake-up (exporter.ingest.notify): a poll interval no probe waits for, probes this far apart at most,
    # and commits per round of the trigger's cost on agno's writes
    wake_poll_interval: float = 60.0
    wake_spacing: float = 0.5
    write_commits: int = 2000


FULL = Plan(sizes=(100_000, 1_000_000), ingest_size=100_000, ingest_attempts=2, idle_polls=30, aggregates=3,
            agno_budget=15.0, poll_interval=1.0, probes=60, scrape_series=10_000, scrape_repeat=20,
            overhead_runs=30, overhead_rounds=4)
# Under two minutes on two cores: the same benchmarks on smaller tables and fewer repetitions.
QUICK = Plan(sizes=(2_000, 10_000), ingest_size=10_000, ingest_attempts=1, idle_polls=10, aggregates=2,
             agno_budget=3.0, poll_interval=1.0, probes=12, scrape_series=10_000, scrape_repeat=5,
             overhead_runs=10, overhead_rounds=2, write_commits=500)


def _run_json(module: str, *args: str) -> dict[str, Any]:
    """Run ``python -m benchmarks.<module>`` in a fresh process (its own memory, its own imports)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmarks.{module} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return dict(json.loads(proc.stdout))


class Sink:
    """The discarding OTLP backend in a process of its own."""

    def __enter__(self) -> str:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.sink"], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


def machine(url: str) -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return {"cores": str(os.cpu_count()), "cpu": cpu, "postgres": row[0] if row else "?",
            "python": platform.python_version()}


def _k(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"


def run(plan: Plan, log: Any) -> tuple[dict[str, Result], dict[str, Any]]:
    from tests.helpers.support import PgServer

    server = PgServer()
    url = server.create_database()
    overhead_url = server.create_database()
    results: dict[str, Result] = {}
    info: dict[str, Any] = {}
    try:
        info["machine"] = machine(url)
        log(f"machine: {info['machine']}")
        captured = capture(url)
        log(f"captured {describe(captured)}")
        gen = Generator(captured)
        at: dict[int, dict[str, Any]] = {}
        with Sink() as sink_url:
            for size in sorted(plan.sizes):
                added, seconds = load(url, gen, size)
                log(f"table at {size} runs ({added} generated in {seconds:.1f}s)")
                at[size] = _run_json("atsize", url, f"bench_size_{size}", "--idle-polls", str(plan.idle_polls),
                                     "--aggregates", str(plan.aggregates))
                log(f"  at {size}: {at[size]}")
                if size == plan.ingest_size:
                    info["ingest"] = ing = _run_json("ingest", url, sink_url, "--agno-budget", str(plan.agno_budget),
                                                     "--attempts", str(plan.ingest_attempts))
                    log(f"  ingest: {ing}")
            overhead = _run_json("overhead", overhead_url, sink_url, "--runs", str(plan.overhead_runs),
                                 "--rounds", str(plan.overhead_rounds))
            log(f"overhead: {overhead}")
        small, big = min(plan.sizes), max(plan.sizes)
        # Freshness as deployed for it: with the opt-in index, so a poll is short at any table size
        # (the wake-up without it is recorded too: each woken poll then scans the runs table).
        fresh = asyncio.run(freshness.measure(url, f"bench_size_{big}", gen, plan.poll_interval, plan.probes,
                                              index=True))
        log(f"freshness: {fresh}")
        woken = asyncio.run(freshness.measure(url, f"bench_size_{big}", gen, plan.wake_poll_interval, plan.probes,
                                              wake=True, spacing=plan.wake_spacing, index=True))
        log(f"freshness with the wake-up: {woken}")
        woken_plain = asyncio.run(freshness.measure(url, f"bench_size_{big}", gen, plan.wake_poll_interval,
                                                    plan.probes, wake=True, spacing=plan.wake_spacing))
        log(f"freshness with the wake-up, without the index: {woken_plain}")
        writes = freshness.write_cost(url, plan.write_commits)
        log(f"commit that finishes a run, with/without the wake-up trigger: {writes}")
        scraped = scrape.measure(captured, plan.scrape_series, plan.scrape_repeat)
        log(f"scrape: {scraped}")
        info.update(sizes=at, overhead=overhead, freshness=fresh, freshness_wake=woken,
                    freshness_wake_no_index=woken_plain, notify_writes=writes,
                    scrape=scraped)
    finally:
        server.drop_database(url)
        server.drop_database(overhead_url)
        server.stop()

    ing = info["ingest"]
    n_ing = _k(plan.ingest_size)
    results["ingest_metrics"] = Result(
        ing["metrics"]["runs_per_second"], "runs/s", ing["fetch_parse"]["runs_per_second"],
        "psycopg fetch + JSON parse of the same rows", True, "≥ 0.5×", f"{n_ing} runs")
    results["ingest_metrics_vs_agno_api"] = Result(
        ing["metrics"]["runs_per_second"], "runs/s", ing["agno_api"]["runs_per_second"],
        "agno aget_run_output per run (the seed's loop)", True, "≥ 40×", f"{n_ing} runs")
    results["ingest_spans"] = Result(
        ing["spans"]["runs_per_second"], "runs/s", ing["fetch_parse"]["runs_per_second"],
        "psycopg fetch + JSON parse of the same rows", True, "", f"{n_ing} runs")
    results["idle_poll"] = Result(
        at[big]["idle_poll_seconds"] * 1e3, "ms", at[big]["sql_aggregate_seconds"] * 1e3,
        "SQL aggregate recomputing totals per scrape", False, "≤ 5 ms and ≥ 1000×",
        f"{_k(big)} runs, with create-index")
    results["idle_poll_no_index"] = Result(
        at[big]["idle_poll_no_index_seconds"] * 1e3, "ms", at[big]["sql_aggregate_seconds"] * 1e3,
        "SQL aggregate recomputing totals per scrape", False, "", f"{_k(big)} runs, agno's indexes only")
    for q in ("p50", "p99"):
        results[f"freshness_{q}"] = Result(
            fresh[q], "s", plan.poll_interval, "the poll interval", False, "≤ 1.1× interval" if q == "p99" else "",
            f"{_k(big)} runs, with create-index, {plan.probes} probes")
    for q in ("p50", "p99"):
        results[f"freshness_wake_{q}"] = Result(
            woken[q] * 1e3, "ms", fresh[q] * 1e3, f"polling every {plan.poll_interval:g} s without the wake-up",
            False, "≤ 150 ms" if q == "p99" else "",
            f"{_k(big)} runs, with create-index, poll every {plan.wake_poll_interval:g} s, {plan.probes} probes")
    results["notify_trigger_commit"] = Result(
        writes["with"] * 1e3, "ms", writes["without"] * 1e3, "the same commit without the trigger", False, "",
        f"{plan.write_commits} commits each, in turns")
    for fmt in ("openmetrics", "text"):
        results[f"scrape_{fmt}"] = Result(
            scraped[fmt]["ours"] * 1e3, "ms", scraped[fmt]["native"] * 1e3,
            "prometheus_client Counter/Histogram, same series", False, "≤ 50 ms", f"{scraped['series']} series")
    results["rss_peak"] = Result(
        at[big]["peak_rss_kib"] / 1024, "MiB", at[small]["peak_rss_kib"] / 1024,
        f"peak RSS after ingesting {_k(small)} runs", False, "≈ 1 (flat)", f"{_k(big)} runs")
    results["agent_run_overhead"] = Result(
        overhead["off"] * 1e3, "ms", overhead["on"] * 1e3, "openinference-instrumentation-agno in process",
        False, "", f"{overhead['runs']} runs each")
    return results, info


def table(results: dict[str, Result]) -> str:
    head = ("benchmark", "value", "baseline", "ratio", "target", "data", "baseline is")
    rows = [head] + [(name, f"{r.value:,.4g} {r.unit}", f"{r.baseline:,.4g} {r.unit}", f"{r.ratio:.3g}×", r.target,
                      r.size, r.baseline_label) for name, r in results.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small tables, few repetitions: under two minutes")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--sizes", help="table sizes in runs, comma-separated (the first is also the ingest size)")
    args = p.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.sizes:
        sizes = tuple(int(s) for s in args.sizes.split(","))
        plan = Plan(**{**plan.__dict__, "sizes": sizes, "ingest_size": sizes[0]})
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    results, info = run(plan, log)
    print(table(results))
    m = info["machine"]
    print(f"\nmachine: {m['cores']} cores, {m['cpu']}, PostgreSQL {m['postgres']}, Python {m['python']}; "
          f"{time.perf_counter() - t0:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {**{name: r.as_json() for name, r in results.items()}, "_details": info}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
