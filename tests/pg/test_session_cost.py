"""Session cost: the top sessions' figures add up what their runs add to ``agno_cost_usd_total``.

Real agno agents and a team write the runs; one provider reports cost the way OpenRouter does
(``usage.cost``, which agno stores as the run's cost), the other reports none, so the exporter
estimates it from the price table. A session's ``agno_session_top_cost_usd`` by ``source`` must
equal the sum of its runs' exported cost by ``source``, and the reported part agno's own figure.
A state written before estimated session cost existed keeps loading.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import aiohttp
import psycopg
import pytest
from agno.team import Team
from aiohttp import web

from tests.helpers.agno_app import AgnoApp
from tests.helpers.scrape import Samples, scrape_text
from tests.pg.test_collect_e2e import make_service, wait_counted


async def start_cost_reporting_provider(upstream: str) -> tuple[web.AppRunner, str]:
    """An OpenAI-compatible provider in front of the simulated model that reports each completion's
    cost in ``usage.cost``, as OpenRouter does (a deterministic price: $2 per million tokens)."""
    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        assert not body.get("stream")
        async with aiohttp.ClientSession() as s, s.post(
                upstream + "/chat/completions", json=body,
                headers={"Authorization": request.headers.get("Authorization", "")}) as r:
            status, data = r.status, await r.json()
        if status == 200 and data.get("usage"):
            data["usage"]["cost"] = data["usage"]["total_tokens"] * 2e-6
        return web.json_response(data, status=status)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/v1"


def session_names(db_url: str) -> dict[str, set[str]]:
    """session id -> the agent and team names of its runs, as agno stored them."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT session_id, COALESCE(run_data->>'agent_name', run_data->>'team_name')"
                            " FROM ai.agno_runs").fetchall()
    out: dict[str, set[str]] = defaultdict(set)
    for sid, name in rows:
        out[sid].add(name)
    return out


def session_cost(s: Samples, session_id: str) -> dict[str, float]:
    return {source: s.sum("agno_session_top_cost_usd", session_id=session_id, source=source)
            for source in ("reported", "estimated")}


def runs_cost(s: Samples, names: set[str]) -> dict[str, float]:
    """What the runs of these agents/teams added to agno_cost_usd_total, by source."""
    return {source: sum(s.sum("agno_cost_usd_total", name=n, source=source) for n in names)
            for source in ("reported", "estimated")}


async def write_sessions(app: AgnoApp, reporting_url: str) -> dict[str, Any]:
    """Three sessions, each of agents/teams found in no other session: mixed, estimated only, reported only."""
    member = app.agent("ReportingMember", base_url=reporting_url)
    team = Team(name="CostTeam", model=app.model(), members=[member], db=app.db, telemetry=False)
    mixed = (await app.run(team, "Ask ReportingMember for the price of AAPL.")).session_id
    await app.run(team, "Ask ReportingMember for the price of MSFT.", session_id=mixed)
    priced = app.agent("PricedAgent", tools=False)
    estimated = (await app.run(priced)).session_id
    await app.run(priced, "And tomorrow?", session_id=estimated)
    reporting = app.agent("ReportingAgent", tools=False, base_url=reporting_url)
    reported = (await app.run(reporting)).session_id
    return {"mixed": (mixed, team), "estimated": (estimated, priced), "reported": (reported, reporting)}


def count_runs(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM ai.agno_runs").fetchone()
    assert row is not None
    return int(row[0])


def test_session_cost_is_the_sum_of_its_runs_exported_cost(db_url: str, sim_url: str) -> None:
    async def main() -> None:
        app = AgnoApp(db_url, sim_url)
        provider, reporting_url = await start_cost_reporting_provider(sim_url)
        try:
            sessions = await write_sessions(app, reporting_url)
            service = make_service(db_url)
            await service.start()
            try:
                await wait_counted(service, count_runs(db_url))
                s = Samples(await scrape_text(service.port))
            finally:
                await service.stop()
            names = session_names(db_url)
            assert {frozenset(names[sid]) for sid, _ in sessions.values()} == {
                frozenset({"CostTeam", "ReportingMember"}), frozenset({"PricedAgent"}), frozenset({"ReportingAgent"})}
            for kind, (sid, runner) in sessions.items():
                got, want = session_cost(s, sid), runs_cost(s, names[sid])
                assert got == pytest.approx(want, rel=1e-12, abs=1e-15), kind
                # agno's own session figure: the cost providers reported, member runs included
                sm = await runner.aget_session_metrics(session_id=sid)
                assert got["reported"] == pytest.approx(sm.cost or 0.0, rel=1e-12, abs=1e-15), kind
            mixed, estimated, reported = (session_cost(s, sessions[k][0]) for k in ("mixed", "estimated", "reported"))
            assert mixed["reported"] > 0 and mixed["estimated"] > 0  # a team on two providers: both sources
            assert estimated["reported"] == 0 and estimated["estimated"] > 0  # OpenAI-like: no longer $0
            assert reported["reported"] > 0 and reported["estimated"] == 0  # a reported cost is never re-estimated
            # the top sessions carry the whole cost of the runs counted
            assert sum(sum(session_cost(s, sid).values()) for sid, _ in sessions.values()) == pytest.approx(
                s.sum("agno_cost_usd_total"), rel=1e-12)
        finally:
            await app.close()
            await provider.cleanup()

    asyncio.run(main())


def test_a_state_from_before_estimated_session_cost_keeps_loading(db_url: str, sim_url: str) -> None:
    """The sessions of a state written before ``estimated_cost`` existed load with their reported
    cost and an estimate of 0; runs counted after the upgrade add their estimate."""
    async def main() -> None:
        app = AgnoApp(db_url, sim_url)
        try:
            agent = app.agent("PricedAgent", tools=False)
            sid = (await app.run(agent)).session_id
            service = make_service(db_url)
            await service.start()
            try:
                await wait_counted(service, 1)
                before = Samples(await scrape_text(service.port))
            finally:
                await service.stop()
            first_run = before.sum("agno_cost_usd_total", source="estimated")
            assert session_cost(before, sid) == {"reported": 0.0, "estimated": pytest.approx(first_run, rel=1e-12)}
            # The state as the previous release left it: reported cost only.
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute("ALTER TABLE agno_exporter.sessions DROP COLUMN estimated_cost")

            await app.run(agent, "And tomorrow?", session_id=sid)
            service = make_service(db_url)
            await service.start()
            try:
                await wait_counted(service, 2)
                after = Samples(await scrape_text(service.port))
            finally:
                await service.stop()
            second_run = after.sum("agno_cost_usd_total", source="estimated") - first_run
            assert second_run > 0
            assert after.sum("agno_session_top_tokens", session_id=sid) == sum(
                v for labels, v in after.by_name["agno_tokens_total"]
                if labels["token_type"] in ("input", "output"))
            assert session_cost(after, sid) == {"reported": 0.0, "estimated": pytest.approx(second_run, rel=1e-12)}
        finally:
            await app.close()

    asyncio.run(main())
