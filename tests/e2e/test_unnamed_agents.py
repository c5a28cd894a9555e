"""Agents, teams and workflows created without a name (issue 16.5).

agno gives each such object a random id per instance ("plucky-galileo-630cc2d0" in agno 2.9/3.x, a
uuid4 before), and stores no ``agent_name``. With the common new-Agent-per-request pattern those ids
must not become ``name`` label values: unnamed runs share one label, and named agents keep their
own series however many unnamed instances ran before them (the label cap is never reached by them).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import psycopg
import pytest
from agno.agent import Agent
from agno.team import Team

from exporter.records.runs import TOKEN_FIELDS, UNNAMED
from exporter.records.values import run_label
from tests.helpers.agno_app import AgnoApp, get_stock_price
from tests.helpers.scrape import Samples, scrape_text, scrape_until
from tests.helpers.support import sqlalchemy_url
from tests.helpers.truth import run_truth
from tests.pg.test_collect_e2e import make_service, wait_counted

CAP = 4  # metrics.label_value_limit: unnamed, Alpha, Beta and support-desk fill it exactly
UNNAMED_AGENTS = 6  # each a new Agent(...) without a name, as a request handler creates them


@pytest.mark.parametrize("agno_id", ["plucky-galileo-630cc2d0", "grand-schrodinger-a7ac5714",
                                     "0b9f2c4e-8d1a-4f6b-9c3e-2a7d5e1f0c8b", "0B9F2C4E-8D1A-4F6B-9C3E-2A7D5E1F0C8B"])
def test_ids_agno_generates_are_never_labels(agno_id: str) -> None:
    assert run_label(None, agno_id) == UNNAMED
    assert run_label("", agno_id) == UNNAMED
    assert run_label("Support", agno_id) == "Support"


@pytest.mark.parametrize("chosen", ["support-desk", "billing", "team-a-2024", "grand-schrodinger"])
def test_ids_someone_chose_are_labels(chosen: str) -> None:
    assert run_label(None, chosen) == chosen


def test_ids_agno_generates_match_the_rule() -> None:
    """The installed agno's own generator (agno/utils/string.py) makes ids the rule recognises."""
    from agno.utils.string import generate_id_from_name

    for _ in range(200):
        assert run_label(None, generate_id_from_name(None)) == UNNAMED
    assert run_label(None, generate_id_from_name("Stock Agent")) == "stock-agent"


def expected_label(truth: dict[str, Any], entity_id: str) -> str:
    return truth["agent_name"] or truth["team_name"] or (entity_id if entity_id == "support-desk" else UNNAMED)


