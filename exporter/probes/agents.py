"""Agent and team specs from the config -> real agno objects, for the scheduler's probes.

Why a module of its own: the scheduler must not know how a model endpoint is chosen or how a tool
behaves offline, and the tests and the demo build the very same objects users configure. Three
decisions live here:

* Which endpoint the models call (:class:`LlmTarget`): OpenAI when ``OPENAI_API_KEY`` is set, the
  built-in simulated model otherwise (``scheduler.llm: auto``); a job's ``model.base_url`` /
  ``model.api_key`` win over both.
* The tools by name (``KNOWN_TOOLS``). ``yfinance`` is the seed's ``YFinanceTools`` price lookup,
  wrapped so it can never stall a probe: it runs in a daemon thread with a timeout, and a failed
  lookup (offline, rate limited) raises, so agno records a *tool error* and the run completes.
* Probes measure one attempt: the openai client does not retry (``max_retries=0``) and has a
  timeout, so provider errors and latency show up as they are instead of being hidden by retries.

agno keeps one openai client per model and never closes it; :class:`RunnerFactory` remembers the
models it created and closes their clients (and the database engine) in :meth:`RunnerFactory.aclose`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from agno.agent import Agent
from agno.db.postgres import PostgresDb
from agno.models.openai import OpenAIChat
from agno.team import Team
from agno.tools import Toolkit

from exporter.config import AgentSpec, ConfigError, JobSpec, ModelSpec, TeamSpec

log = logging.getLogger("agno_exporter.agents")

Runner = Agent | Team
T = TypeVar("T")

# A probe that hangs tells nothing; 60 s is far above any normal completion of the probes' size.
MODEL_TIMEOUT = 60.0
YFINANCE_TIMEOUT = 5.0
MAX_SLEEP = 10.0
SIMULATED_API_KEY = "simulated"  # the simulated model accepts any key; the openai client wants one


# --------------------------------------------------------------------------------------- endpoint


@dataclass(frozen=True)
class LlmTarget:
    """Where models send their requests unless a job's model says otherwise."""

    kind: Literal["openai", "simulated"]
    base_url: str | None = None  # None: the openai client's default (or OPENAI_BASE_URL)
    api_key: str | None = None  # None: the openai client reads OPENAI_API_KEY
    reason: str = ""

    @classmethod
    def openai(cls, reason: str = "") -> LlmTarget:
        return cls("openai", None, None, reason)

    @classmethod
    def simulated(cls, url: str, reason: str = "") -> LlmTarget:
        return cls("simulated", url, SIMULATED_API_KEY, reason)

    def describe(self) -> str:
        if self.kind == "openai":
            return f"OpenAI ({self.base_url or os.environ.get('OPENAI_BASE_URL') or 'api.openai.com'})"
        return f"the simulated model at {self.base_url}"

    def announce(self) -> None:
        """Say once, at start, which endpoint the probes use and why."""
        if self.kind == "simulated" and self.reason == "auto":
            log.info("no OPENAI_API_KEY: using the simulated model at %s", self.base_url)
        elif self.reason == "auto":
            log.info("OPENAI_API_KEY is set: scheduled runs use %s", self.describe())
        else:
            log.info("scheduler.llm=%s: scheduled runs use %s", self.kind, self.describe())


def choose_llm(
    mode: str, jobs: Sequence[JobSpec] = (), environ: Mapping[str, str] | None = None
) -> Literal["openai", "simulated"]:
    """``scheduler.llm`` -> the endpoint kind; ``auto`` follows ``OPENAI_API_KEY``."""
    environ = os.environ if environ is None else environ
    has_key = bool(environ.get("OPENAI_API_KEY"))
    if mode == "simulated" or (mode == "auto" and not has_key):
        return "simulated"
    if mode == "openai" and not has_key and any(m.api_key is None for m in _job_models(jobs)):
        raise ConfigError("scheduler.llm: openai, but OPENAI_API_KEY is not set (set it, or give the jobs' "
                          "model.api_key, or use llm: auto / simulated)")
    return "openai"


