"""Write real agno data with whichever agno release runs it (2.1 to 3.1; see agno2_support.py).

    python agno2_writer.py --db-url postgresql+psycopg://... --llm-url http://127.0.0.1:PORT/v1 \
        --scenario basic|matrix|continue|concurrent|many|stuck|prepare|workflow [--n 50] [--concurrency 8]

It imports agno only (never the project's ``exporter`` package), runs real agents and teams on
``PostgresDb`` against the simulated OpenAI-compatible model and prints ONE JSON document on stdout:

    {"agno_version": "2.9.0", "background": true,
     "runs": [{"label", "run_id", "session_id", "parent_run_id", "status", "kind" (agent|team|member),
               "agent_id", "agent_name", "team_id", "team_name", "model", "metrics": {...}, "tools": [...],
               "messages": [...], "nested_member_run_ids": [...]}, ...],
     "sessions": [{"session_id", "session_type", "owner" (agent/team name), "metrics": {...}}, ...]}

Every figure is agno's own, read back through agno's API by a FRESH Agent/Team object (so nothing
comes from the writing object's in-memory session): ``get_run_output(run_id, session_id).metrics``
and ``get_session_metrics(session_id)``. Member runs
of a team are whatever agno stored in the team session besides the team run (read back the same way,
kind "member").

The writer works on every release from 2.1 on by asking agno what it has, never by version numbers:
``arun(background=True)`` where ``arun`` takes ``background`` (agno 2.5 and later), otherwise the
run is awaited in the foreground (persisted the same way, at its end).

Scenarios:
  basic  agent with a tool call, streamed run (foreground), two runs of one session one after
         another (user "alice"), a team delegating to a member (user "bob", default
         ``store_member_responses=False``), the same with ``store_member_responses=True``, and a run
         whose model endpoint is unreachable: an ERROR run, or (agno before 2.3.14, which raises
         instead of storing it) an entry of "unstored".
  matrix basic, plus a third run of alice's session, two team runs of one session one after
         another, and a team whose member is a team.
  continue  one more run of the matrix scenario's two-run team session (--session-id), e.g. written
         by a later release than the first two.
  concurrent  --n team runs of ONE session started together (agno's read-modify-write of the session
         row can lose updates: the trap in the agno reference notes). Once agno is done, every run is
         read back: the finished ones are "runs", the others (agno 2.x rewrites the whole runs blob
         on every save, so a concurrent save can drop a run or leave it RUNNING) are "lost", with the
         status agno still shows for them (null: gone).
  many   --n runs of one agent, ``runs_per_session`` after another in each session, sessions in
         parallel (--concurrency).
  prepare  no run: agno creates its (empty) sessions table, e.g. for a test to put a trigger on it.
  workflow  a workflow with agent, team, Parallel and Loop steps (its step runs nested in its run; 2.9).
  stuck  one background run whose model call stalls; the process exits hard (os._exit) once agno has
         stored it as RUNNING, so the stored run never finishes (agno 2.x has no recovery).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
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
from agno.team import Team

DONE = {"COMPLETED", "ERROR", "CANCELLED"}
# How long to wait for agno to store a run (generous: a loaded machine is only slower). This script
# runs in an older agno's virtualenv and imports nothing of the tests' (support.DEADLINE is the same).
DEADLINE = 60.0
PROMPT = "What is the stock price of AAPL?"
UNREACHABLE = "http://127.0.0.1:9/v1"  # discard port: connection refused
BACKGROUND = "background" in inspect.signature(Agent.arun).parameters


def get_stock_price(symbol: str) -> str:
    """Get the current stock price for a ticker symbol."""
    return f"{symbol}: 123.45"


def _dict(value: Any) -> Any:
    if value is None:
        return None
    return value.to_dict() if hasattr(value, "to_dict") else value


def _status(out: Any) -> str | None:
    status = getattr(out, "status", None)
    return status.value if hasattr(status, "value") else status


async def _call(obj: Any, name: str, **kw: Any) -> Any:
    """agno's sync accessor, in a thread: every release has it (agno 2.1 has no async ones, and up to
    2.4 the async ones need an AsyncPostgresDb), and the loop keeps running agno's background runs."""
    return await asyncio.to_thread(getattr(obj, name), **kw)


