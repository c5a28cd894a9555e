"""Scheduled probes: APScheduler jobs that fire ``agent.arun(prompt, background=True)``.

Why: like blackbox_exporter for HTTP, periodic synthetic runs of configured agents measure the
model provider's latency, TTFT and errors around the clock, even when the app is idle. The probes
go through agno exactly as an app does, so the collector reads them back from Postgres like any
other run; the scheduler never reports run metrics itself.

Rules this module keeps:

* A firing never waits for its run: it starts a task of ours and returns. For a plain job that task
  calls ``arun(background=True)`` (agno returns at once with PENDING and runs in a task of its own).
  A ``stream: true`` job cannot use ``background=True`` (agno needs AgentOS/fastapi for that), so
  our task consumes ``arun(stream=True)`` itself; agno persists that run the same way.
* Overlap bound: a run is *in flight* from its firing until agno has stored a final status
  (watched on the run object agno updates, then confirmed with ``aget_run_output``). A firing
  that finds ``max_in_flight`` runs of its job in flight is skipped and counted.
* A start that fails (the agent cannot be built, ``arun`` raises) is counted and logged; the job
  keeps its schedule and the other jobs are untouched.
* Shutdown stops firing, gives in-flight runs ``shutdown_timeout`` (agno's
  ``await_background_runs``), asks agno to cancel what is left, then closes the model clients.
* A job with ``fire_at_start`` (the default) fires once as the scheduler starts, then on its
  schedule, so an ``interval: 1h`` probe measures the provider at once instead of an hour later.
  The start log says, per job, when it fires first and next; each firing logs (debug) the next one.

Cron expressions follow crontab's day-of-week numbering (0 or 7 = Sunday), not APScheduler 3's
(0 = Monday); schedules are evaluated in UTC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from agno.run.background import await_background_runs
from agno.run.base import RunStatus
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import CollectorRegistry, Counter, Gauge

from exporter.config import ConfigError, JobSpec, Settings
from exporter.cron import cron_trigger
from exporter.probes.agents import LlmTarget, Runner, RunnerFactory, agno_db

log = logging.getLogger("agno_exporter.scheduler")

FINAL = frozenset({RunStatus.completed, RunStatus.error, RunStatus.cancelled, RunStatus.paused})
# After asking agno to cancel the runs left at shutdown, how long it gets to store CANCELLED.
CANCEL_GRACE = 2.0


class RunnerSource(Protocol):
    """Builds a job's agent or team (see :class:`~exporter.probes.agents.RunnerFactory`)."""

    def __call__(self, job: JobSpec) -> Runner: ...

    async def aclose(self) -> None: ...


# ------------------------------------------------------------------------------------- triggers

def planned_firings(trigger: BaseTrigger, fire_at_start: bool,
                    now: datetime) -> tuple[datetime | None, datetime | None]:
    """The first two firing times of a job started at ``now`` (None: the trigger never fires).

    With ``fire_at_start`` the first is ``now`` and the second what the trigger gives after it,
    as APScheduler computes it after that firing; otherwise both come from the trigger. Pure:
    what the start log reports and what the scheduler is given are the same values.
    """
    first = now if fire_at_start else trigger.get_next_fire_time(None, now)
    second = None if first is None else trigger.get_next_fire_time(first, first)
    return first, second


def _when(at: datetime | None, now: datetime) -> str:
    """``2025-01-01 12:00:00 UTC (in 59s)`` for the log."""
    if at is None:
        return "never (the schedule has no time left)"
    left = max(0, round((at - now).total_seconds()))
    h, rest = divmod(left, 3600)
    m, sec = divmod(rest, 60)
    span = f"{h}h {m}m" if h else f"{m}m {sec}s" if m else f"{sec}s"
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC (in {span})"


def make_trigger(job: JobSpec, now: datetime | None = None) -> BaseTrigger:
    """The job's schedule, counted from ``now`` (default: the real time, as APScheduler does)."""
    jitter = job.jitter or None
    if job.interval is not None:
        start = None if now is None else now + timedelta(seconds=job.interval)
        return IntervalTrigger(seconds=job.interval, start_date=start, jitter=jitter, timezone=UTC)
    assert job.cron is not None  # JobSpec guarantees one of the two
    return cron_trigger(job.cron, jitter)