def _job_models(jobs: Iterable[JobSpec]) -> Iterable[ModelSpec]:
    for job in jobs:
        if job.agent is not None:
            yield job.agent.model
        if job.team is not None:
            yield job.team.model
            yield from (member.model for member in job.team.members)


# ------------------------------------------------------------------------------------------ tools


class ToolFailure(RuntimeError):
    """Raised by the ``fail`` tool and by failed lookups; agno records it as a tool error."""


async def _in_daemon_thread(fn: Callable[..., T], *args: Any, timeout: float) -> T:
    """Run blocking ``fn`` in a daemon thread, at most ``timeout`` seconds.

    Not ``asyncio.to_thread``: a lookup stuck in a network timeout would keep the default executor
    (and so ``asyncio.run``'s shutdown) waiting; a daemon thread is simply abandoned.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def work() -> None:
        try:
            result: Any = fn(*args)
            ok = True
        except Exception as exc:
            result, ok = exc, False
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, ok, result)

    threading.Thread(target=work, name=f"tool-{getattr(fn, '__name__', 'call')}", daemon=True).start()
    return await asyncio.wait_for(future, timeout)


class YFinancePrice(Toolkit):
    """The seed's ``YFinanceTools(enable_stock_price=True)``, bounded in time and honest on failure.

    Offline, yfinance answers ``"Error fetching current price ..."`` as a *successful* tool result
    (it catches everything); where packets are dropped rather than refused it can wait 30 s per
    request. This wrapper keeps the tool's name and description, runs the lookup off the event loop
    with a timeout, and raises on failure so the run's stored tool call carries the error.
    """

    def __init__(self, timeout: float = YFINANCE_TIMEOUT) -> None:
        from agno.tools.yfinance import YFinanceTools  # imports yfinance: only when a job uses it

        self._inner = YFinanceTools(enable_stock_price=True)
        self._timeout = timeout
        super().__init__(name="yfinance_tools", tools=[self.get_current_stock_price])

    async def get_current_stock_price(self, symbol: str) -> str:
        """Use this function to get the current stock price for a given symbol.

        Args:
            symbol (str): The stock symbol.

        Returns:
            str: The current stock price or error message.
        """
        try:
            result = await _in_daemon_thread(self._inner.get_current_stock_price, symbol, timeout=self._timeout)
        except TimeoutError:
            raise ToolFailure(f"yfinance did not answer within {self._timeout:g}s (no network?)") from None
        if result.startswith(("Error fetching", "Could not fetch")):
            raise ToolFailure(result)
        return result


async def sleep(seconds: float) -> str:
    """Wait for the given number of seconds (at most 10), then report how long it waited.

    Args:
        seconds (float): How long to wait.
    """
    waited = min(max(float(seconds), 0.0), MAX_SLEEP)
    await asyncio.sleep(waited)
    return f"Slept for {waited:g} seconds"


def fail(reason: str) -> str:
    """A tool that always fails; it exists to show tool errors in the metrics.

    Args:
        reason (str): Why it should fail.
    """
    raise ToolFailure(f"the 'fail' tool failed on purpose: {reason}")


def build_tools(names: Iterable[str]) -> list[Any]:
    tools: list[Any] = []
    for name in names:
        if name == "yfinance":
            tools.append(YFinancePrice())
        elif name == "calculator":
            from agno.tools.calculator import CalculatorTools

            tools.append(CalculatorTools())  # type: ignore[no-untyped-call]
        elif name == "sleep":
            tools.append(sleep)
        elif name == "fail":
            tools.append(fail)
        else:  # config validation rejects unknown names; this guards programmatic specs
            raise ConfigError(f"unknown tool {name!r}")
    return tools


# ---------------------------------------------------------------------------------------- runners


def build_model(spec: ModelSpec, llm: LlmTarget) -> OpenAIChat:
    api_key = spec.api_key.get_secret_value() if spec.api_key is not None else llm.api_key
    return OpenAIChat(id=spec.id, base_url=spec.base_url or llm.base_url, api_key=api_key, max_retries=0,
                      timeout=MODEL_TIMEOUT)


def build_agent(spec: AgentSpec, db: PostgresDb | None, llm: LlmTarget) -> Agent:
    return Agent(name=spec.name, model=build_model(spec.model, llm), db=db, instructions=spec.instructions,
                 tools=build_tools(spec.tools), telemetry=False)


def build_team(spec: TeamSpec, db: PostgresDb | None, llm: LlmTarget) -> Team:
    members: list[Agent | Team] = [build_agent(m, db, llm) for m in spec.members]
    return Team(name=spec.name, model=build_model(spec.model, llm), members=members, db=db,
                instructions=spec.instructions, telemetry=False)


def build_runner(job: JobSpec, db: PostgresDb | None, llm: LlmTarget) -> Runner:
    """The agent or team a job fires; ``db`` is where agno persists its runs."""
    if job.agent is not None:
        return build_agent(job.agent, db, llm)
    if job.team is not None:
        return build_team(job.team, db, llm)
    raise ConfigError(f"scheduler.jobs.{job.name}: give exactly one of agent or team")


def runner_models(runner: Runner) -> list[OpenAIChat]:
    """Every model of an agent or team, members included (for closing their clients)."""
    out: list[OpenAIChat] = []
    if isinstance(runner.model, OpenAIChat):
        out.append(runner.model)
    if isinstance(runner, Team):
        for member in runner.members if isinstance(runner.members, list) else []:
            if isinstance(member, (Agent, Team)):
                out.extend(runner_models(member))
    return out


async def close_models(models: Iterable[OpenAIChat]) -> None:
    """Close the openai clients agno opened (it never does)."""
    for model in models:
        for attr in ("async_client", "client"):
            client = getattr(model, attr, None)
            if client is None:
                continue
            try:
                result = client.close()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:  # closing is best effort
                log.debug("closing the %s of model %s failed", attr, model.id, exc_info=True)
            setattr(model, attr, None)


def sqlalchemy_url(url: str) -> str:
    """agno's PostgresDb takes SQLAlchemy URLs: postgresql:// -> postgresql+psycopg://."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError("database.url: not a URL (expected postgresql://...)")
    if scheme in ("postgres", "postgresql"):
        return "postgresql+psycopg://" + rest
    return url