def test_unnamed_agents_share_one_label_and_never_crowd_out_named_ones(db_url: str, sim_url: str) -> None:
    async def write(app: AgnoApp) -> list[tuple[dict[str, Any], str, str]]:
        outs: list[tuple[Any, str]] = []
        for i in range(UNNAMED_AGENTS):  # a new unnamed agent per request, before any named one ran
            agent = Agent(model=app.model(), db=app.db, tools=[get_stock_price] if i % 2 else [], telemetry=False)
            outs.append((await app.run(agent), "agent"))
        for _ in range(2):  # unnamed teams with an unnamed member
            member = Agent(model=app.model(), tools=[get_stock_price], telemetry=False)
            team = Team(model=app.model(), members=[member], db=app.db, telemetry=False)
            outs.append((await app.run(team), "team"))
        outs.append((await app.run(Agent(id="support-desk", model=app.model(), db=app.db, telemetry=False)),
                     "agent"))
        outs.append((await app.run(app.agent("Alpha")), "agent"))
        outs.append((await app.run(app.agent("Beta", tools=False)), "agent"))
        outs.append((await app.run(app.agent("Alpha"), stream=True), "agent"))
        assert [t for _, t in outs].count("team") == 2
        # What agno stored and reports, for every row (team member runs included).
        readers = {"agent": Agent(model=app.model(), db=app.db, telemetry=False),
                   "team": Team(members=[], model=app.model(), db=app.db, telemetry=False)}
        with psycopg.connect(db_url, row_factory=psycopg.rows.dict_row) as conn:
            rows = conn.execute("SELECT run_id, session_id, run_type, agent_id, team_id FROM ai.agno_runs").fetchall()
        truth = []
        for r in rows:
            out = await readers[r["run_type"]].aget_run_output(run_id=r["run_id"], session_id=r["session_id"])
            assert out is not None and out.metrics is not None, r
            truth.append((run_truth(out), r["run_type"], r["agent_id"] or r["team_id"]))
        return truth

    async def main() -> None:
        app = AgnoApp(db_url, sim_url)
        try:
            truth = await write(app)
        finally:
            await app.close()
        # agno stored no name and a random id for every unnamed instance.
        unnamed_ids = {eid for t, _, eid in truth if not (t["agent_name"] or t["team_name"]) and eid != "support-desk"}
        assert len(unnamed_ids) == UNNAMED_AGENTS + 2 + 2  # agents, teams, team members: one id each
        service = make_service(db_url, metrics={"label_value_limit": CAP})
        await service.start()
        try:
            await wait_counted(service, len(truth))
            s = Samples(await scrape_text(service.port))
        finally:
            await service.stop()

        runs: dict[tuple[str, str], int] = defaultdict(int)
        tokens: dict[tuple[str, str], int] = defaultdict(int)
        for t, run_type, eid in truth:
            label = expected_label(t, eid)
            runs[(run_type, label)] += 1
            for f, ttype in TOKEN_FIELDS:
                tokens[(label, ttype)] += (t["metrics"] or {}).get(f, 0)
        assert s.group("agno_runs_total", "run_type", "name") == {k: float(v) for k, v in runs.items()}
        assert {k: v for k, v in s.group("agno_tokens_total", "name", "token_type").items() if v} == {
            k: float(v) for k, v in tokens.items() if v}
        # Named agents kept their own series; nothing was folded and no random id is a label value.
        assert runs[("agent", "Alpha")] == 2 and runs[("agent", "Beta")] == 1
        assert s.sum("agno_exporter_label_values_folded_total") == 0
        labels = {lbl.get("name") or lbl.get("gen_ai_agent_name") for fam in s.by_name.values() for lbl, _ in fam}
        assert not labels & unnamed_ids
        assert {v for v in labels if v} <= {UNNAMED, "Alpha", "Beta", "support-desk"}
        assert s.sum("gen_ai_client_token_usage_count", gen_ai_agent_name=UNNAMED) > 0

    asyncio.run(main())


UNNAMED_PROCESS = textwrap.dedent("""
    import asyncio, sys
    from agno.agent import Agent
    from agno.db.postgres import PostgresDb
    from agno.models.openai import OpenAIChat

    async def main():
        db = PostgresDb(db_url=sys.argv[1])
        for _ in range(3):  # a new unnamed agent per request; the model takes a minute to answer
            agent = Agent(model=OpenAIChat(id="gpt-4o-mini", base_url=sys.argv[2], api_key="sim", max_retries=0),
                          db=db, telemetry=False)
            await agent.arun("Think slowly [sim:ttft=60]", background=True)
        await asyncio.sleep(120)

    asyncio.run(main())
""")


def test_runs_in_progress_of_unnamed_agents_share_one_label(db_url: str, sim_url: str, tmp_path: Path) -> None:
    script = tmp_path / "unnamed_app.py"
    script.write_text(UNNAMED_PROCESS)
    proc = subprocess.Popen([sys.executable, str(script), sqlalchemy_url(db_url), sim_url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        running: list[tuple[str, str]] = []
        while time.monotonic() < deadline and len(running) < 3:
            time.sleep(0.1)
            try:
                with psycopg.connect(db_url) as conn:
                    running = conn.execute("SELECT run_id, agent_id FROM ai.agno_runs WHERE status = 'RUNNING'"
                                           ).fetchall()  # type: ignore[assignment]
            except psycopg.errors.UndefinedTable:
                continue
        assert len(running) == 3, "the app never started its three runs"
    finally:
        proc.send_signal(signal.SIGKILL)  # its runs stay RUNNING in agno's table
        proc.wait(10)
    assert len({agent_id for _, agent_id in running}) == 3  # three instances, three random ids

    async def main() -> None:
        service = make_service(db_url, metrics={"label_value_limit": 1})
        await service.start()
        try:
            s = await scrape_until(service.port, lambda s: s.sum("agno_runs_in_progress") == 3, timeout=30)
            assert s.group("agno_runs_in_progress", "run_type", "name", "status") == {
                ("agent", UNNAMED, "RUNNING"): 3.0}
        finally:
            await service.stop()

    asyncio.run(main())
