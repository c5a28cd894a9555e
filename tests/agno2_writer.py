"""Write real agno 2.x data: run with the agno 2.9 virtualenv's python (see agno2_support.py).

    python agno2_writer.py --db-url postgresql+psycopg://... --llm-url http://127.0.0.1:PORT/v1 \
        --scenario basic|many|stuck|workflow [--n 50] [--concurrency 8]

It imports agno 2.x only (never the project's ``exporter`` package), runs real agents and teams on
``PostgresDb`` against the simulated OpenAI-compatible model and prints ONE JSON document on stdout:

    {"agno_version": "2.9.0",
     "runs": [{"label", "run_id", "session_id", "parent_run_id", "status", "kind" (agent|team|member),
               "agent_id", "agent_name", "team_id", "team_name", "model", "metrics": {...}}, ...],
     "sessions": [{"session_id", "session_type", "owner" (agent/team name), "metrics": {...}}, ...],
     "snapshots": [...]}    # raw agno_sessions.runs statuses seen while a background run was in flight

``metrics`` are agno's own numbers: ``aget_run_output(run_id, session_id).metrics.to_dict()`` and
``aget_session_metrics(session_id).to_dict()``. Member runs of a team (agno 2.x keeps them inside the
team run's ``member_responses``, and only when the team has ``store_member_responses=True``) are listed
with kind "member" and the metrics agno stored for them.

Scenarios:
  basic  agent with a tool call (background), streamed run (foreground: agno 2.9's background+stream
         needs AgentOS), two runs of one session one after another (background, user "alice"), a team
         delegating to a member (background, user "bob", default ``store_member_responses=False``), the same with
         ``store_member_responses=True``, and an ERROR run (model endpoint unreachable, background).
  many   --n background runs of one agent, ``runs_per_session`` after another in each session, sessions
         in parallel (--concurrency).
  prepare  no run: agno creates its (empty) sessions table, e.g. for a test to put a trigger on it.
  workflow  a workflow with agent, team, Parallel and Loop steps (its step runs nested in its run).
  stuck  one background run whose model call stalls; the process exits hard (os._exit) once agno has
         stored it as RUNNING, so the blob keeps a run that never finishes (agno 2.x has no recovery).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from importlib.metadata import version
from typing import Any

from agno.agent import Agent
from agno.db.postgres import PostgresDb
from agno.models.openai import OpenAIChat
from agno.run.base import RunStatus
from agno.team import Team

DONE = {RunStatus.completed, RunStatus.error, RunStatus.cancelled}
# How long to wait for agno to store a run (generous: a loaded machine is only slower). This script
# runs in agno 2.9's virtualenv and imports nothing of the tests' (support.DEADLINE is the same).
DEADLINE = 60.0
PROMPT = "What is the stock price of AAPL?"
UNREACHABLE = "http://127.0.0.1:9/v1"  # discard port: connection refused


def get_stock_price(symbol: str) -> str:
    """Get the current stock price for a ticker symbol."""
    return f"{symbol}: 123.45"


def _dict(value: Any) -> Any:
    if value is None:
        return None
    return value.to_dict() if hasattr(value, "to_dict") else value


class App:
    def __init__(self, db_url: str, llm_url: str, schema: str = "ai", session_table: str | None = None) -> None:
        self.db = PostgresDb(db_url=db_url, db_schema=schema, session_table=session_table)
        self.llm_url = llm_url
        self._models: list[OpenAIChat] = []
        self.runs: list[dict[str, Any]] = []
        self.seen: set[str] = set()
        self.owners: dict[str, Any] = {}  # session_id -> the agent/team/workflow that owns it

    def model(self, base_url: str | None = None) -> OpenAIChat:
        m = OpenAIChat(id="gpt-4o-mini", base_url=base_url or self.llm_url, api_key="sim", max_retries=0)
        self._models.append(m)
        return m

    def agent(self, name: str, tools: bool = True, base_url: str | None = None) -> Agent:
        return Agent(name=name, model=self.model(base_url), db=self.db,
                     tools=[get_stock_price] if tools else [], telemetry=False)

    def team(self, name: str, store_member_responses: bool = False) -> Team:
        member = self.agent("StockAgent")
        return Team(name=name, model=self.model(), members=[member], db=self.db, telemetry=False,
                    store_member_responses=store_member_responses)

    async def wait(self, runner: Agent | Team, run_id: str, session_id: str, timeout: float = DEADLINE) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = await runner.aget_run_output(run_id=run_id, session_id=session_id)
            if out is not None and out.status in DONE:
                return out
            await asyncio.sleep(0.05)
        raise RuntimeError(f"run {run_id} did not finish within {timeout}s")

    async def run(self, label: str, runner: Agent | Team, prompt: str = PROMPT, stream: bool = False,
                  session_id: str | None = None, user_id: str | None = None) -> Any:
        """One run as the seed does it: arun(background=True), then poll aget_run_output until final."""
        if stream:
            last: Any = None
            async for event in runner.arun(prompt, stream=True, session_id=session_id,  # type: ignore[union-attr]
                                           user_id=user_id, yield_run_output=True):
                last = event
            run_id, sid = last.run_id, last.session_id
        else:
            pending = await runner.arun(prompt, background=True, session_id=session_id,  # type: ignore[union-attr]
                                        user_id=user_id)
            run_id, sid = pending.run_id, pending.session_id
        out = await self.wait(runner, run_id, sid)
        self.owners[sid] = runner
        self.record(label, out)
        # Runs agno stored in the same session besides this one: a team's member runs (own elements of the
        # team session's `runs` array, with parent_run_id). Read back through agno's own API.
        session = await runner.aget_session(session_id=sid)
        for stored in (session.runs if session else None) or []:
            if stored.run_id not in self.seen:
                member = await runner.aget_run_output(run_id=stored.run_id, session_id=sid)
                self.record(label + ":member", member, kind="member")
        return out

    def record(self, label: str, out: Any, kind: str | None = None) -> None:
        self.seen.add(out.run_id)
        is_team = getattr(out, "team_id", None) and not getattr(out, "agent_id", None)
        nested = [m.run_id for m in getattr(out, "member_responses", None) or []]
        self.runs.append({
            "label": label,
            "kind": kind or ("team" if is_team else "agent"),
            "run_id": out.run_id,
            "session_id": out.session_id,
            "user_id": getattr(out, "user_id", None),
            "parent_run_id": getattr(out, "parent_run_id", None),
            "status": out.status.value if hasattr(out.status, "value") else out.status,
            "agent_id": getattr(out, "agent_id", None),
            "agent_name": getattr(out, "agent_name", None),
            "team_id": getattr(out, "team_id", None),
            "team_name": getattr(out, "team_name", None),
            "workflow_name": getattr(out, "workflow_name", None) if kind == "workflow" else None,
            "model": getattr(out, "model", None),
            "model_provider": getattr(out, "model_provider", None),
            "created_at": getattr(out, "created_at", None),
            "metrics": _dict(out.metrics),
            "tools": [{"tool_name": t.tool_name, "tool_call_error": t.tool_call_error,
                       "duration": t.metrics.duration if t.metrics else None}
                      for t in getattr(out, "tools", None) or []],
            "messages": [{"role": m.role, "from_history": m.from_history, "metrics": _dict(m.metrics)}
                         for m in getattr(out, "messages", None) or []],
            # run ids of member runs agno ALSO nested in this run's member_responses (store_member_responses=True)
            "nested_member_run_ids": nested,
        })

    async def sessions(self) -> list[dict[str, Any]]:
        result = []
        for sid, owner in self.owners.items():
            metrics = await owner.aget_session_metrics(session_id=sid)
            result.append({
                "session_id": sid,
                "session_type": "team" if isinstance(owner, Team) else
                                "agent" if isinstance(owner, Agent) else "workflow",
                "owner": owner.name,
                "metrics": _dict(metrics),
            })
        return result

    async def close(self) -> None:
        from agno.agent import _run as agent_run
        from agno.team import _run as team_run

        pending = [t for mod in (agent_run, team_run) for t in getattr(mod, "_background_tasks", ())]
        if pending:
            await asyncio.wait(pending, timeout=DEADLINE)
        # agno keeps one openai client per model and never closes it.
        for m in self._models:
            for attr in ("async_client", "client"):
                client = getattr(m, attr, None)
                if client is not None:
                    close = client.close()
                    if asyncio.iscoroutine(close):
                        await close
        self.db.db_engine.dispose()


async def scenario_basic(app: App) -> None:
    agent = app.agent("BackgroundMetricsAgent")
    plain = app.agent("PlainAgent", tools=False)
    team = app.team("FinanceTeam")
    team_stored = app.team("FinanceTeamStored", store_member_responses=True)
    broken = app.agent("BrokenAgent", base_url=UNREACHABLE)
    await app.run("tool", agent)
    await app.run("stream", agent, stream=True)
    first = await app.run("session-1", plain, user_id="alice")
    await app.run("session-2", plain, "And tomorrow?", session_id=first.session_id, user_id="alice")
    await app.run("team", team, user_id="bob")
    await app.run("team-stored", team_stored)
    await app.run("error", broken)


async def scenario_workflow(app: App) -> None:
    """A workflow with an agent step, a team step, a Parallel and a Loop; every run agno 2.9 holds for
    it (nested in the workflow run) read back through its own API."""
    from agno.workflow import Loop, Parallel, Step, Workflow

    def plain(name: str, tools: bool = False) -> Agent:
        return Agent(name=name, model=app.model(), tools=[get_stock_price] if tools else [], telemetry=False)

    team = Team(name="StepTeam", model=app.model(), members=[plain("StockAgent", tools=True)], telemetry=False)
    flow = Workflow(name="ReportFlow", db=app.db, telemetry=False, steps=[
        Step(name="research", agent=plain("Researcher", tools=True)),
        Step(name="team", team=team),
        Parallel(Step(name="p1", agent=plain("Writer")), name="parallel"),
        Loop(steps=[Step(name="again", agent=plain("Scribe"))], max_iterations=2, name="loop"),
    ])
    out = await flow.arun(PROMPT)
    back = await flow.aget_run_output(run_id=out.run_id, session_id=out.session_id)
    app.owners[out.session_id] = flow

    def walk(run: Any, kind: str) -> None:
        if run is None or run.run_id in app.seen:
            return
        app.record("workflow", run, kind=kind)
        for step in getattr(run, "step_executor_runs", None) or []:
            walk(step, "step")
        for member in getattr(run, "member_responses", None) or []:
            walk(member, "member")

    walk(back, "workflow")


async def scenario_many(app: App, n: int, concurrency: int, runs_per_session: int = 3) -> None:
    agent = app.agent("LoadAgent")
    sem = asyncio.Semaphore(concurrency)

    async def one_session(k: int, count: int) -> None:
        async with sem:
            # An explicit session id: a shared agno 2.x Agent without one lets parallel first runs share and
            # overwrite one session (runs then vanish from the blob and never read as finished).
            sid = str(uuid.uuid4())
            for i in range(count):
                await app.run(f"many-{k}-{i}", agent, f"Price of AAPL? ({k}.{i})", session_id=sid)

    counts = [runs_per_session] * (n // runs_per_session) + ([n % runs_per_session] if n % runs_per_session else [])
    await asyncio.gather(*(one_session(k, c) for k, c in enumerate(counts)))


async def scenario_stuck(app: App) -> None:
    """Leave a RUNNING run behind: its model call stalls and the process dies before it ends."""
    from sqlalchemy import text

    agent = app.agent("StuckAgent")
    pending = await agent.arun(PROMPT + " [sim:fail=timeout]", background=True)
    seen = None
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        with app.db.Session() as sess:
            table = f'"{app.db.db_schema}"."{app.db.session_table_name}"'
            runs = sess.execute(text(f"SELECT runs FROM {table} WHERE session_id = :s"),
                                {"s": pending.session_id}).scalar()
        seen = [r.get("status") for r in runs or []]
        if seen == ["RUNNING"]:
            break
        await asyncio.sleep(0.05)
    app.runs.append({
        "label": "stuck", "kind": "agent", "run_id": pending.run_id, "session_id": pending.session_id, "user_id": None,
        "parent_run_id": None, "status": seen[0] if seen else None, "agent_id": agent.id, "agent_name": agent.name,
        "team_id": None, "team_name": None, "model": "gpt-4o-mini", "model_provider": "OpenAI",
        "created_at": pending.created_at, "metrics": None,
        "nested_member_run_ids": []})


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--db-url", required=True, help="SQLAlchemy URL, postgresql+psycopg://...")
    p.add_argument("--llm-url", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:PORT/v1")
    p.add_argument("--scenario", choices=["prepare", "basic", "many", "stuck", "workflow"], default="basic")
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--schema", default="ai")
    p.add_argument("--session-table", default=None, help="agno's session_table (default agno_sessions)")
    args = p.parse_args()
    # agno logs to stdout through rich: send fd 1 to stderr and keep the real stdout for the JSON result.
    result_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    app = App(args.db_url, args.llm_url, args.schema, args.session_table)
    try:
        if args.scenario == "prepare":  # only agno's own CREATE TABLE of agno_sessions (e.g. to add a trigger)
            app.db._get_table(table_type="sessions", create_table_if_not_found=True)
        elif args.scenario == "basic":
            await scenario_basic(app)
        elif args.scenario == "many":
            await scenario_many(app, args.n, args.concurrency)
        elif args.scenario == "workflow":
            await scenario_workflow(app)
        else:
            await scenario_stuck(app)
            result_out.write(json.dumps({"agno_version": version("agno"), "runs": app.runs, "sessions": []}) + "\n")
            result_out.flush()
            os._exit(0)  # as a crashed or killed app would: nothing ever finalises the run
        result = {"agno_version": version("agno"), "runs": app.runs, "sessions": await app.sessions()}
    finally:
        await app.close()
    json.dump(result, result_out)
    result_out.write("\n")
    result_out.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
