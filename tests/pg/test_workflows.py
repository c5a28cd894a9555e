"""Workflows written by real agno 3.1.10: every step's run is counted once, like any run, and equals
agno's own API (the workflow run's ``step_executor_runs`` and ``metrics``, ``get_session_metrics()``).

agno keeps the run of an agent or team step only inside the workflow run's row, and the member runs
of a team step only inside that team's copy; an agent with a database of its own inside a step
container (Parallel, Loop, ...) and a nested workflow with a database also write rows of their own,
without ``parent_run_id``. The collector is driven poll by poll here (no waiting on timers).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from typing import Any

import psycopg
from agno.agent import Agent
from agno.team import Team
from agno.workflow import Condition, Loop, Parallel, Router, Step, StepInput, StepOutput, Steps, Workflow
from prometheus_client import CollectorRegistry, generate_latest

from exporter.commands.show import show_run
from exporter.config import load_settings
from exporter.db import ConnectOptions, Database
from exporter.ingest.collector import RunCollector
from exporter.ingest.runs_table import RunsTable
from exporter.records.nesting import build_row_runs
from exporter.records.runs import TOKEN_FIELDS
from exporter.sinks.prometheus.topsessions import TopSessions
from tests.e2e.test_exactly_once import close, make_collector
from tests.helpers.agno_app import AgnoApp, get_stock_price
from tests.helpers.scrape import Samples
from tests.helpers.truth import assert_matches_agno, run_truth, workflow_truth

UNREACHABLE = "http://127.0.0.1:9/v1"


def plain(app: AgnoApp, name: str, tools: bool = False, base_url: str | None = None) -> Agent:
    """An agent as workflows use them: no database of its own (the workflow's stores its run)."""
    return Agent(name=name, model=app.model(base_url), tools=[get_stock_price] if tools else [], telemetry=False)


def step_team(app: AgnoApp) -> Team:
    return Team(name="StepTeam", model=app.model(), members=[plain(app, "StockAgent", tools=True)], telemetry=False)


def samples(c: RunCollector) -> Samples:
    registry = CollectorRegistry()
    registry.register(c.sink.store)
    registry.register(TopSessions(c))
    return Samples(generate_latest(registry).decode())


def tokens(metrics: dict[str, Any] | None) -> int:
    m = metrics or {}
    return int(m.get("input_tokens", 0) + m.get("output_tokens", 0))


def steps_tokens(workflow: dict[str, Any]) -> int:
    """What agno adds to a workflow session's totals for one run: the sum of ``metrics.steps``."""
    return sum(tokens(step.get("metrics")) for step in (workflow["metrics"] or {}).get("steps", {}).values())


async def poll_until_quiet(c: RunCollector) -> int:
    """Poll until a poll counts nothing more; returns how many runs were counted."""
    counted = 0
    while (n := (await c.poll_once()).counted):
        counted += n
    return counted


def rows_of(db_url: str, where: str = "TRUE") -> list[dict[str, Any]]:
    with psycopg.connect(db_url, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(f"SELECT * FROM ai.agno_runs WHERE {where} ORDER BY created_at, run_id").fetchall()


def set_status(db_url: str, run_ids: list[str], status: str) -> None:
    """agno writes a workflow's row RUNNING when it starts and its final status when it ends: this
    plays the order in which the exporter meets rows, without touching what agno stored in them."""
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE ai.agno_runs SET status = %s, updated_at = extract(epoch FROM now())::bigint"
                     " WHERE run_id = ANY(%s)", (status, run_ids))


def every_run(truth: list[dict[str, Any]]) -> Iterator[str]:
    yield from (r["run_id"] for r in truth)


# ---------------------------------------------------------------------------------------------
# 1. agent, team and function steps, every step container, a nested workflow, a failing step


def test_step_runs_are_counted_like_any_run(db_url: str, sim_url: str) -> None:
    asyncio.run(_step_runs_are_counted(db_url, sim_url))


async def _step_runs_are_counted(db_url: str, sim_url: str) -> None:
    app = AgnoApp(db_url, sim_url)
    try:
        # the example, non-streamed and streamed
        report = Workflow(name="ReportFlow", db=app.db, telemetry=False,
                          steps=[Step(name="research", agent=plain(app, "Researcher", tools=True))])
        helper = app.agent("Helper", tools=False)  # has a database: its run is a row of its own

        async def summarise(step_input: StepInput) -> StepOutput:
            out = await helper.arun("Summarise the AAPL stock price")
            return StepOutput(content=out.content)

        writer = plain(app, "Writer")
        inner = Workflow(name="InnerFlow", telemetry=False, steps=[Step(name="inner_write", agent=writer)])
        full = Workflow(name="FullFlow", db=app.db, telemetry=False, steps=[
            Step(name="team", team=step_team(app)),
            Step(name="summary", executor=summarise),
            Parallel(Step(name="p1", agent=writer), Step(name="p2", agent=plain(app, "Researcher", tools=True)),
                     name="parallel"),
            Loop(steps=[Step(name="again", agent=writer)], max_iterations=2, name="loop"),
            Condition(evaluator=lambda _: True, steps=[Step(name="checked", agent=writer)], name="condition"),
            Router(selector=lambda _: [Step(name="routed", agent=writer)],
                   choices=[Step(name="routed", agent=writer)], name="router"),
            Steps(name="sequence", steps=[Step(name="s1", agent=writer)]),
            Step(name="sub", workflow=inner),
        ])
        failing = Workflow(name="FailFlow", db=app.db, telemetry=False, steps=[
            Step(name="ok", agent=writer), Step(name="broken", agent=plain(app, "BrokenAgent", base_url=UNREACHABLE))])

        outputs = [await report.arun("What is the stock price of AAPL?")]
        async for _ in report.arun("What is the stock price of MSFT?", stream=True, stream_events=True):
            pass
        (streamed,) = [r for r in rows_of(db_url, "run_type = 'workflow'") if r["run_id"] != outputs[0].run_id]
        outputs.append(await report.aget_run_output(run_id=streamed["run_id"], session_id=streamed["session_id"]))
        outputs.append(await full.arun("What is the stock price of AAPL?"))
        outputs.append(await failing.arun("What is the stock price of AAPL?"))

        # agno's own API, read back from the database
        workflows = {"ReportFlow": report, "FullFlow": full, "FailFlow": failing}
        truth: list[dict[str, Any]] = []
        stored = {}
        for out in outputs:
            assert out is not None
            back = await workflows[out.workflow_name].aget_run_output(run_id=out.run_id, session_id=out.session_id)
            stored[out.workflow_name] = back
            truth.extend(workflow_truth(back))
        helper_rows = [r for r in rows_of(db_url, "run_type = 'agent'")]
        assert [r["run_data"]["agent_name"] for r in helper_rows] == ["Helper"]
        truth.append(run_truth(await helper.aget_run_output(run_id=helper_rows[0]["run_id"],
                                                             session_id=helper_rows[0]["session_id"])))
        session_metrics = {out.session_id: await workflows[out.workflow_name].aget_session_metrics(
            session_id=out.session_id) for out in outputs}
    finally:
        await app.close()

    # What agno stored: the workflow runs and the function step's agent are the only rows.
    assert len(rows_of(db_url)) == len(outputs) + 1
    names = [r.get("agent_name") or r.get("team_name") or r.get("workflow_name") for r in truth]
    assert sorted(n for n in names if n == "Writer") == ["Writer"] * 8  # p1, loop x2, checked, routed, s1, inner, ok
    assert {"StepTeam", "StockAgent", "InnerFlow", "BrokenAgent"} <= set(names)
    assert len(truth) == len(set(every_run(truth)))

    c = make_collector(db_url, batch_size=2, session_settle=0.0)
    try:
        assert await poll_until_quiet(c) == len(truth)
        s = samples(c)
        # Every figure equals the sum of agno's own per-run numbers: tokens by name, runs by status,
        # durations, TTFT, tool calls, model calls and the per-call histograms.
        assert_matches_agno(s, truth)
        kinds = {"workflow": 0, "team": 0, "agent": 0}
        for r in truth:
            kinds["workflow" if r["workflow_name"] and not (r["agent_name"] or r["team_name"]) else
                  "team" if r["team_name"] else "agent"] += 1
        assert s.group("agno_runs_total", "run_type") == {(k,): float(v) for k, v in kinds.items()}
        assert s.sum("agno_runs_total", run_type="workflow") == len(outputs) + 1  # InnerFlow ran as a step
        assert s.sum("agno_runs_total", run_type="agent", name="BrokenAgent", status="ERROR") == 1
        assert s.sum("agno_runs_total", run_type="team", name="StepTeam") == 1
        # the workflow's own duration is agno's metrics.duration, the whole run with its steps
        for name in ("FullFlow", "FailFlow"):
            assert s.sum("agno_run_duration_seconds_sum", run_type="workflow", name=name) == \
                stored[name].metrics.duration

        # The example: a one-step workflow session is what agno's get_session_metrics() says.
        top = {labels["session_id"]: v for labels, v in s.by_name["agno_session_top_tokens"]}
        for out in outputs[:2]:
            sm = session_metrics[out.session_id]
            assert sm is not None and top[out.session_id] == sm.input_tokens + sm.output_tokens > 0
            research = next(r for r in workflow_truth(stored["ReportFlow"]) if r["agent_name"] == "Researcher")
            assert research["metrics"]["input_tokens"] > 0
        # FullFlow: agno's session totals add metrics.steps only (the team step's leader, one loop
        # iteration); the exported totals hold every run. The check compares agno with agno's rule.
        full_truth = workflow_truth(stored["FullFlow"])
        full_sid = stored["FullFlow"].session_id
        sm = session_metrics[full_sid]
        assert sm is not None
        claimed = sm.input_tokens + sm.output_tokens
        assert claimed == steps_tokens(run_truth(stored["FullFlow"])) < sum(tokens(r["metrics"]) for r in full_truth)
        assert top[full_sid] == sum(tokens(r["metrics"]) for r in full_truth)
        mine = (await c.state.sessions_by_id([full_sid]))[full_sid]
        assert mine["agno_tokens"] == claimed
        counts = await c.source.session_run_counts([full_sid])
        assert counts[full_sid] == (mine["runs"], 0) == (1, 0)  # the check sees the session complete
        await c.poll_once()
        assert not c.session_totals.pending  # compared, not only due
        assert samples(c).sum("agno_session_disagreements_total") == 0

        # A restart reads nothing twice.
        await close(c)
        c = make_collector(db_url, batch_size=2)
        assert await poll_until_quiet(c) == 0
        assert_matches_agno(samples(c), truth)
    finally:
        await close(c)


# ---------------------------------------------------------------------------------------------
# 2. a run stored twice (nested, and as a row of its own): counted once, in either order


def both_flow(app: AgnoApp) -> Workflow:
    """Agents with a database inside step containers, and a nested workflow with a database: agno
    writes their runs as rows of their own too (no parent_run_id), and nests them in the workflow."""
    writer = app.agent("Writer", tools=False)
    inner = Workflow(name="InnerFlow", db=app.db, telemetry=False,
                     steps=[Step(name="inner_write", agent=plain(app, "Scribe"))])
    return Workflow(name="BothFlow", db=app.db, telemetry=False, steps=[
        Parallel(Step(name="p1", agent=writer), name="parallel"),
        Loop(steps=[Step(name="again", agent=writer)], max_iterations=2, name="loop"),
        Step(name="sub", workflow=inner),
    ])


def test_a_run_stored_twice_counts_once_in_either_order(db_url: str, sim_url: str) -> None:
    asyncio.run(_stored_twice(db_url, sim_url))


async def _stored_twice(db_url: str, sim_url: str) -> None:
    app = AgnoApp(db_url, sim_url)
    try:
        flow = both_flow(app)
        out = await flow.arun("What is the stock price of AAPL?")
        truth = workflow_truth(await flow.aget_run_output(run_id=out.run_id, session_id=out.session_id))
    finally:
        await app.close()
    rows = rows_of(db_url)
    outer = [r["run_id"] for r in rows if r["run_id"] == out.run_id]
    own = [r["run_id"] for r in rows if r["run_id"] != out.run_id]
    # agno's own rows: the Writer's three runs and InnerFlow's, without parent_run_id; all nested too
    assert len(own) == 4 and all(r["parent_run_id"] is None for r in rows)
    assert set(own) < set(every_run(truth)) and len(truth) == 6  # + BothFlow and InnerFlow's Scribe
    workflow = next(r for r in truth if r["run_id"] == out.run_id)

    async def count(hidden: list[str]) -> Samples:
        async with asyncio.timeout(60):
            with psycopg.connect(db_url) as conn:
                conn.execute("DROP SCHEMA IF EXISTS agno_exporter CASCADE")
            set_status(db_url, hidden, "RUNNING")
            c = make_collector(db_url)
            try:
                first = await poll_until_quiet(c)
            finally:
                await close(c)
            set_status(db_url, hidden, "COMPLETED")
            c = make_collector(db_url)  # a restart between the two copies
            try:
                second = await poll_until_quiet(c)
                assert first + second == len(truth), (first, second)
                s = samples(c)
                assert_matches_agno(s, truth)
                # agno's convention for the session: the workflow's metrics.steps, never a step twice
                mine = (await c.state.sessions_by_id([out.session_id]))[out.session_id]
                assert mine["agno_tokens"] == steps_tokens(workflow)
                assert mine["runs"] == len(rows)  # the rows agno has, whichever copy was counted
                assert mine["tokens"] == sum(tokens(r["metrics"]) for r in truth)
                return s
            finally:
                await close(c)

    own_first = await count(outer)  # agno's order: the steps' rows are final before their workflow's
    nested_first = await count(own)

    def runs_figures(s: Samples) -> dict[str, list[tuple[list[tuple[str, str]], float]]]:
        # A session is named after the first run of it counted that has no parent: agno's own row of
        # a step has none (and agno's session row is the Writer's here: "ownership mismatch").
        return {name: sorted((sorted(labels.items()), v) for labels, v in values)
                for name, values in s.by_name.items() if not name.startswith("agno_session")}

    assert runs_figures(own_first) == runs_figures(nested_first)


# ---------------------------------------------------------------------------------------------
# 3. the projection of run_data keeps everything the nested records are built from


def test_projected_rows_give_the_same_nested_records_as_whole_rows(db_url: str, sim_url: str) -> None:
    async def main() -> None:
        app = AgnoApp(db_url, sim_url)
        try:
            await both_flow(app).arun("What is the stock price of AAPL?")
            await Workflow(name="TeamFlow", db=app.db, telemetry=False,
                           steps=[Step(name="team", team=step_team(app))]).arun("AAPL?")
            team = app.team()
            await app.run(team)
        finally:
            await app.close()
        whole = rows_of(db_url)
        db = Database(ConnectOptions(db_url, read_only=True))
        try:
            projected = {r["run_id"]: r for r in await RunsTable(db, "ai", "agno_runs", "agno_sessions").fetch(
                [r["run_id"] for r in whole])}
        finally:
            await db.close()
        nested = 0
        for row in whole:
            for content in (False, True):
                expected = build_row_runs(row, row["run_data"], with_content=content)
                got = build_row_runs(projected[row["run_id"]], projected[row["run_id"]]["run_data"],
                                     with_content=content)
                assert got == expected, row["run_id"]
            nested += len(expected.nested)
        assert nested == 6 + 2  # BothFlow's five and InnerFlow's one; StepTeam and its member

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------
# 4. the WorkflowAgent's run


def test_the_workflow_agents_run_is_counted(db_url: str, sim_url: str) -> None:
    from agno.workflow import WorkflowAgent

    async def main() -> None:
        app = AgnoApp(db_url, sim_url)
        try:
            flow = Workflow(name="AgentFlow", db=app.db, telemetry=False, agent=WorkflowAgent(model=app.model()),
                            steps=[Step(name="write", agent=plain(app, "Writer"))])
            out = await flow.arun("What is the stock price of AAPL?")
            back = await flow.aget_run_output(run_id=out.run_id, session_id=out.session_id)
        finally:
            await app.close()
        assert back is not None and back.workflow_agent_run is not None
        truth = workflow_truth(back)
        assert len(truth) == 3
        c = make_collector(db_url)
        try:
            assert await poll_until_quiet(c) == 3
            s = samples(c)
        finally:
            await close(c)
        for field, ttype in TOKEN_FIELDS:
            assert s.sum("agno_tokens_total", token_type=ttype) == sum((r["metrics"] or {}).get(field, 0)
                                                                        for r in truth)
        agent_run = back.workflow_agent_run
        assert agent_run.metrics is not None and agent_run.metrics.input_tokens > 0
        calls = sum(1 for r in truth for m in r["messages"] if m["role"] == "assistant" and not m["from_history"])
        assert s.sum("agno_model_calls_total") == calls
        assert s.sum("agno_tool_calls_total", tool="run_workflow") == 1
        # `runs show` of the workflow lists the runs nested in its row
        printed = io.StringIO()
        settings = load_settings(None, environ={}, overrides={"database": {"url": db_url}})
        assert await show_run(settings, back.run_id, printed, io.StringIO()) == 0
        lines = printed.getvalue().splitlines()
        assert "runs nested in this run's row: 2" in lines
        assert {line.split()[0] for line in lines if line.startswith("  ") and "parent=" in line} == {
            r["run_id"] for r in truth if r["run_id"] != back.run_id}

    asyncio.run(main())