# -------------------------------------------------------------------------------------- metrics


class SchedulerMetrics:
    """The scheduler's self-metrics, on the registry it is given."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.fired = Counter("agno_exporter_scheduled_runs_fired",
                             "Scheduled firings that tried to start a run (failed starts included).",
                             ["job"], registry=r)
        self.failed = Counter("agno_exporter_scheduled_runs_failed",
                              "Scheduled runs that failed to start (agent not buildable, arun raised).",
                              ["job"], registry=r)
        self.skipped = Counter("agno_exporter_scheduled_runs_skipped",
                               "Scheduled firings skipped: overlap (max_in_flight runs of the job in "
                               "flight) or misfire (fired later than misfire_grace_time).",
                               ["job", "reason"], registry=r)
        self.in_flight = Gauge("agno_exporter_scheduled_runs_in_flight",
                               "Runs fired by the scheduler whose final status agno has not stored yet.",
                               ["job"], registry=r)

    def init_job(self, job: str) -> None:
        # Series exist (at 0) from the start, so rate() and alerts see them before the first event.
        self.fired.labels(job)
        self.failed.labels(job)
        for reason in ("overlap", "misfire"):
            self.skipped.labels(job, reason)
        self.in_flight.labels(job).set(0)


@dataclass
class JobStats:
    """Plain counts per job, for progress lines and tests."""

    fired: int = 0
    failed: int = 0
    skipped_overlap: int = 0
    skipped_misfire: int = 0
    finished: int = 0  # runs whose final status agno stored (seen by our watcher)


@dataclass
class _Job:
    spec: JobSpec
    stats: JobStats = field(default_factory=JobStats)
    runner: Runner | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    run_ids: dict[asyncio.Task[None], str] = field(default_factory=dict)

    @property
    def stream(self) -> bool:
        return self.spec.agent is not None and self.spec.agent.stream


# ------------------------------------------------------------------------------------ scheduler


class ProbeScheduler:
    """One APScheduler job per :class:`JobSpec`; see the module docstring for the rules."""

    def __init__(
        self,
        jobs: Sequence[JobSpec],
        runners: RunnerSource,
        registry: CollectorRegistry,
        *,
        shutdown_timeout: float = 30.0,
        trigger_factory: Callable[[JobSpec], BaseTrigger] | None = None,
        watch_interval: float = 0.1,
        run_timeout: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        active: Callable[[], bool] = lambda: True,
    ) -> None:
        self._jobs = {spec.name: _Job(spec) for spec in jobs}
        self._active = active  # with ha.enabled, only the leader replica fires
        self._runners = runners
        self.metrics = SchedulerMetrics(registry)
        self.shutdown_timeout = shutdown_timeout
        self._trigger_factory = trigger_factory
        self._watch_interval = watch_interval
        # A run whose status never becomes final (agno issue #4174) stops counting after this long,
        # so one stuck run cannot stop its job for good.
        self._run_timeout = run_timeout
        self._clock = clock
        self._wall_clock = wall_clock  # schedules are in UTC wall time; tests pass their own
        self._aps = AsyncIOScheduler(timezone=UTC)
        self._aps.add_listener(self._on_aps_event, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        self._stopping = False
        self._closed = False
        for name in self._jobs:
            self.metrics.init_job(name)

    @classmethod
    def from_settings(cls, settings: Settings, llm: LlmTarget, registry: CollectorRegistry,
                      **kwargs: Any) -> ProbeScheduler:
        """Jobs of ``settings.scheduler``, persisting into the database and tables the collector reads."""
        if settings.database.url is None:
            raise ConfigError("database.url: the scheduler needs agno's database")
        db = agno_db(settings.database.url.get_secret_value(), settings.database.schema_name,
                     settings.database.session_table, settings.database.runs_table)
        kwargs.setdefault("shutdown_timeout", settings.scheduler.shutdown_timeout)
        return cls(settings.scheduler.jobs, RunnerFactory(db, llm), registry, **kwargs)

    # --- reading

    @property
    def job_names(self) -> list[str]:
        return list(self._jobs)

    def stats(self, job: str) -> JobStats:
        return self._jobs[job].stats

    def totals(self) -> JobStats:
        out = JobStats()
        for job in self._jobs.values():
            for name in ("fired", "failed", "skipped_overlap", "skipped_misfire", "finished"):
                setattr(out, name, getattr(out, name) + getattr(job.stats, name))
        return out

    def in_flight(self, job: str | None = None) -> int:
        jobs = [self._jobs[job]] if job is not None else list(self._jobs.values())
        return sum(len(j.tasks) for j in jobs)

    # --- lifecycle

    def start(self) -> None:
        """Schedule every job; call from the running event loop."""
        now = self._wall_clock()
        plans: dict[str, tuple[datetime | None, datetime | None]] = {}
        for name, job in self._jobs.items():
            spec = job.spec
            trigger = self._trigger_factory(spec) if self._trigger_factory else make_trigger(spec, now)
            first, second = planned_firings(trigger, spec.fire_at_start, now)
            plans[name] = (first, second)
            self._aps.add_job(
                self.fire, trigger, args=(name,), id=name, name=f"probe {name}",
                coalesce=True, max_instances=1,
                # APScheduler 3 takes whole seconds only.
                misfire_grace_time=max(1, math.ceil(spec.misfire_grace_time)),
                next_run_time=first,  # None: added paused, as APScheduler does for a spent trigger
            )
        self._aps.start()
        for name, (first, second) in plans.items():
            spec = self._jobs[name].spec
            what = f"team {spec.team.name}" if spec.team else f"agent {spec.agent.name if spec.agent else '?'}"
            every = f"every {spec.interval:g}s" if spec.interval is not None else f"cron '{spec.cron}' (UTC)"
            jitter = f" (jitter up to {spec.jitter:g}s)" if spec.jitter else ""
            if spec.fire_at_start and first is not None:
                when = f"fires now (fire_at_start), next at {_when(second, now)}"
            else:
                when = f"first firing at {_when(first, now)}"
            log.info("job %s: %s %s%s, max %d in flight; %s", name, what, every, jitter, spec.max_in_flight, when)

    def next_fire_time(self, job: str) -> datetime | None:
        """When APScheduler will fire ``job`` next (None: not scheduled, or stopped)."""
        scheduled = self._aps.get_job(job) if self._aps.running else None
        return scheduled.next_run_time if scheduled is not None else None

    async def stop(self, timeout: float | None = None) -> None:
        """Stop firing, wait up to ``timeout`` (default ``shutdown_timeout``) for in-flight runs,
        cancel the rest, close the model clients."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        if self._aps.running:
            self._aps.shutdown(wait=False)
            await asyncio.sleep(0)  # AsyncIOScheduler shuts down on the loop's next turn
        timeout = self.shutdown_timeout if timeout is None else timeout
        deadline = self._clock() + timeout
        tasks = [t for job in self._jobs.values() for t in job.tasks]
        if tasks:
            log.info("waiting up to %gs for %d scheduled run(s) in flight", timeout, len(tasks))
            await asyncio.wait(tasks, timeout=timeout)
        # agno's own background tasks finish their bookkeeping after the final status is stored.
        await await_background_runs(timeout=max(0.0, deadline - self._clock()))
        left = [(job, t) for job in self._jobs.values() for t in job.tasks if not t.done()]
        if left:
            log.warning("%d scheduled run(s) still in flight after %gs: cancelling them", len(left), timeout)
            for job, task in left:
                run_id = job.run_ids.get(task)
                if run_id is not None and job.runner is not None:
                    with contextlib.suppress(Exception):
                        await job.runner.acancel_run(run_id)
            await await_background_runs(timeout=CANCEL_GRACE)
            for _, task in left:
                task.cancel()
            await asyncio.gather(*(t for _, t in left), return_exceptions=True)
        await self._runners.aclose()

    # --- firing

    async def fire(self, name: str) -> None:
        """One firing of job ``name`` (what APScheduler calls); returns at once."""
        job = self._jobs[name]
        if self._stopping:
            return
        if not self._active():
            self.metrics.skipped.labels(name, "standby").inc()
            return
        if len(job.tasks) >= job.spec.max_in_flight:
            job.stats.skipped_overlap += 1
            self.metrics.skipped.labels(name, "overlap").inc()
            log.debug("job %s: %d run(s) still in flight, firing skipped; next firing at %s", name, len(job.tasks),
                      _when(self.next_fire_time(name), self._wall_clock()))
            return
        job.stats.fired += 1
        self.metrics.fired.labels(name).inc()
        task = asyncio.create_task(self._run(job), name=f"probe:{name}")
        job.tasks.add(task)
        self.metrics.in_flight.labels(name).set(len(job.tasks))
        task.add_done_callback(lambda t: self._done(job, t))
        # APScheduler moved the job's next run time before it called us.
        log.debug("job %s: fired; next firing at %s", name, _when(self.next_fire_time(name), self._wall_clock()))

    def _done(self, job: _Job, task: asyncio.Task[None]) -> None:
        job.tasks.discard(task)
        job.run_ids.pop(task, None)
        self.metrics.in_flight.labels(job.spec.name).set(len(job.tasks))
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("job %s: run watcher crashed", job.spec.name, exc_info=exc)

    def _failed(self, job: _Job, exc: BaseException) -> None:
        job.stats.failed += 1
        self.metrics.failed.labels(job.spec.name).inc()
        log.warning("job %s: the run did not start: %s: %s", job.spec.name, type(exc).__name__, exc)

    def _on_aps_event(self, event: JobEvent) -> None:
        job = self._jobs.get(event.job_id)
        if job is None:
            return
        if event.code == EVENT_JOB_MISSED:
            job.stats.skipped_misfire += 1
            self.metrics.skipped.labels(event.job_id, "misfire").inc()
        else:  # max_instances: fire() itself never waits, so this only happens on a starved loop
            job.stats.skipped_overlap += 1
            self.metrics.skipped.labels(event.job_id, "overlap").inc()

    async def _run(self, job: _Job) -> None:
        spec = job.spec
        session_id = f"agno-exporter-probe:{spec.name}" if spec.session == "shared" else str(uuid.uuid4())
        task = asyncio.current_task()
        try:
            if job.runner is None:
                job.runner = self._runners(spec)
            runner = job.runner
            if job.stream:
                run_id = await self._consume_stream(job, runner, session_id)
                if run_id is None:
                    return
                pending: Any = None
            else:
                pending = await runner.arun(spec.prompt, background=True, session_id=session_id,
                                            user_id=spec.user_id)
                run_id = pending.run_id
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(job, exc)
            return
        if task is not None:
            job.run_ids[task] = run_id
        if await self._until_stored(job, runner, run_id, session_id, pending):
            job.stats.finished += 1

    async def _consume_stream(self, job: _Job, runner: Runner, session_id: str) -> str | None:
        """Drive a streamed run to its end; None when it failed before its first event."""
        run_id: str | None = None
        task = asyncio.current_task()
        try:
            stream: Any = runner.arun(job.spec.prompt, stream=True, session_id=session_id,
                                      user_id=job.spec.user_id, yield_run_output=True)
            async for event in stream:
                if run_id is None and getattr(event, "run_id", None):
                    run_id = str(event.run_id)
                    if task is not None:
                        job.run_ids[task] = run_id
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if run_id is None:
                raise
            log.warning("job %s: streamed run %s ended with %s: %s", job.spec.name, run_id,
                        type(exc).__name__, exc)
        return run_id

    async def _until_stored(self, job: _Job, runner: Runner, run_id: str, session_id: str,
                            pending: Any) -> bool:
        """Wait until agno stored a final status for the run (False: gave up after run_timeout)."""
        deadline = self._clock() + self._run_timeout
        # agno updates the object arun returned as the run goes on: watching it costs nothing.
        while pending is not None and pending.status not in FINAL:
            if self._clock() > deadline:
                break
            await asyncio.sleep(self._watch_interval)
        # The status changes in memory just before agno writes it: confirm from the database.
        while self._clock() <= deadline:
            try:
                out = await runner.aget_run_output(run_id=run_id, session_id=session_id)
            except Exception as exc:
                log.debug("job %s: reading run %s failed: %s", job.spec.name, run_id, exc)
                out = None
            if out is not None and out.status in FINAL:
                return True
            await asyncio.sleep(self._watch_interval)
        log.warning("job %s: run %s has no final status after %gs; no longer counted in flight",
                    job.spec.name, run_id, self._run_timeout)
        return False
