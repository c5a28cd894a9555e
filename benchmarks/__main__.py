"""``python -m benchmarks [--quick] [--json FILE]``: every benchmark, each next to its baseline.

Steps: start Postgres (``DATABASE_URL``, else the embedded server, as the tests do), capture real
agno runs, then for each table size append generated runs (COPY) and measure that size in a fresh
process; ingest is compared with its baselines at one size; freshness runs on the largest table
(polling, then with the wake-up, and the trigger's cost per commit);
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

from . import deployed, freshness, peer, scrape
from .capture import capture, describe
from .generate import Generator, load
from .harness import Result

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]  # table sizes (runs); memory is compared between the first and the last
    ingest_size: int  # where ingest is compared with its baselines
    ingest_attempts: int
    idle_interval: float  # collect's --poll-interval while its idle polls are measured
    plain_polls: int  # idle polls without the index
    indexed_polls: int  # idle polls with the index (create-index)
    collect_scrapes: int  # /metrics scrapes of the running collect, before its memory is read
    peer_scrapes: int  # timed query-exporter scrapes per size (after a warm-up one)
    delete_runs: int  # table size of the deletes check
    agno_budget: float  # seconds in agno's per-run read loop
    poll_interval: float  # freshness
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


FULL = Plan(sizes=(100_000, 1_000_000), ingest_size=100_000, ingest_attempts=2, idle_interval=5.0, plain_polls=6,
            indexed_polls=30, collect_scrapes=5, peer_scrapes=1, delete_runs=10_000, agno_budget=15.0,
            poll_interval=1.0, probes=60, scrape_series=10_000, scrape_repeat=20, overhead_runs=30, overhead_rounds=4)
# A few minutes on two cores: the same benchmarks on smaller tables, shorter spacing, fewer repetitions.
QUICK = Plan(sizes=(2_000, 10_000), ingest_size=10_000, ingest_attempts=1, idle_interval=0.5, plain_polls=4,
             indexed_polls=10, collect_scrapes=3, peer_scrapes=3, delete_runs=2_000, agno_budget=3.0,
             poll_interval=1.0, probes=12, scrape_series=10_000, scrape_repeat=5, overhead_runs=10, overhead_rounds=2,
             write_commits=500)


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
            "python": platform.python_version(), "load_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def vacuum(url: str) -> None:
    """What autovacuum would do after the bulk load, done now so that it does not run mid-measure."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) ai.agno_runs, ai.agno_sessions")


