"""``agno-exporter demo``: the whole product on a fresh machine, in one process, in seconds.

Why: a newcomer with no Docker, no network and no API key should see real agno runs turn into
Prometheus metrics before deciding anything. So the demo brings its own pieces: the embedded
PostgreSQL from pip (unless a database URL is given), the simulated model (unless
``OPENAI_API_KEY`` is set), and a handful of probe jobs at short intervals that exercise every
family of metrics: the seed's agent with its yfinance tool, a streamed agent (TTFT), another model
id, a team with a member, a flaky agent (tool errors, HTTP 429/500 from a second simulated endpoint
that fails about a third of its requests), and a slow agent that overlaps itself (skipped firings).
It prints where to look (/metrics, a psql URL) and a progress line every few seconds: what this
process fired, skipped (and why) and counted, apart from the totals counted so far.

The demo's jobs replace any ``scheduler.jobs`` of a config file; agno's own log lines are hidden
(the demo's errors are on purpose) unless ``log.level`` is ``debug``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TextIO

from exporter.commands.common import settings_from_args, setup_logging
from exporter.commands.service import metric_value
from exporter.commands.stack import Stack, metrics_url, start_stack
from exporter.config import Settings
from exporter.db import redact
from exporter.embedded import EmbeddedPostgres, EmbeddedUnavailable, start_embedded
from exporter.probes.agents import choose_llm, quiet_agno_logs
from exporter.probes.scheduler import JobStats
from exporter.probes.simllm import SimServer, start_server
from exporter.probes.simplan import SimSettings

log = logging.getLogger("agno_exporter")

PROGRESS_EVERY = 5.0
POLL_INTERVAL = "1s"
SHUTDOWN_TIMEOUT = "5s"
# The flaky job's endpoint: a simulated model failing about a third of its requests.
FLAKY = SimSettings(failure_rate=0.35, failure_kinds=("429", "500"))


def demo_jobs(simulated: bool, flaky_url: str) -> list[dict[str, Any]]:
    """The demo's probes, as ``scheduler.jobs`` entries (validated like a config file's)."""
    slow = " [sim:ttft=3]" if simulated else ""  # a directive of the simulated model
    return [
        {"name": "seed", "prompt": "What is the stock price of AAPL?", "interval": "3s",
         "agent": {"name": "BackgroundMetricsAgent", "model": {"id": "gpt-4o-mini"}, "tools": ["yfinance"]}},
        {"name": "streamed", "prompt": "Give a two-sentence market summary for MSFT.", "interval": "3s",
         "agent": {"name": "StreamingAnalyst", "model": {"id": "gpt-4o-mini"}, "stream": True}},
        {"name": "other-model", "prompt": "Summarise the outlook for semiconductor stocks.", "interval": "4s",
         "agent": {"name": "OutlookAgent", "model": {"id": "gpt-4.1-nano"}}},
        {"name": "team", "prompt": "Ask StockAgent to add up the prices of NVDA and AMD.", "interval": "5s",
         "team": {"name": "MarketTeam", "model": {"id": "gpt-4o-mini"},
                  "members": [{"name": "StockAgent", "tools": ["calculator"]}]}},
        {"name": "flaky", "prompt": "Use the fail tool, then explain what happened.", "interval": "4s",
         "agent": {"name": "FlakyAgent", "tools": ["fail"],
                   "model": {"id": "sim-small", "base_url": flaky_url, "api_key": "simulated"}}},
        {"name": "slow", "prompt": "Sleep for a second, then say how long you slept." + slow, "interval": "2s",
         "max_in_flight": 1, "agent": {"name": "SlowAgent", "model": {"id": "gpt-4o-mini"}, "tools": ["sleep"]}},
    ]


def _quiet_logs() -> None:
    """Keep the terminal for the progress lines: the demo's errors are on purpose."""
    quiet_agno_logs(logging.CRITICAL + 1)
    for name, level in (("apscheduler", logging.WARNING),
                        ("httpx", logging.WARNING), ("httpx2", logging.WARNING), ("yfinance", logging.ERROR),
                        ("agno_exporter.collector", logging.WARNING)):
        logging.getLogger(name).setLevel(level)
    # platformdirs (imported by yfinance) warns in containers without XDG_RUNTIME_DIR.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")


def _settings(args: argparse.Namespace, extra: dict[str, dict[str, Any]]) -> Settings:
    return settings_from_args(args, extra)  # the CLI's own flags -> overrides logic


