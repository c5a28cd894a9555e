"""`runs show` and `sessions show` through the command line, on runs real agno wrote: every number is the
one agno's own API reports (``aget_run_output(...).metrics``, ``aget_session_metrics``), to the token."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest
from agno.metrics import ModelMetrics, RunMetrics

from exporter.records.sessions import AGNO_TOKEN_FIELDS
from tests.helpers.agno_app import AgnoApp
from tests.helpers.cli_support import cli, one_line_error
from tests.helpers.support import free_port

ALWAYS = ("input_tokens", "output_tokens", "total_tokens")


def token_fields(m: RunMetrics | ModelMetrics) -> list[str]:
    """agno's token fields of ``m`` as `runs show` prints them: the three totals always, the rest when set."""
    out = [f"{f}={getattr(m, f)}" for f in AGNO_TOKEN_FIELDS if f in ALWAYS or getattr(m, f)]
    return out + ([f"cost={m.cost!r}"] if m.cost is not None else [])


def expected_run_lines(out: Any) -> list[str]:
    """What `runs show` must print for agno's RunOutput ``out``, line by line (indentation stripped)."""
    m: RunMetrics = out.metrics
    lines = ["RunMetrics(", *(f"{f}," for f in token_fields(m))]
    if m.time_to_first_token is not None:
        lines.append(f"time_to_first_token={m.time_to_first_token!r},")
    lines.append(f"duration={m.duration!r},")
    if m.details:
        lines.append("details={")
        for role, entries in m.details.items():
            lines.append(f"{role!r}: [")
            lines += [f"ModelMetrics({', '.join([f'id={e.id!r}', f'provider={e.provider!r}', *token_fields(e)])}),"
                      for e in entries]
            lines.append("],")
        lines.append("},")
    lines.append(")")
    tools = out.tools or []
    if not tools:
        return [*lines, "tools=[]"]
    lines.append("tools=[")
    for t in tools:
        took = f"ToolCallMetrics(duration={t.metrics.duration!r})"
        lines.append(f"ToolExecution(tool_name={t.tool_name!r}, tool_call_id={t.tool_call_id!r}, "
                     f"tool_call_error={bool(t.tool_call_error)}, metrics={took}),")
    return [*lines, "]"]


def shown(stdout: str) -> list[str]:
    """`runs show`'s metrics block, from ``RunMetrics(`` on, indentation stripped."""
    lines = [line.strip() for line in stdout.splitlines()]
    return lines[lines.index("RunMetrics("):]


def session_runs(app: AgnoApp, session_id: str) -> list[Any]:
    """Every run of a session (member runs included) as agno's own ``PostgresDb.get_run`` returns it."""
    with psycopg.connect(app.db_url) as conn:
        ids = [r[0] for r in conn.execute("SELECT run_id FROM ai.agno_runs WHERE session_id = %s", (session_id,))]
    return [app.db.get_run(run_id) for run_id in ids]


def test_runs_show_prints_what_agno_reports(db_url: str, sim_url: str) -> None:
    async def write() -> list[Any]:
        app = AgnoApp(db_url, sim_url)
        try:
            agent = await app.run(app.agent())  # one tool call
            team = await app.run(app.team())  # the leader delegates to a member
            members = [r for r in session_runs(app, team.session_id) if r.parent_run_id == team.run_id]
            failed = await app.run(app.agent("Unreachable", base_url=f"http://127.0.0.1:{free_port()}/v1"))
            return [agent, team, members, failed]
        finally:
            await app.close()

    agent, team, members, failed = asyncio.run(write())
    assert agent.tools and agent.metrics.total_tokens > 0 and failed.status.value == "ERROR" and len(members) == 1
    for out in (agent, team, *members, failed):
        proc = cli("runs", "show", out.run_id, "--db-url", db_url)
        assert proc.returncode == 0, proc.stderr
        assert shown(proc.stdout) == expected_run_lines(out), proc.stdout
        first = proc.stdout.splitlines()[0]
        status = getattr(out.status, "value", out.status)  # member runs come back with a plain string
        assert first.startswith(f"Run {out.run_id}: ") and f", {status}, session {out.session_id}" in first
    assert f"  member run of {team.run_id}" in cli("runs", "show", members[0].run_id, "--db-url", db_url).stdout
    failed_out = cli("runs", "show", failed.run_id, "--db-url", db_url).stdout
    assert "  error (APIConnectionError): Connection error." in failed_out
    assert "total_tokens=0," in failed_out  # no tokens is shown as 0, not left out


def session_rows(stdout: str) -> dict[str, tuple[str, str, str]]:
    """`sessions show`'s comparison table: field -> (sum of its runs, agno's session_metrics, mark)."""
    out = {}
    for line in stdout.splitlines():
        m = re.fullmatch(r"  (\w+_tokens|cost)\s+(\S+)\s+(\S+)(?:\s+(differs))?", line)
        if m:
            out[m.group(1)] = (m.group(2), m.group(3), m.group(4) or "")
    return out