def agno_db(url: str, schema: str = "ai", session_table: str = "agno_sessions",
            runs_table: str | None = None) -> PostgresDb:
    """agno's PostgresDb on the tables the collector reads."""
    kwargs: dict[str, Any] = {"db_url": sqlalchemy_url(url), "db_schema": schema}
    if session_table != "agno_sessions":
        kwargs["session_table"] = session_table
    if runs_table is not None:
        kwargs["runs_table"] = runs_table
    return PostgresDb(**kwargs)


@dataclass
class RunnerFactory:
    """Builds each job's agent or team on demand and closes what they opened.

    Building happens on a job's first firing (a job whose spec cannot be built then fails to
    start, visibly, without stopping the other jobs); the result is reused by later firings.
    """

    db: PostgresDb | None
    llm: LlmTarget
    build: Callable[[JobSpec, PostgresDb | None, LlmTarget], Runner] = build_runner
    _models: list[OpenAIChat] = field(default_factory=list)

    def __call__(self, job: JobSpec) -> Runner:
        runner = self.build(job, self.db, self.llm)
        self._models.extend(runner_models(runner))
        return runner

    async def aclose(self) -> None:
        await close_models(self._models)
        self._models.clear()
        if self.db is not None:
            self.db.db_engine.dispose()


# ---------------------------------------------------------------------------------------- logging


class _AgnoLogFilter(logging.Filter):
    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level:
            return False
        record.exc_info, record.exc_text = None, None  # one line per problem, not a traceback
        return True


def quiet_agno_logs(level: int = logging.WARNING) -> None:
    """Drop agno's log lines below ``level`` and its tracebacks.

    agno logs each background run at INFO and each failed tool call with a traceback, on stdout,
    and resets its loggers' levels on every run: a filter is the only setting that sticks.
    """
    for name in ("agno", "agno-team", "agno-workflow"):
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, _AgnoLogFilter)]:
            logger.removeFilter(old)
        logger.addFilter(_AgnoLogFilter(level))
