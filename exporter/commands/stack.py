"""``agno-exporter run``: scheduler + collector + /metrics in one process, as configured.

Why a module of its own: ``run`` and ``demo`` start the same three things in the same order and
must stop them in the reverse order — the scheduler first (its in-flight runs still need the
model endpoint and the database), then the service (the collector may still count them), then the
simulated model. Keeping that order in one place is the point.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from exporter.commands.service import Service
from exporter.config import Settings, parse_listen
from exporter.probes.agents import LlmTarget, choose_llm, quiet_agno_logs
from exporter.probes.scheduler import ProbeScheduler
from exporter.probes.simllm import SimServer, start_server
from exporter.probes.simplan import SimSettings

log = logging.getLogger("agno_exporter")


def metrics_url(settings: Settings, port: int) -> str:
    host, _ = parse_listen(settings.web.listen)
    host = "127.0.0.1" if host in ("", "0.0.0.0") else "[::1]" if host == "::" else host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    scheme = "https" if settings.web.config_file is not None else "http"
    return f"{scheme}://{host}:{port}/metrics"


@dataclass
class Stack:
    """What :func:`start_stack` started; :meth:`stop` stops it in the right order."""

    service: Service
    scheduler: ProbeScheduler | None
    sim: SimServer | None
    llm: LlmTarget | None

    async def stop(self) -> None:
        try:
            if self.scheduler is not None:
                await self.scheduler.stop()
        finally:
            try:
                await self.service.stop()
            finally:
                if self.sim is not None:
                    await self.sim.close()


async def start_llm(settings: Settings, environ: Mapping[str, str] | None = None,
                    sim_settings: SimSettings | None = None) -> tuple[LlmTarget, SimServer | None]:
    """The scheduler's model endpoint; starts the simulated model in-process when it is needed."""
    environ = os.environ if environ is None else environ
    jobs = settings.scheduler.jobs
    kind = choose_llm(settings.scheduler.llm, jobs, environ)
    reason = "auto" if settings.scheduler.llm == "auto" else "config"
    if kind == "openai":
        return LlmTarget.openai(reason), None
    sim = await start_server(sim_settings or SimSettings(), "127.0.0.1", 0)
    return LlmTarget.simulated(sim.url, reason), sim


async def start_stack(settings: Settings, *, scheduler_options: dict[str, Any] | None = None,
                      sim_settings: SimSettings | None = None) -> Stack:
    """Start the simulated model (if needed), the service, then the scheduler (if enabled)."""
    llm: LlmTarget | None = None
    sim: SimServer | None = None
    if settings.scheduler.enabled:
        llm, sim = await start_llm(settings, sim_settings=sim_settings)
    try:
        service = Service(settings)
        await service.start()
    except BaseException:
        if sim is not None:
            await sim.close()
        raise
    stack = Stack(service, None, sim, llm)
    if llm is not None:
        try:
            llm.announce()
            options: dict[str, Any] = {"active": lambda: service.collector.leadership.is_leader,
                                       **(scheduler_options or {})}
            stack.scheduler = ProbeScheduler.from_settings(settings, llm, service.registry, **options)
            stack.scheduler.start()
        except BaseException:
            await stack.stop()
            raise
    return stack


async def run_all(settings: Settings, until_signal: Callable[[], Awaitable[None]]) -> int:
    """Run until ``until_signal()`` returns (SIGINT/SIGTERM), then shut down gracefully."""
    if settings.log.level != "debug":
        quiet_agno_logs(logging.WARNING)
    stack = await start_stack(settings)
    try:
        jobs = len(settings.scheduler.jobs) if stack.scheduler is not None else 0
        log.info("metrics at %s (collector %s, %d scheduled job(s))",
                 metrics_url(settings, stack.service.port),
                 "on" if settings.collector.enabled else "off", jobs)
        await until_signal()
        log.info("stopping: scheduler first (up to %gs for in-flight runs), then the collector",
                 settings.scheduler.shutdown_timeout)
    finally:
        await stack.stop()
    return 0