def listed_runs(stdout: str) -> dict[str, tuple[int, str, int]]:
    """`sessions show`'s run list: run id -> (depth, status, total_tokens)."""
    out = {}
    for line in stdout.splitlines():
        m = re.fullmatch(r"  ( *)([0-9a-f-]{36})\s+\w+\s+.+?\s+([A-Z]+)\s+\d+\s+\d+\s+(\d+)", line)
        if m:
            out[m.group(2)] = (len(m.group(1)) // 2, m.group(3), int(m.group(4)))
    return out


def runs_total(outs: Sequence[Any], field: str) -> int:
    """A field summed over runs, from agno's RunOutput objects."""
    return sum(getattr(out.metrics, field) if out.metrics else 0 for out in outs)


def test_sessions_show_sums_the_runs_beside_agnos_stored_totals(db_url: str, sim_url: str) -> None:
    async def write() -> dict[str, Any]:
        app = AgnoApp(db_url, sim_url)
        try:
            team = app.team()
            calm = str(uuid.uuid4())  # two runs one after another: agno's session totals are right
            for _ in range(2):
                await app.run(team, session_id=calm)
            calm_runs = session_runs(app, calm)
            calm_stored = await team.aget_session_metrics(session_id=calm)
            busy = str(uuid.uuid4())  # three at once: agno's read-modify-write of the session loses updates
            await asyncio.gather(*(app.run(team, session_id=busy) for _ in range(3)))
            busy_runs = session_runs(app, busy)
            busy_stored = await team.aget_session_metrics(session_id=busy)
            broken = app.agent("Unreachable", base_url=f"http://127.0.0.1:{free_port()}/v1")
            failed = str(uuid.uuid4())  # every run errored: no tokens anywhere
            for _ in range(2):
                await app.run(broken, session_id=failed)
            failed_runs = session_runs(app, failed)
            return {"calm": (calm, calm_runs, calm_stored), "busy": (busy, busy_runs, busy_stored),
                    "failed": (failed, failed_runs)}
        finally:
            await app.close()

    data = asyncio.run(write())

    calm, calm_runs, calm_stored = data["calm"]
    proc = cli("sessions", "show", calm, "--db-url", db_url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == f"Session {calm}: team 'FinanceTeam', 4 run(s)"
    # each team run at the top, its member run under it
    assert listed_runs(proc.stdout) == {out.run_id: (1 if out.parent_run_id else 0, "COMPLETED",
                                                     out.metrics.total_tokens) for out in calm_runs}
    assert sum(1 for out in calm_runs if out.parent_run_id) == 2
    rows = session_rows(proc.stdout)
    for f in ALWAYS:
        assert rows[f] == (str(runs_total(calm_runs, f)), str(getattr(calm_stored, f)), "")
    assert "agno's stored session totals agree with the sum of the session's runs." in proc.stdout

    busy, busy_runs, busy_stored = data["busy"]
    proc = cli("sessions", "show", busy, "--db-url", db_url)
    rows = session_rows(proc.stdout)
    assert rows["total_tokens"][:2] == (str(runs_total(busy_runs, "total_tokens")), str(busy_stored.total_tokens))
    assert runs_total(busy_runs, "total_tokens") != busy_stored.total_tokens, "agno's lost update did not reproduce"
    for f in ALWAYS:
        summed, stored = runs_total(busy_runs, f), getattr(busy_stored, f)
        assert rows[f] == (str(summed), str(stored), "differs" if summed != stored else "")
    assert "agno's stored session totals disagree with the sum of the session's runs (" in proc.stdout

    failed, failed_runs = data["failed"]
    proc = cli("sessions", "show", failed, "--db-url", db_url)
    assert {run_id: v[1:] for run_id, v in listed_runs(proc.stdout).items()} == {
        out.run_id: ("ERROR", 0) for out in failed_runs}
    assert session_rows(proc.stdout) == {f: ("0", "0", "") for f in ALWAYS}  # zeros, not blank


def test_not_found_reads_the_same_for_runs_and_sessions(db_url: str, sim_url: str) -> None:
    from tests.e2e.test_exactly_once import write_runs

    # no agno tables in the schema at all
    assert one_line_error(cli("runs", "show", "nope", "--db-url", db_url)) == (
        "no run 'nope' in schema 'ai': it has no agno tables (check --schema and --session-table)")
    assert one_line_error(cli("sessions", "show", "nope", "--db-url", db_url)) == (
        "no session 'nope' in schema 'ai': it has no agno tables (check --schema and --session-table)")
    asyncio.run(write_runs(db_url, sim_url, 1))
    runs = cli("runs", "show", "nope", "--db-url", db_url)
    sessions = cli("sessions", "show", "nope", "--db-url", db_url)
    assert runs.returncode == sessions.returncode == 1
    assert one_line_error(runs) == "no run 'nope' in ai.agno_runs"
    assert one_line_error(sessions) == "no session 'nope' in ai.agno_sessions"


@pytest.mark.slow
def test_show_on_an_agno2_database(db_url: str, sim_url: str, agno2_python: str) -> None:
    """agno 2.x keeps runs in the session row's ``runs`` array: both commands read them there, and print
    what agno 2.9's own API reported for every run and session."""
    from tests.helpers.agno2_support import write_agno2

    result = write_agno2(agno2_python, db_url, sim_url, "basic")
    runs = {r["run_id"]: r for r in result["runs"]}
    for r in runs.values():
        proc = cli("runs", "show", r["run_id"], "--db-url", db_url)
        assert proc.returncode == 0, proc.stderr
        m = r["metrics"] or {}
        for f in ALWAYS:
            assert f"{f}={m.get(f, 0)}," in shown(proc.stdout), (r["label"], f, proc.stdout)
        assert proc.stdout.splitlines()[0].startswith(f"Run {r['run_id']}: ")
    for sess in result["sessions"]:
        proc = cli("sessions", "show", sess["session_id"], "--db-url", db_url)
        assert proc.returncode == 0, proc.stderr
        mine = {run_id for run_id, r in runs.items() if r["session_id"] == sess["session_id"]}
        assert set(listed_runs(proc.stdout)) == mine, proc.stdout
        stored = sess["metrics"] or {}
        for f in ALWAYS:
            summed = sum((runs[run_id]["metrics"] or {}).get(f, 0) for run_id in mine)
            assert session_rows(proc.stdout)[f] == (str(summed), str(stored.get(f, 0)), ""), proc.stdout
