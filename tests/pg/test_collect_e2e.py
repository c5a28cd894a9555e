"""End to end: real agno runs in real Postgres -> collector -> /metrics equals agno's own numbers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg

from exporter.commands.service import Service
from exporter.config import load_settings
from exporter.sinks.prometheus.prices import PriceTable
from tests.helpers.agno_app import AgnoApp
from tests.helpers.scrape import Samples, scrape_text
from tests.helpers.support import DEADLINE
from tests.helpers.truth import assert_matches_agno, run_truth


def make_service(db_url: str, **sections: dict[str, Any]) -> Service:
    overrides: dict[str, dict[str, Any]] = {
        "database": {"url": db_url},
        "web": {"listen": "127.0.0.1:0"},
        "collector": {"poll_interval": "100ms"},
    }
    for k, v in sections.items():
        overrides.setdefault(k, {}).update(v)
    return Service(load_settings(None, environ={}, overrides=overrides))


async def wait_counted(service: Service, n: int, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while True:
        total = sum(v.total for v in service.store.series("agno_runs").values())
        if total >= n and service.collector.ready:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {n} runs counted, have {total} after {timeout:g}s")
        await asyncio.sleep(0.05)


def stored_runs(db_url: str) -> list[dict[str, Any]]:
    with psycopg.connect(db_url, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(
            "SELECT run_id, session_id, run_type, status, parent_run_id FROM ai.agno_runs ORDER BY created_at"
        ).fetchall()


def test_metrics_equal_agno_api(db_url: str, sim_url: str) -> None:
    async def main() -> None:
        app = AgnoApp(db_url, sim_url)
        try:
            await scenario(app)
        finally:
            await app.close()

    async def scenario(app: AgnoApp) -> None:
        agent = app.agent()
        team = app.team()
        plain = app.agent("PlainAgent", tools=False)
        broken = app.agent("BrokenAgent", base_url="http://127.0.0.1:9/v1")
        await app.run(agent)  # tool call, non-streamed
        await app.run(agent, stream=True)  # streamed
        sess = (await app.run(plain)).session_id
        await app.run(plain, "And tomorrow?", session_id=sess)  # second run in the same session
        await app.run(team)  # team leader + member run
        await app.run(broken)  # ERROR run
        runs = stored_runs(db_url)
        assert len(runs) == 7

        # What agno's own API reports for each run.
        by_type: dict[str, Any] = {"agent": agent, "team": team}
        truth = []
        for r in runs:
            out = await by_type[r["run_type"]].aget_run_output(run_id=r["run_id"], session_id=r["session_id"])
            assert out is not None and out.metrics is not None
            truth.append((r, out))

        service = make_service(db_url)
        await service.start()
        try:
            await wait_counted(service, len(runs))
            s = Samples(await scrape_text(service.port))
        finally:
            await service.stop()

        # Every run figure equals the sum of agno's own per-run numbers.
        agno_says = [run_truth(out) for _, out in truth]
        assert [t["status"] for t in agno_says] == [r["status"] for r, _ in truth]
        assert_matches_agno(s, agno_says)
        # Cost: as agno reports it (the simulated provider reports none), else the price table's arithmetic
        # on agno's own per-model details.
        assert s.sum("agno_cost_usd_total", source="reported") == sum(out.metrics.cost or 0 for _, out in truth)
        gpt = PriceTable().lookup("gpt-4o-mini")
        assert gpt is not None
        estimated = sum((d.input_tokens - d.cache_read_tokens) * gpt.input + d.cache_read_tokens * gpt.cached_input
                        + d.output_tokens * gpt.output
                        for _, out in truth for ds in (out.metrics.details or {}).values() for d in ds) / 1e6
        assert abs(s.sum("agno_cost_usd_total", source="estimated") - estimated) < 1e-12
        assert s.sum("agno_runs_total", run_type="team") == 1
        assert s.sum("agno_runs_total", status="ERROR", name="BrokenAgent") == 1


        # Sessions: agno's session metrics equal the sum of the session's runs (run one after another).
        assert s.sum("agno_sessions_total") == len({r["session_id"] for r in runs})
        top = {labels["session_id"]: v for labels, v in s.by_name["agno_session_top_tokens"]}
        for session_id in {r["session_id"] for r in runs}:
            runner = team if any(r["run_type"] == "team" and r["session_id"] == session_id for r in runs) else agent
            sm = await runner.aget_session_metrics(session_id=session_id)
            expected = (sm.input_tokens + sm.output_tokens) if sm else 0
            assert top.get(session_id, 0) == expected, session_id

    asyncio.run(main())