@dataclass(frozen=True)
class Progress:
    """One progress line's numbers: what this process did, apart from what was counted in total.

    The demo's database and state outlive the process (``--data-dir``), so the totals include the
    runs of earlier demos; the scheduler's numbers and ``runs_counted_here`` are this process's own.
    """

    elapsed: float
    fired: int  # firings that tried to start a run (failed starts included)
    failed: int  # of those, runs that could not start
    in_flight: int
    skipped_overlap: int  # firings skipped: max_in_flight runs of the job still in flight
    skipped_misfire: int  # firings skipped: fired later than misfire_grace_time
    runs_counted_here: int  # agno_exporter_runs_collected_total
    runs: int  # agno_runs_total, all runs counted so far
    errors: int
    tokens: int
    tool_calls: int
    tool_errors: int
    scheduler: bool = True

    @classmethod
    def of(cls, stack: Stack, elapsed: float) -> Progress:
        store = stack.service.store
        runs = store.series("agno_runs")
        t = stack.scheduler.totals() if stack.scheduler is not None else JobStats()
        return cls(
            elapsed=elapsed, fired=t.fired, failed=t.failed,
            in_flight=stack.scheduler.in_flight() if stack.scheduler is not None else 0,
            skipped_overlap=t.skipped_overlap, skipped_misfire=t.skipped_misfire,
            runs_counted_here=round(metric_value(stack.service.metrics.runs_collected)),
            runs=round(sum(v.total for v in runs.values())),
            errors=round(sum(v.total for k, v in runs.items() if k[2] == "ERROR")),
            tokens=round(sum(v.total for v in store.series("agno_tokens").values())),
            tool_calls=round(sum(v.total for v in store.series("agno_tool_calls").values())),
            tool_errors=round(sum(v.total for v in store.series("agno_tool_call_errors").values())),
            scheduler=stack.scheduler is not None,
        )

    def line(self) -> str:
        here = f"runs counted {self.runs_counted_here}"
        if self.scheduler:
            skipped = self.skipped_overlap + self.skipped_misfire
            here = (f"fired {self.fired} ({self.failed} failed to start), in flight {self.in_flight}, "
                    f"skipped {skipped} (overlap {self.skipped_overlap}, misfire {self.skipped_misfire}), " + here)
        return (f"[{self.elapsed:5.0f}s] this process: {here} | in total: runs {self.runs} (ERROR {self.errors}), "
                f"tokens {self.tokens:,}, tool calls {self.tool_calls} (failed {self.tool_errors})")


def _banner(out: TextIO, settings: Settings, stack: Stack, embedded: EmbeddedPostgres | None,
            duration: float | None) -> None:
    url = settings.database.url.get_secret_value() if settings.database.url else ""
    lines = ["", "agno-exporter demo", f"  metrics   {metrics_url(settings, stack.service.port)}"]
    if embedded is not None:
        lines.append(f'  database  psql "{url}"   (embedded PostgreSQL, data in {embedded.datadir})')
    else:
        lines.append(f"  database  {redact(url)}")
    if stack.llm is not None:
        lines.append(f"  model     {stack.llm.describe()}")
    if stack.scheduler is not None:
        jobs = ", ".join(f"{j.name} ({j.interval:g}s)" for j in settings.scheduler.jobs if j.interval)
        lines.append(f"  jobs      {jobs}")
    lines.append("  runs      agno writes them to ai.agno_runs; the collector turns them into metrics")
    if stack.scheduler is not None:
        lines.append("  progress  this process: what it fired and counted | in total: every run counted in this "
                     "database, earlier demos included")
        lines.append("            counted: agno's runs, a team's member runs too (each is a run of its own), so"
                     " more than fired")
        lines.append("            skipped: overlap = the job's last run still in flight (max_in_flight), "
                     "misfire = fired too late (misfire_grace_time)")
    lines.append("  stop      Ctrl-C" + (f", or wait {duration:g}s" if duration else ""))
    print("\n".join(lines) + "\n", file=out, flush=True)


async def run_demo(args: argparse.Namespace, until_signal: Callable[[], Awaitable[None]]) -> int:
    # Listen for SIGINT/SIGTERM from the start: starting PostgreSQL takes a few seconds.
    stopped = asyncio.ensure_future(until_signal())
    await asyncio.sleep(0)
    out = sys.stdout
    embedded: EmbeddedPostgres | None = None
    flaky: SimServer | None = None
    stack: Stack | None = None
    try:
        settings = _settings(args, {})
        setup_logging(settings)
        if settings.log.level != "debug":
            _quiet_logs()
        db_url: dict[str, Any] = {}
        if settings.database.url is None:
            print(f"starting the embedded PostgreSQL in {args.data_dir} ...", file=out, flush=True)
            try:
                embedded = await asyncio.to_thread(start_embedded, args.data_dir)
            except EmbeddedUnavailable as exc:
                print(f"agno-exporter demo: {exc}", file=sys.stderr)
                return 2
            except OSError as exc:  # the data directory cannot be made or written
                print(f"agno-exporter demo: --data-dir {args.data_dir}: {exc.strerror or exc}", file=sys.stderr)
                return 2
            db_url = {"url": embedded.url}
        flaky = await start_server(FLAKY, "127.0.0.1", 0)
        simulated = choose_llm(settings.scheduler.llm) == "simulated"
        settings = _settings(args, {
            "database": db_url,
            "collector": {"poll_interval": POLL_INTERVAL},
            "scheduler": {"enabled": True, "shutdown_timeout": SHUTDOWN_TIMEOUT,
                          "jobs": demo_jobs(simulated, flaky.url)},
        })
        stack = await start_stack(settings, sim_settings=SimSettings(ttft=0.3, per_token=0.01))
        _banner(out, settings, stack, embedded, args.duration)
        started = time.monotonic()
        deadline = None if args.duration is None else started + args.duration
        while not stopped.done():
            wait = PROGRESS_EVERY if deadline is None else min(PROGRESS_EVERY, deadline - time.monotonic())
            if wait <= 0:
                break
            await asyncio.wait({stopped}, timeout=wait)
            print(Progress.of(stack, time.monotonic() - started).line(), file=out, flush=True)
        print("stopping ...", file=out, flush=True)
        return 0
    finally:
        stopped.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopped
        try:
            if stack is not None:
                await stack.stop()
        finally:
            if flaky is not None:
                await flaky.close()
            if embedded is not None:
                await asyncio.to_thread(embedded.stop)