def _k(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"


def run(plan: Plan, log: Any) -> dict[str, Any]:
    from tests.helpers.support import PgServer

    server = PgServer()
    url = server.create_database()
    overhead_url = server.create_database()
    info: dict[str, Any] = {}
    try:
        info["machine"] = machine(url)
        log(f"machine: {info['machine']}")
        python = peer.venv_python()
        info["query_exporter"] = str(python) if isinstance(python, Path) else f"skipped: {python}"
        log(f"query-exporter: {info['query_exporter']}")
        qe = python if isinstance(python, Path) else None
        captured = capture(url)
        log(f"captured {describe(captured)}")
        gen = Generator(captured)
        at: dict[int, dict[str, Any]] = {}
        with Sink() as sink_url:
            for size in sorted(plan.sizes):
                added, seconds = load(url, gen, size)
                vacuum(url)
                log(f"table at {size} runs ({added} generated in {seconds:.1f}s)")
                at[size] = deployed.measure(url, f"bench_size_{size}", plan.idle_interval, plan.plain_polls,
                                            plan.indexed_polls, plan.collect_scrapes)
                at[size]["peer"] = (peer.scrapes(qe, url, plan.peer_scrapes) if qe
                                    else peer.sql_baseline(url, plan.peer_scrapes))
                log(f"  at {size}: {json.dumps(at[size])}")
                if size == plan.ingest_size:
                    info["ingest"] = ing = _run_json("ingest", url, sink_url, "--agno-budget", str(plan.agno_budget),
                                                     "--attempts", str(plan.ingest_attempts))
                    log(f"  ingest: {ing}")
            overhead = _run_json("overhead", overhead_url, sink_url, "--runs", str(plan.overhead_runs),
                                 "--rounds", str(plan.overhead_rounds))
            log(f"overhead: {overhead}")
        big = max(plan.sizes)
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
        # The overhead database has agno's tables (its agent wrote them) and a few runs of its own.
        load(overhead_url, Generator(captured, seed=2), plan.delete_runs)
        info["deletes"] = peer.deletes(qe, overhead_url, min(plan.idle_interval, 1.0))
        log(f"deletes: {info['deletes']}")
        info.update(sizes=at, overhead=overhead, freshness=fresh, freshness_wake=woken,
                    freshness_wake_no_index=woken_plain, notify_writes=writes, scrape=scraped)
        info["machine"]["load_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    finally:
        for db in (url, overhead_url):
            server.drop_database(db)
        server.stop()
    return info


def figures(plan: Plan, info: dict[str, Any]) -> dict[str, Result]:
    """Each figure with its baseline, from what :func:`run` measured (also from a saved ``_details``)."""
    results: dict[str, Result] = {}
    qe = not str(info["query_exporter"]).startswith("skipped")
    at = {int(size): a for size, a in info["sizes"].items()}
    fresh, scraped, overhead = info["freshness"], info["scrape"], info["overhead"]
    small, big = min(at), max(at)
    ing = info["ingest"]
    n_ing = _k(plan.ingest_size)
    limit = "psycopg fetch + orjson parse of the same rows (the limit)"
    results["ingest_metrics"] = Result(
        ing["metrics"]["runs_per_second"], "runs/s", ing["fetch_parse"]["runs_per_second"], limit, True, "≥ 0.75×",
        f"{n_ing} runs")
    results["ingest_metrics_vs_agno_api"] = Result(
        ing["metrics"]["runs_per_second"], "runs/s", ing["agno_api"]["runs_per_second"],
        "agno aget_run_output per run (the seed's loop)", True, "≥ 40×", f"{n_ing} runs")
    results["ingest_spans"] = Result(
        ing["spans"]["runs_per_second"], "runs/s", ing["fetch_parse"]["runs_per_second"], limit, True, "≥ 0.4×",
        f"{n_ing} runs")
    cores = int(info["machine"]["cores"])
    for name in ("metrics", "spans"):
        if (cpu := cpu_per_run(ing[name])) is None or (limit_cpu := cpu_per_run(ing["fetch_parse"])) is None:
            continue  # Postgres on another host: its CPU is not readable here
        # Python and Postgres share the cores: the wall time per run cannot be below CPU / cores
        bound = (1e6 / ing["fetch_parse"]["runs_per_second"]) / (cpu / cores)
        results[f"ingest_{name}_cpu"] = Result(
            cpu, "µs", limit_cpu, "CPU per run of the limit (process + Postgres)", False, "",
            f"{n_ing} runs, process {ing[name]['process_cpu_us_per_run']:.0f} + Postgres "
            f"{ing[name]['postgres_cpu_us_per_run']:.0f} µs per run; on {cores} cores the ingest ratio cannot "
            f"pass {bound:.2f}×")
    b = at[big]
    peer_label = "query-exporter scrape (its SQL on every scrape)" if qe else "query-exporter's SQL by psycopg"
    where = f"{_k(big)} runs, polls {plan.idle_interval:g}s apart"
    for q in ("median", "p95"):
        suffix = "" if q == "median" else "_p95"
        results[f"idle_poll{suffix}"] = Result(
            b["idle"]["wall"][q] * 1e3, "ms", b["peer"]["wall"]["median"] * 1e3, peer_label, False,
            "≤ 2 ms" if q == "median" else "", f"{where}, create-index, {q}")
        cpu = b["idle"]["total_cpu"] or b["idle"]["exporter_cpu"]
        what = "exporter + Postgres" if b["idle"]["total_cpu"] else "exporter only (Postgres not readable here)"
        peer_cpu = b["peer"].get("cpu") or b["peer"]["wall"]
        results[f"idle_poll_cpu{suffix}"] = Result(
            cpu[q] * 1e3, "ms", peer_cpu["median"] * 1e3, f"{peer_label}: CPU", False,
            "≤ 2 ms" if q == "median" else "", f"{where}, create-index, {what} CPU, {q}")
    if (cpu_all := per_interval(b["idle"])) is not None:
        results["idle_poll_cpu_per_interval"] = Result(
            cpu_all * 1e3, "ms", (b["peer"].get("cpu") or b["peer"]["wall"])["median"] * 1e3, f"{peer_label}: CPU",
            False, "", f"{where}, create-index, mean per interval: whole process + backends + parallel "
            f"workers ({b['idle']['phase']['parallel_workers_launched']} launched)")
    results["idle_poll_no_index"] = Result(
        b["idle_no_index"]["wall"]["median"] * 1e3, "ms", b["peer"]["wall"]["median"] * 1e3, peer_label, False, "",
        f"{where}, agno's indexes only, median")
    results["scrape_vs_query_exporter"] = Result(
        b["scrape"]["wall"]["median"] * 1e3, "ms", b["peer"]["wall"]["median"] * 1e3, peer_label, False, "",
        f"{_k(big)} runs, /metrics of the running collect ({b['scrape']['samples']} samples)")
    for fmt in ("openmetrics", "text"):
        results[f"scrape_{fmt}"] = Result(
            scraped[fmt]["ours"] * 1e3, "ms", scraped[fmt]["native"] * 1e3,
            "prometheus_client Counter/Histogram, same series", False, "≤ 50 ms", f"{scraped['series']} series")
    results["rss_peak"] = Result(
        b["scrape"]["memory_kib"]["VmHWM"] / 1024, "MiB", at[small]["scrape"]["memory_kib"]["VmHWM"] / 1024,
        f"the same after counting {_k(small)} runs", False, "≤ 80 MiB, flat",
        f"collect after counting {_k(big)} runs and {plan.collect_scrapes} scrapes")
    for q in ("p50", "p99"):
        results[f"freshness_{q}"] = Result(
            fresh[q], "s", plan.poll_interval, "the poll interval", False, "≤ 1.1× interval" if q == "p99" else "",
            f"{_k(big)} runs, with create-index, {plan.probes} probes")
    if "freshness_wake" in info:  # details saved before the wake-up was measured have none
        woken, writes = info["freshness_wake"], info["notify_writes"]
        for q in ("p50", "p99"):
            results[f"freshness_wake_{q}"] = Result(
                woken[q] * 1e3, "ms", fresh[q] * 1e3, f"polling every {plan.poll_interval:g} s without the wake-up",
                False, "≤ 150 ms" if q == "p99" else "",
                f"{_k(big)} runs, with create-index, poll every {plan.wake_poll_interval:g} s, {plan.probes} probes")
        results["notify_trigger_commit"] = Result(
            writes["with"] * 1e3, "ms", writes["without"] * 1e3, "the same commit without the trigger", False, "",
            f"{plan.write_commits} commits each, in turns")
    results["agent_run_overhead"] = Result(
        overhead["off"] * 1e3, "ms", overhead["on"] * 1e3, "openinference-instrumentation-agno in process",
        False, "", f"{overhead['runs']} runs each")
    return results


def cpu_per_run(m: dict[str, Any]) -> float | None:
    """CPU per run of one ingest measurement, this process's and the Postgres server's (µs), None when
    the server's is not readable (details saved before it was measured have neither)."""
    pg = m.get("postgres_cpu_us_per_run")
    return None if pg is None else float(m["process_cpu_us_per_run"] + pg)


def _ms(x: dict[str, float] | None, q: str = "median") -> str:
    return "n/a" if x is None else f"{x[q] * 1e3:.3g}"


def per_interval(phase: dict[str, Any]) -> float | None:
    """CPU per poll interval over a whole idle phase: the exporter process (timers between polls
    too), its backends, and Postgres processes that exited meanwhile (parallel workers; autovacuum
    workers would count too, an upper bound), with the number of parallel workers launched."""
    ph = phase["phase"]
    parts = (ph["exporter_cpu_per_interval"], ph["backend_cpu_per_interval"], ph["exited_postgres_children_cpu"])
    if parts[0] is None or parts[1] is None or parts[2] is None:
        return None
    return float(parts[0] + parts[1] + parts[2] / (ph["seconds"] / phase["interval"]))


def _cpu_interval(phase: dict[str, Any]) -> str:
    x = per_interval(phase)
    return "n/a" if x is None else f"{x * 1e3:.3g} ({phase['phase']['parallel_workers_launched']} pw)"


def per_size(info: dict[str, Any]) -> str:
    """Every size side by side: the figures the README table gives at 10^5 and 10^6 runs."""
    head = ("runs", "table MB", "first start runs/s", "idle wall ms med/p95", "idle CPU exp+pg ms med/p95",
            "exp CPU ms med", "pg CPU ms med", "CPU/interval ms", "no-index wall ms", "no-index CPU/interval ms",
            "our scrape ms", "peer scrape ms", "peer CPU ms", "RSS peak/now MiB", "samples")
    rows = [head]
    for size, a in sorted(info["sizes"].items(), key=lambda kv: int(kv[0])):
        idle, p, m = a["idle"], a["peer"], a["scrape"]["memory_kib"]
        rows.append((f"{int(size):,}", f"{a['table_bytes'] / 1e6:,.0f}", f"{a['ingest']['runs_per_second']:,.0f}",
                     f"{_ms(idle['wall'])}/{_ms(idle['wall'], 'p95')}",
                     f"{_ms(idle['total_cpu'])}/{_ms(idle['total_cpu'], 'p95')}", _ms(idle["exporter_cpu"]),
                     _ms(idle["postgres_cpu"]), _cpu_interval(idle), _ms(a["idle_no_index"]["wall"]),
                     _cpu_interval(a["idle_no_index"]), _ms(a["scrape"]["wall"]), _ms(p["wall"]),
                     _ms(p.get("cpu")), f"{m['VmHWM'] / 1024:.1f}/{m['VmRSS'] / 1024:.1f}",
                     str(a["scrape"]["samples"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def deletes_line(d: dict[str, Any]) -> str:
    before, after = d["before"], d["after"]
    out = (f"under deletes ({d['deleted_runs']} finished runs deleted): agno_runs total, ours "
           f"{before['ours'][0]} -> {after['ours'][0]}")
    if "query_exporter" in before:
        qb, qa = before["query_exporter"][0], after["query_exporter"][0]
        out += (f", query-exporter {qb} -> {qa} (its counter went down: Prometheus reads a reset, so "
                f"increase() counts {qa} runs that never happened)")
    return out


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

    info = run(plan, log)
    results = figures(plan, info)
    print(table(results))
    print()
    print(per_size(info))
    print()
    print(deletes_line(info["deletes"]))
    m = info["machine"]
    print(f"\nmachine: {m['cores']} cores, {m['cpu']}, PostgreSQL {m['postgres']}, Python {m['python']}; "
          f"load average {m['load_at_start']} at start, {m['load_at_end']} at end; query-exporter: "
          f"{info['query_exporter']}; {time.perf_counter() - t0:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {**{name: r.as_json() for name, r in results.items()}, "_details": info}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
