"""The probe scheduler: firing on schedule, the overlap bound, misfires, failed starts, shutdown.

Runs are real agno runs on the simulated model, stored in a real Postgres, read back by the real
collector; only the pure scheduling tests use a fake runner. Intervals are fractions of a second.
Tests wait for the firings they need (a generous deadline) and bound counts by the time that really
passed, so a loaded machine makes them slower, never red.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import CollectorRegistry

from exporter.config import ConfigError, JobSpec, load_settings
from exporter.cron import _crontab_dow, cron_trigger
from exporter.probes.agents import (
    LlmTarget,
    RunnerFactory,
    ToolFailure,
    YFinancePrice,
    build_runner,
    choose_llm,
)
from exporter.probes.scheduler import make_trigger, planned_firings
from tests.helpers.sched_support import (
    FakeRunners,
    job,
    make_service,
    real_factory,
    sample,
    scheduler,
    stored,
    until,
)
from tests.helpers.scrape import Samples, scrape_text
from tests.helpers.support import DEADLINE, exporter_cmd, free_port

FAST = "Say hello."
SLOW = "Say hello slowly. [sim:ttft=1.0]"


def counted_runs(service: Any) -> float:
    return sum(v.total for v in service.store.series("agno_runs").values())


# --------------------------------------------------------------------------------- real runs


@pytest.mark.slow
def test_jobs_fire_on_schedule_and_runs_are_collected(db_url: str, sim_url: str) -> None:
    async def main() -> None:
        service = make_service(db_url)
        await service.start()
        sched = scheduler([job("alpha", FAST, 0.3), job("beta", FAST, 0.3, session="shared")],
                          real_factory(db_url, sim_url), service.registry)
        try:
            sched.start()
            started = time.monotonic()
            await until(lambda: all(sched.stats(name).fired >= 3 for name in sched.job_names))
            await sched.stop(timeout=DEADLINE)
            elapsed = time.monotonic() - started
            fired = {name: sched.stats(name).fired for name in sched.job_names}
            skipped = {name: sched.stats(name).skipped_overlap for name in sched.job_names}
            for name, n in fired.items():
                # Every 0.3 s: never more than one firing per run time that passed (a loaded machine
                # makes fewer, never more). The very first run may overlap the next firing (agno
                # creates its tables then), which is skipped and counted.
                assert n >= 3 and n + skipped[name] <= elapsed / 0.3 + 2, (name, n, skipped[name], elapsed)
                assert sched.stats(name).finished == n
            rows = stored(db_url)
            assert len(rows) == sum(fired.values())
            assert {r["status"] for r in rows} == {"COMPLETED"}
            await until(lambda: counted_runs(service) >= len(rows))
            s = Samples(await scrape_text(service.port))
        finally:
            await sched.stop()
            await service.stop()
        assert s.sum("agno_runs_total", name="AlphaAgent", status="COMPLETED") == fired["alpha"]
        assert s.sum("agno_runs_total", name="BetaAgent", status="COMPLETED") == fired["beta"]
        assert s.sum("agno_tokens_total", name="AlphaAgent") > 0
        for name, n in fired.items():
            assert s.sum("agno_exporter_scheduled_runs_fired_total", job=name) == n
            assert s.sum("agno_exporter_scheduled_runs_in_flight", job=name) == 0
            assert s.sum("agno_exporter_scheduled_runs_skipped_total", job=name, reason="overlap") == skipped[name]
            assert s.sum("agno_exporter_scheduled_runs_skipped_total", job=name, reason="misfire") == 0
        # session: shared -> one session for all of beta's runs; per_run -> one session per run
        assert s.sum("agno_sessions_total", name="BetaAgent") == 1
        assert s.sum("agno_sessions_total", name="AlphaAgent") == fired["alpha"]

    asyncio.run(main())


@pytest.mark.slow
def test_overlap_bound_skips_and_counts(db_url: str, sim_url: str) -> None:
    async def main() -> None:
        registry = CollectorRegistry()
        sched = scheduler([job("slow", SLOW, 0.1, max_in_flight=2)], real_factory(db_url, sim_url), registry)
        seen: list[float] = []

        def watched() -> bool:
            seen.append(sample(registry, "agno_exporter_scheduled_runs_in_flight", job="slow"))
            assert sched.in_flight("slow") <= 2
            return max(seen) == 2 and sched.stats("slow").skipped_overlap > 5

        sched.start()
        started = time.monotonic()
        try:
            await until(watched)  # fires every 0.1 s, each run takes more than 1 s
        finally:
            await sched.stop(timeout=DEADLINE)
        elapsed = time.monotonic() - started
        stats = sched.stats("slow")
        assert max(seen) == 2
        assert stats.skipped_overlap > 5
        assert sample(registry, "agno_exporter_scheduled_runs_skipped_total", job="slow", reason="overlap") == \
            stats.skipped_overlap
        # each run holds its slot for more than 1 s (ttft=1.0): at most two starts a second, plus the first two
        assert 2 <= stats.fired <= 2 * (elapsed + 1), (stats.fired, elapsed)
        rows = stored(db_url)
        assert len(rows) == stats.fired
        assert {r["status"] for r in rows} == {"COMPLETED"}

    asyncio.run(main())


@pytest.mark.slow
def test_failing_start_is_counted_and_other_jobs_keep_firing(db_url: str, sim_url: str) -> None:
    class Factory(RunnerFactory):
        def __call__(self, spec: JobSpec) -> Any:
            if spec.name == "unbuildable":
                raise RuntimeError("bad agent config")
            if spec.name == "no-db":  # agno refuses background runs without a database
                return build_runner(spec, None, self.llm)
            return super().__call__(spec)

    async def main() -> None:
        base = real_factory(db_url, sim_url)
        registry = CollectorRegistry()
        sched = scheduler([job("unbuildable"), job("no-db"), job("good")], Factory(base.db, base.llm), registry)
        sched.start()
        try:
            await until(lambda: all(sched.stats(name).fired >= 3 for name in sched.job_names))
        finally:
            await sched.stop(timeout=DEADLINE)
        for name in ("unbuildable", "no-db"):
            stats = sched.stats(name)
            assert stats.fired >= 3 and stats.failed == stats.fired, (name, stats)
            assert sample(registry, "agno_exporter_scheduled_runs_failed_total", job=name) == stats.failed
        good = sched.stats("good")
        assert good.fired >= 3 and good.failed == 0
        assert sample(registry, "agno_exporter_scheduled_runs_failed_total", job="good") == 0
        rows = stored(db_url)
        assert len(rows) == good.fired and {r["name"] for r in rows} == {"GoodAgent"}

    asyncio.run(main())


@pytest.mark.slow
def test_graceful_shutdown_waits_for_in_flight_runs(db_url: str, sim_url: str) -> None:
    async def main() -> None:
        jobs = [
            job("plain", SLOW, 0.2, max_in_flight=3),
            job("streamed", SLOW, 0.2, max_in_flight=2, agent={"stream": True}),
            job("team", "Ask the member to say hello. [sim:ttft=0.5]", 0.3,
                team={"name": "HelloTeam", "members": [{"name": "Member"}]}),
        ]
        sched = scheduler(jobs, real_factory(db_url, sim_url))
        sched.start()
        try:
            await until(lambda: all(sched.in_flight(n) >= 1 for n in sched.job_names) and sched.in_flight() >= 4)
        finally:
            t0 = time.monotonic()
            await sched.stop(timeout=DEADLINE)
            took = time.monotonic() - t0
        assert sched.in_flight() == 0
        assert took > 0.3  # it waited for the runs, it did not drop them
        rows = stored(db_url)
        fired = sum(sched.stats(n).fired for n in sched.job_names)
        top = [r for r in rows if r["parent_run_id"] is None]
        assert len(top) == fired
        assert {r["status"] for r in rows} == {"COMPLETED"}
        assert any(r["run_type"] == "team" for r in rows)
        assert any(r["parent_run_id"] for r in rows)  # the member's run
        # Firing stopped for good.
        await asyncio.sleep(0.5)
        assert sum(sched.stats(n).fired for n in sched.job_names) == fired

    asyncio.run(main())


@pytest.mark.slow
def test_run_all_serves_metrics_of_scheduled_runs(db_url: str) -> None:
    from exporter.commands.stack import run_all

    settings = load_settings(None, environ={}, overrides={
        "database": {"url": db_url}, "web": {"listen": "127.0.0.1:0"}, "collector": {"poll_interval": "100ms"},
        "scheduler": {"enabled": True, "llm": "simulated", "shutdown_timeout": "10s", "jobs": [
            {"name": "probe", "prompt": "Stock price of AAPL?", "interval": "0.3s",
             "agent": {"name": "ProbeAgent", "tools": ["calculator"]}}]},
    })

    async def main() -> int:
        async def until_counted() -> None:
            await until(lambda: len([r for r in stored(db_url) if r["status"] == "COMPLETED"]) >= 2, step=0.1)

        return await run_all(settings, until_counted)

    assert asyncio.run(main()) == 0
    rows = stored(db_url)
    assert len(rows) >= 2 and {r["status"] for r in rows} == {"COMPLETED"}


@pytest.mark.slow
def test_run_command_fires_an_hourly_probe_at_start(db_url: str, tmp_path: Path) -> None:
    """`agno-exporter run` as a user types it, with an `interval: 1h` job: the probe fires at start
    (not an hour later), its run is counted, and the log says when the job fires next."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "database": {"url": db_url}, "collector": {"poll_interval": "200ms"},
        "scheduler": {"llm": "simulated", "shutdown_timeout": "10s", "jobs": [
            {"name": "hourly", "prompt": "Say hello.", "interval": "1h", "agent": {"name": "HourlyProbe"}}]},
    }))
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "DATABASE_URL") and not k.startswith("AGNO_EXPORTER_")}
    proc = subprocess.Popen([*exporter_cmd(), "run", "-c", str(config), "--listen", f"127.0.0.1:{port}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        s = None
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    s = Samples(r.read().decode())
                if s.sum("agno_runs_total", name="HourlyProbe", status="COMPLETED") == 1:
                    break
            time.sleep(0.2)
        else:
            pytest.fail(f"the hourly probe's run was not counted (exit {proc.poll()})")
        assert s is not None and s.sum("agno_exporter_scheduled_runs_fired_total", job="hourly") == 1
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    line = next((ln for ln in err.splitlines() if "job hourly:" in ln), "")
    assert re.search(r"job hourly: agent HourlyProbe every 3600s, max 1 in flight; fires now \(fire_at_start\), "
                     r"next at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(in (59m \d+s|1h 0m)\)$", line), err[-3000:]


# ---------------------------------------------------------------------------- scheduling only


def test_misfire_is_skipped_and_a_stalled_loop_fires_once() -> None:
    """A run time missed by more than misfire_grace_time is skipped and counted; runs missed while
    the loop was blocked coalesce into one firing."""
    now = datetime.now(UTC)

    def trigger(spec: JobSpec) -> Any:
        if spec.name == "late":
            return DateTrigger(run_date=now - timedelta(seconds=10), timezone=UTC)
        return IntervalTrigger(seconds=spec.interval or 1, timezone=UTC)

    async def main() -> None:
        runners = FakeRunners()
        registry = CollectorRegistry()
        sched = scheduler([job("late", misfire_grace_time=1, fire_at_start=False),
                           job("steady", interval=0.1, misfire_grace_time=30)],
                          runners, registry, trigger_factory=trigger)
        sched.start()
        try:
            await until(lambda: sched.stats("steady").fired >= 2)
            before = sched.stats("steady").fired
            time.sleep(1.0)  # a stalled event loop: ten run times of "steady" pass
            blocked_at = time.monotonic()
            await until(lambda: sched.stats("steady").fired > before)  # the loop runs again
            await asyncio.sleep(0.3)
            after = sched.stats("steady").fired
            window = time.monotonic() - blocked_at
        finally:
            await sched.stop()
        assert runners.closed
        assert sched.stats("late").fired == 0 and sched.stats("late").skipped_misfire == 1
        assert sample(registry, "agno_exporter_scheduled_runs_skipped_total", job="late", reason="misfire") == 1
        # Coalesced, the ten missed run times fire once, then one firing per 0.1 s of the window at most;
        # without coalescing the ten would all fire on top of those (a slow machine makes fewer, not more).
        assert 1 <= after - before <= window / 0.1 + 2, (before, after, window)
        assert sched.stats("steady").skipped_misfire == 0

    asyncio.run(main())


def test_a_stopped_scheduler_does_not_fire() -> None:
    async def main() -> None:
        runners = FakeRunners()
        sched = scheduler([job("hourly", interval=3600)], runners)
        sched.start()
        await until(lambda: sched.stats("hourly").fired == 1)  # fire_at_start
        await sched.stop()
        await sched.fire("hourly")  # a late call after stop is ignored
        assert sched.stats("hourly").fired == 1
        assert sched.next_fire_time("hourly") is None

    asyncio.run(main())


T0 = datetime(2025, 3, 4, 12, 1, 30, tzinfo=UTC)


def test_first_firings_are_planned_from_the_injected_clock() -> None:
    hourly = job("hourly", interval=3600)
    assert hourly.fire_at_start  # the default: an hourly probe measures at once, not an hour later
    assert planned_firings(make_trigger(hourly, T0), True, T0) == (T0, T0 + timedelta(hours=1))
    assert planned_firings(make_trigger(hourly, T0), False, T0) == (T0 + timedelta(hours=1), T0 + timedelta(hours=2))
    five = job("five", interval=None, cron="*/5 * * * *")
    at_05 = datetime(2025, 3, 4, 12, 5, tzinfo=UTC)
    assert planned_firings(make_trigger(five, T0), True, T0) == (T0, at_05)
    assert planned_firings(make_trigger(five, T0), False, T0) == (at_05, at_05 + timedelta(minutes=5))
    spent = DateTrigger(run_date=T0 - timedelta(days=1), timezone=UTC)
    assert planned_firings(spent, True, T0) == (T0, None)


def test_jobs_fire_at_start_and_the_log_says_when_each_fires_next(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agno_exporter.scheduler")
    now = datetime.now(UTC).replace(microsecond=0)
    hour = timedelta(hours=1)

    async def main() -> None:
        runners = FakeRunners()
        jobs = [job("hourly", interval=3600), job("quiet", interval=3600, fire_at_start=False),
                job("yearly", interval=None, cron="0 0 1 1 *")]
        sched = scheduler(jobs, runners, wall_clock=lambda: now)
        sched.start()
        try:
            await until(lambda: sched.stats("hourly").fired == 1 and sched.stats("yearly").fired == 1, timeout=15)
            # The plan: each job's next firing, an hour (a year) from the start; "quiet" has not fired.
            assert sched.next_fire_time("hourly") == now + hour
            assert sched.next_fire_time("quiet") == now + hour
            assert sched.next_fire_time("yearly") == datetime(now.year + 1, 1, 1, tzinfo=UTC)
            assert sched.stats("quiet").fired == 0
        finally:
            await sched.stop()

    asyncio.run(main())
    said = [r.getMessage() for r in caplog.records if r.name == "agno_exporter.scheduler"]
    next_hour = f"{now + timedelta(hours=1):%Y-%m-%d %H:%M:%S} UTC (in 1h 0m)"
    assert (f"job hourly: agent HourlyAgent every 3600s, max 1 in flight; fires now (fire_at_start), "
            f"next at {next_hour}") in said, said
    assert f"job quiet: agent QuietAgent every 3600s, max 1 in flight; first firing at {next_hour}" in said, said
    assert any(m.startswith("job yearly: agent YearlyAgent cron '0 0 1 1 *' (UTC), max 1 in flight; fires now "
                            f"(fire_at_start), next at {now.year + 1}-01-01 00:00:00 UTC") for m in said), said
    assert f"job hourly: fired; next firing at {now + hour:%Y-%m-%d %H:%M:%S} UTC" in " ".join(said), said


def test_fire_at_start_is_configured_per_job_and_globally() -> None:
    jobs = [{"name": "a", "prompt": "p", "interval": "1h", "agent": {"name": "A"}},
            {"name": "b", "prompt": "p", "cron": "0 * * * *", "agent": {"name": "B"}, "fire_at_start": True}]
    default = load_settings(None, environ={}, overrides={"scheduler": {"jobs": jobs}}).scheduler
    assert default.fire_at_start and [j.fire_at_start for j in default.jobs] == [True, True]
    off = load_settings(None, environ={}, overrides={"scheduler": {"fire_at_start": False, "jobs": jobs}}).scheduler
    assert [j.fire_at_start for j in off.jobs] == [False, True]  # the job's own setting wins
    env = load_settings(None, environ={"AGNO_EXPORTER_SCHEDULER__FIRE_AT_START": "false"}).scheduler
    assert [j.fire_at_start for j in env.jobs] == [False]  # the default seed job follows the scheduler
    with pytest.raises(ConfigError, match=r"scheduler\.jobs\.0\.fire_at_start: Input should be a valid boolean"):
        load_settings(None, environ={}, overrides={"scheduler": {"jobs": [{**jobs[0], "fire_at_start": "soon"}]}})


def test_cron_uses_crontab_weekdays() -> None:
    assert _crontab_dow("0") == "sun" and _crontab_dow("7") == "sun"
    assert _crontab_dow("1-5") == "mon,tue,wed,thu,fri"
    assert _crontab_dow("0-6") == "*" and _crontab_dow("*") == "*"
    assert _crontab_dow("*/2") == "sun,tue,thu,sat"
    assert _crontab_dow("sat,sun") == "sun,sat"
    # "0 9 * * 0" = Sundays at 09:00 UTC (APScheduler 3's own from_crontab would say Monday).
    trigger = cron_trigger("0 9 * * 0")
    nxt = trigger.get_next_fire_time(None, datetime(2024, 1, 1, tzinfo=UTC))  # a Monday
    assert nxt == datetime(2024, 1, 7, 9, 0, tzinfo=UTC)


# ------------------------------------------------------------------------------------- agents


def test_llm_choice() -> None:
    assert choose_llm("auto", (), {}) == "simulated"
    assert choose_llm("auto", (), {"OPENAI_API_KEY": "sk-x"}) == "openai"
    assert choose_llm("simulated", (), {"OPENAI_API_KEY": "sk-x"}) == "simulated"
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        choose_llm("openai", (job("a"),), {})
    keyed = job("a", agent={"model": {"id": "gpt-4o-mini", "api_key": "sk-own"}})
    assert choose_llm("openai", (keyed,), {}) == "openai"


def test_job_model_overrides_the_target() -> None:
    spec = job("a", agent={"model": {"id": "sim-small", "base_url": "http://127.0.0.1:1/v1", "api_key": "k"}})
    runner = build_runner(spec, None, LlmTarget.simulated("http://127.0.0.1:2/v1"))
    assert runner.model is not None
    assert (runner.model.id, runner.model.base_url, runner.model.api_key) == \
        ("sim-small", "http://127.0.0.1:1/v1", "k")  # type: ignore[attr-defined]
    plain = build_runner(job("b", agent={"tools": ["sleep", "fail", "calculator"]}), None,
                         LlmTarget.simulated("http://127.0.0.1:2/v1"))
    assert plain.model.base_url == "http://127.0.0.1:2/v1"  # type: ignore[union-attr]


def test_yfinance_fails_fast_and_loudly_offline() -> None:
    async def main() -> None:
        tool = YFinancePrice(timeout=0.3)
        release = threading.Event()

        def hang(symbol: str) -> str:  # a lookup that never answers (until the test ends)
            release.wait(DEADLINE)
            return "1.0"

        tool._inner.get_current_stock_price = hang  # type: ignore[method-assign]
        try:
            with pytest.raises(ToolFailure, match="did not answer"):
                # the tool's own 0.3 s timeout answers; were it broken, this would wait on the hang
                await asyncio.wait_for(tool.get_current_stock_price("AAPL"), DEADLINE / 2)
        finally:
            release.set()
        tool._inner.get_current_stock_price = lambda symbol: f"Error fetching current price for {symbol}: DNS"  # type: ignore[method-assign]
        with pytest.raises(ToolFailure, match="Error fetching"):
            await tool.get_current_stock_price("AAPL")

    asyncio.run(main())