class App:
    def __init__(self, db_url: str, llm_url: str, schema: str = "ai", session_table: str | None = None) -> None:
        self.db = PostgresDb(db_url=db_url, db_schema=schema, session_table=session_table)
        self.llm_url = llm_url
        self._models: list[OpenAIChat] = []
        self.runs: list[dict[str, Any]] = []
        self.seen: set[str] = set()
        self.owners: dict[str, Any] = {}  # session_id -> the agent/team/workflow that owns it
        self.unstored: list[dict[str, Any]] = []  # runs that failed without agno storing them
        self.lost: list[dict[str, Any]] = []  # started runs agno does not show as finished

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

    def nested_team(self, name: str) -> Team:
        """A team whose member is a team (agno sums nested member runs recursively from 2.5.4 on)."""
        inner = self.team("ResearchTeam")
        return Team(name=name, model=self.model(), members=[inner], db=self.db, telemetry=False)

    def reader(self, owner: Agent | Team) -> Agent | Team:
        """A fresh object of the same agent/team: what it reads comes from the database, not from the
        writing object's cached session (agno 2.1 answers get_run_output from that cache)."""
        if isinstance(owner, Team):
            return Team(id=owner.id, name=owner.name, members=[], db=self.db, telemetry=False)
        return Agent(id=owner.id, name=owner.name, db=self.db, telemetry=False)

    async def read_run(self, owner: Agent | Team, run_id: str, session_id: str) -> Any:
        return await _call(self.reader(owner), "get_run_output", run_id=run_id, session_id=session_id)

    async def wait(self, owner: Agent | Team, run_id: str, session_id: str, timeout: float = DEADLINE) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = await self.read_run(owner, run_id, session_id)
            if out is not None and _status(out) in DONE:
                return out
            await asyncio.sleep(0.05)
        raise RuntimeError(f"run {run_id} did not finish within {timeout}s")

    async def start(self, runner: Agent | Team, prompt: str = PROMPT, stream: bool = False,
                    session_id: str | None = None, user_id: str | None = None) -> tuple[str, str]:
        """Fire one run as the seed does (background where agno has it); return (run id, session id)."""
        if stream:
            # agno's background=True with stream=True needs AgentOS; a streamed run in the foreground is
            # persisted by agno exactly the same way.
            run_id = sid = None
            async for event in runner.arun(prompt, stream=True, session_id=session_id,  # type: ignore[union-attr]
                                           user_id=user_id):
                run_id = getattr(event, "run_id", None) or run_id
                sid = getattr(event, "session_id", None) or sid
            assert run_id and sid, "the stream carried no run id"
            return run_id, sid
        if BACKGROUND:
            pending = await runner.arun(prompt, background=True, session_id=session_id,  # type: ignore[union-attr]
                                        user_id=user_id)
        else:
            pending = await runner.arun(prompt, session_id=session_id, user_id=user_id)  # type: ignore[union-attr]
        return pending.run_id, pending.session_id

    async def run(self, label: str, runner: Agent | Team, prompt: str = PROMPT, stream: bool = False,
                  session_id: str | None = None, user_id: str | None = None) -> Any:
        run_id, sid = await self.start(runner, prompt, stream, session_id, user_id)
        out = await self.wait(runner, run_id, sid)
        self.owners[sid] = runner
        self.record(label, out)
        await self.record_members(label, runner, sid)
        return out

    async def record_members(self, label: str, owner: Agent | Team, sid: str) -> None:
        """Runs agno stored in the session besides those recorded: a team's member runs (elements of
        the team session's runs with parent_run_id in 2.x, rows of agno_runs in 3.x)."""
        session = await _call(self.reader(owner), "get_session", session_id=sid)
        for stored in (session.runs if session else None) or []:
            if stored.run_id not in self.seen and _status(stored) in DONE:
                member = await self.read_run(owner, stored.run_id, sid)
                self.record(label + ":member", member, kind="member")

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
            "status": _status(out),
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
            metrics = await _call(self.reader(owner), "get_session_metrics", session_id=sid)
            result.append({
                "session_id": sid,
                "session_type": "team" if isinstance(owner, Team) else
                                "agent" if isinstance(owner, Agent) else "workflow",
                "owner": owner.name,
                "metrics": _dict(metrics),
            })
        return result

    async def settle(self, timeout: float = DEADLINE) -> None:
        """Wait for whatever agno still runs in the background (its task sets moved between releases)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if not pending:
                return
            await asyncio.wait(pending, timeout=deadline - time.monotonic())

    async def close(self) -> None:
        await self.settle(DEADLINE)
        # agno keeps one openai client per model and never closes it.
        for m in self._models:
            for attr in ("async_client", "client"):
                client = getattr(m, attr, None)
                if client is not None:
                    close = client.close()
                    if asyncio.iscoroutine(close):
                        await close
        self.db.db_engine.dispose()


async def scenario_basic(app: App, matrix: bool = False) -> None:
    agent = app.agent("BackgroundMetricsAgent")
    plain = app.agent("PlainAgent", tools=False)
    team = app.team("FinanceTeam")
    team_stored = app.team("FinanceTeamStored", store_member_responses=True)
    broken = app.agent("BrokenAgent", base_url=UNREACHABLE)
    await app.run("tool", agent)
    await app.run("stream", agent, stream=True)
    first = await app.run("session-1", plain, user_id="alice")
    await app.run("session-2", plain, "And tomorrow?", session_id=first.session_id, user_id="alice")
    if matrix:
        await app.run("session-3", plain, "And next week?", session_id=first.session_id, user_id="alice")
    await app.run("team", team, user_id="bob")
    await app.run("team-stored", team_stored)
    if matrix:
        again = app.team("FinanceTeamTwice")
        one = await app.run("team-session-1", again)
        await app.run("team-session-2", again, "And MSFT?", session_id=one.session_id)
        await app.run("team-nested", app.nested_team("HoldingTeam"))
    sid = str(uuid.uuid4())
    try:
        await app.run("error", broken, session_id=sid)
    except Exception as exc:  # agno before 2.3.14 raises to the caller and stores no ERROR run
        app.unstored.append({"label": "error", "session_id": sid, "error": type(exc).__name__})
        if await _call(app.reader(broken), "get_session", session_id=sid) is not None:
            app.owners[sid] = broken
            await app.record_members("error", broken, sid)


async def scenario_continue(app: App, session_id: str) -> None:
    """One more run of FinanceTeamTwice's session (the matrix scenario's), e.g. after an upgrade of agno."""
    team = app.team("FinanceTeamTwice")
    before = await _call(app.reader(team), "get_session", session_id=session_id)
    app.seen.update(r.run_id for r in (before.runs if before else None) or [])  # reported by their writer
    await app.run("continue", team, "And GOOG?", session_id=session_id)


async def scenario_concurrent(app: App, n: int) -> None:
    """n team runs of one session at once; read back once agno has finished all of them."""
    team = app.team("ConcurrentTeam")
    sid = str(uuid.uuid4())
    started = await asyncio.gather(*(app.start(team, f"Price of AAPL? ({i})", session_id=sid) for i in range(n)))
    await app.settle()
    app.owners[sid] = team
    for i, (run_id, s) in enumerate(started):
        out = await app.read_run(team, run_id, s)
        if out is not None and _status(out) in DONE:
            app.record(f"concurrent-{i}", out)
        else:
            app.lost.append({"label": f"concurrent-{i}", "run_id": run_id, "session_id": s,
                             "status": _status(out) if out is not None else None})
    await app.record_members("concurrent", team, sid)


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
    p.add_argument("--scenario", default="basic",
                   choices=["prepare", "basic", "matrix", "continue", "concurrent", "many", "stuck", "workflow"])
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--schema", default="ai")
    p.add_argument("--session-table", default=None, help="agno's session_table (default agno_sessions)")
    p.add_argument("--session-id", default=None, help="the session the continue scenario runs in")
    args = p.parse_args()
    # agno logs to stdout through rich: send fd 1 to stderr and keep the real stdout for the JSON result.
    result_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    app = App(args.db_url, args.llm_url, args.schema, args.session_table)
    head = {"agno_version": version("agno"), "background": BACKGROUND}
    try:
        if args.scenario == "prepare":  # only agno's own CREATE TABLE of agno_sessions (e.g. to add a trigger)
            app.db._get_table(table_type="sessions", create_table_if_not_found=True)
        elif args.scenario in ("basic", "matrix"):
            await scenario_basic(app, matrix=args.scenario == "matrix")
        elif args.scenario == "continue":
            await scenario_continue(app, args.session_id)
        elif args.scenario == "concurrent":
            await scenario_concurrent(app, args.n)
        elif args.scenario == "many":
            await scenario_many(app, args.n, args.concurrency)
        elif args.scenario == "workflow":
            await scenario_workflow(app)
        else:
            await scenario_stuck(app)
            result_out.write(json.dumps({**head, "runs": app.runs, "sessions": []}) + "\n")
            result_out.flush()
            os._exit(0)  # as a crashed or killed app would: nothing ever finalises the run
        result = {**head, "runs": app.runs, "sessions": await app.sessions(), "unstored": app.unstored,
                  "lost": app.lost}
    finally:
        await app.close()
    json.dump(result, result_out)
    result_out.write("\n")
    result_out.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
