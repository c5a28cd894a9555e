"""`agno-exporter demo` as a user runs it: a subprocess, no database URL, no API key, no network.

/metrics must show tokens, run durations and TTFT; SIGTERM stops it cleanly. The README promises them
within 30 s of start: the time is printed (about 10 s on an idle 2-core machine); the test waits up
to DEADLINE, so a loaded machine makes it slower, not red.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

import psycopg
import pytest

from exporter.commands.demo import Progress
from exporter.commands.service import metric_value
from exporter.commands.stack import start_stack
from exporter.config import load_settings
from exporter.probes.simplan import SimSettings
from tests.helpers.paths import ROOT
from tests.helpers.sched_support import until
from tests.helpers.scrape import Samples
from tests.helpers.support import exporter_cmd, free_port
from tests.helpers.truth import run_truth, truth_tokens

DEADLINE = 120.0  # the demo starts a Postgres, agno and its first scheduled runs: generous


def scrape(port: int) -> Samples | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return Samples(r.read().decode())
    except OSError:
        return None


@pytest.mark.slow
def test_demo_shows_metrics_and_stops_on_sigterm() -> None:
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="aedemo-")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "DATABASE_URL") and not k.startswith("AGNO_EXPORTER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    started = time.monotonic()
    proc = subprocess.Popen(
        [*exporter_cmd(), "demo", "--duration", "40", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        s = None
        while time.monotonic() - started < DEADLINE:
            assert proc.poll() is None, proc.communicate()
            s = scrape(port)
            if s is not None and all(s.sum(m) > 0 for m in (
                    "agno_tokens_total", "agno_run_duration_seconds_count",
                    "agno_run_time_to_first_token_seconds_count")):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"no tokens, durations and TTFT on /metrics within {DEADLINE:g}s")
        assert s is not None
        assert s.sum("agno_exporter_scheduled_runs_fired_total") > 0  # the scheduler's own metrics
        print(f"metrics complete after {time.monotonic() - started:.1f}s")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        shutil.rmtree(data_dir, ignore_errors=True)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert f"http://127.0.0.1:{port}/metrics" in out
    assert 'psql "postgresql://' in out
    assert "this process: fired " in out and "| in total: runs " in out  # at least one progress line
    assert "skipped: overlap = " in out  # the banner says what the reasons mean


@pytest.mark.slow
def test_progress_line_separates_this_process_from_the_totals(db_url: str) -> None:
    """Two processes in turn on one database (as two demos on one --data-dir): the second one's
    progress line says what it fired, skipped (and why) and counted, apart from the totals, which
    include the first one's run; every number is the scheduler's, the collector's or agno's own."""
    settings = load_settings(None, environ={}, overrides={
        "database": {"url": db_url}, "web": {"listen": "127.0.0.1:0"}, "collector": {"poll_interval": "100ms"},
        "scheduler": {"enabled": True, "llm": "simulated", "shutdown_timeout": "10s", "jobs": [
            {"name": "probe", "prompt": "Stock price of AAPL? [sim:ttft=1.5]", "interval": "1h",
             "agent": {"name": "ProbeAgent", "tools": ["calculator"]}}]},
    })

    async def one_process(overlap: bool) -> Progress:
        stack = await start_stack(settings, sim_settings=SimSettings(ttft=0.05, per_token=0.001))
        try:
            sched = stack.scheduler
            assert sched is not None
            await until(lambda: sched.in_flight("probe") == 1, timeout=20)  # fired at start, still running
            if overlap:
                await sched.fire("probe")  # at max_in_flight: skipped, counted as overlap
            await sched.stop()  # firing stops; the run in flight finishes first
            await until(lambda: round(metric_value(stack.service.metrics.runs_collected)) == 1, timeout=20)
            return Progress.of(stack, 12.0)
        finally:
            await stack.stop()

    first = asyncio.run(one_process(overlap=False))
    second = asyncio.run(one_process(overlap=True))
    agno = asyncio.run(agno_truth(db_url))
    assert len(agno) == 2
    tokens = sum(truth_tokens([r]) for r in agno)
    tool_calls = sum(len(r["tools"]) for r in agno)
    assert first.runs == 1 and second.runs == 2
    assert second.line() == (
        "[   12s] this process: fired 1 (0 failed to start), in flight 0, skipped 1 (overlap 1, misfire 0), "
        f"runs counted 1 | in total: runs 2 (ERROR 0), tokens {tokens:,}, tool calls {tool_calls} (failed 0)")


async def agno_truth(db_url: str) -> list[dict[str, Any]]:
    """What agno's own API says about every run stored (agno_runs rows, read through aget_run_output)."""
    from agno.agent import Agent
    from agno.db.postgres import PostgresDb

    from tests.helpers.support import sqlalchemy_url

    db = PostgresDb(db_url=sqlalchemy_url(db_url))
    agent = Agent(name="ProbeAgent", db=db, telemetry=False)
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT run_id, session_id FROM ai.agno_runs ORDER BY created_at").fetchall()
    try:
        return [run_truth(await agent.aget_run_output(run_id=run_id, session_id=session_id))
                for run_id, session_id in rows]
    finally:
        db.db_engine.dispose()
