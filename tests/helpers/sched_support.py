"""Helpers for the scheduler tests: job specs, real agno runners, stored statuses, fake runners."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry

from exporter.commands.service import Service
from exporter.config import JobSpec, load_settings
from exporter.probes.agents import LlmTarget, RunnerFactory, agno_db
from exporter.probes.scheduler import ProbeScheduler
from tests.helpers.support import DEADLINE


def job(name: str, prompt: str = "Say hello.", interval: float | None = 0.2, agent: dict[str, Any] | None = None,
        **kw: Any) -> JobSpec:
    spec: dict[str, Any] = {"name": name, "prompt": prompt, "interval": interval, **kw}
    if "team" not in kw:
        spec["agent"] = {"name": name.title().replace("-", "") + "Agent", **(agent or {})}
    return JobSpec.model_validate(spec)


def real_factory(db_url: str, sim_url: str) -> RunnerFactory:
    return RunnerFactory(agno_db(db_url), LlmTarget.simulated(sim_url))


def scheduler(jobs: list[JobSpec], runners: Any, registry: CollectorRegistry | None = None,
              **kw: Any) -> ProbeScheduler:
    kw.setdefault("watch_interval", 0.02)
    return ProbeScheduler(jobs, runners, registry or CollectorRegistry(), **kw)


def make_service(db_url: str) -> Service:
    return Service(load_settings(None, environ={}, overrides={
        "database": {"url": db_url}, "web": {"listen": "127.0.0.1:0"}, "collector": {"poll_interval": "100ms"},
    }))


def stored(db_url: str) -> list[dict[str, Any]]:
    """(name, status) of every stored run, oldest first."""
    with psycopg.connect(db_url, row_factory=psycopg.rows.dict_row) as conn:
        exists = conn.execute("SELECT to_regclass('ai.agno_runs') IS NOT NULL AS ok").fetchone()
        if not exists or not exists["ok"]:
            return []
        return conn.execute(
            "SELECT run_id, run_type, status, parent_run_id, "
            "COALESCE(run_data->>'agent_name', run_data->>'team_name') AS name "
            "FROM ai.agno_runs ORDER BY created_at"
        ).fetchall()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def until(predicate: Any, timeout: float = DEADLINE, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout:g}s")
        await asyncio.sleep(step)


@dataclass
class FakeRunner:
    """Stands in for an agent when a test is about scheduling only: runs finish at once."""

    fired_at: list[float] = field(default_factory=list)

    async def arun(self, prompt: str, **kw: Any) -> Any:
        from agno.run.base import RunStatus

        self.fired_at.append(time.monotonic())
        return SimpleNamespace(run_id=f"run-{len(self.fired_at)}", status=RunStatus.completed)

    async def aget_run_output(self, run_id: str, session_id: str | None = None) -> Any:
        from agno.run.base import RunStatus

        return SimpleNamespace(status=RunStatus.completed)

    @staticmethod
    async def acancel_run(run_id: str) -> bool:
        return True


@dataclass
class FakeRunners:
    """A RunnerSource of FakeRunners, one per job."""

    runners: dict[str, FakeRunner] = field(default_factory=dict)
    closed: bool = False

    def __call__(self, spec: JobSpec) -> Any:
        return self.runners.setdefault(spec.name, FakeRunner())

    async def aclose(self) -> None:
        self.closed = True
