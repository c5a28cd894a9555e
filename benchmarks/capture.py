"""Real agno rows to multiply: run agno 3.x agents and teams once against the simulated model.

The generator never invents agno's JSON: every generated row is a copy of a row agno itself wrote
here (agents with and without tools, a failing tool, a streamed run with time to first token,
cached input tokens, a team with two members, a run that failed on an unreachable endpoint),
captured with the product's own agent builders and the tests' agno app.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from exporter.config import AgentSpec, ModelSpec, TeamSpec
from exporter.probes.agents import LlmTarget, build_agent, build_team, close_models, quiet_agno_logs, runner_models
from exporter.probes.simllm import start_server
from exporter.probes.simplan import SimSettings

# (runner, prompt, streamed, runs in one session). Model ids are ones the simulated server serves.
_AGENTS = {
    "StockAgent": AgentSpec(name="StockAgent", model=ModelSpec(id="gpt-4o-mini"), tools=("calculator",)),
    "ResearchAgent": AgentSpec(name="ResearchAgent", model=ModelSpec(id="gpt-4o"), tools=("calculator",)),
    "SupportAgent": AgentSpec(name="SupportAgent", model=ModelSpec(id="sim-small")),
    "FlakyAgent": AgentSpec(name="FlakyAgent", model=ModelSpec(id="gpt-4o-mini"), tools=("fail",)),
    "OfflineAgent": AgentSpec(name="OfflineAgent", model=ModelSpec(id="gpt-4o-mini", base_url="http://127.0.0.1:9/v1")),
}
_TEAM = TeamSpec(name="FinanceTeam", model=ModelSpec(id="gpt-4o"),
                 members=(_AGENTS["StockAgent"], AgentSpec(name="NewsAgent", model=ModelSpec(id="sim-small"))))
_SCENARIOS: tuple[tuple[str, str, bool, int], ...] = (
    ("StockAgent", "Add up the prices of NVDA and AMD.", False, 3),
    ("ResearchAgent", "Multiply 12 by 7 and explain the outlook for MSFT.", False, 2),
    ("SupportAgent", "Give a two-sentence market summary for AAPL.", True, 2),
    ("FlakyAgent", "Use the fail tool, then explain what happened.", False, 1),
    ("OfflineAgent", "Anything.", False, 1),
    ("FinanceTeam", "Ask StockAgent to add up the prices of NVDA and AMD.", False, 2),
)


@dataclass(frozen=True)
class Captured:
    """A top-level run as agno stored it, with its member runs (same session) and its session row."""

    rows: tuple[dict[str, Any], ...]  # every column of agno_runs; the top-level run first
    session: dict[str, Any]  # every column of agno_sessions

    @property
    def run_type(self) -> str:
        return str(self.rows[0]["run_type"])


async def _run_scenarios(db_url: str) -> None:
    from tests.helpers.agno_app import AgnoApp

    quiet_agno_logs(logging.CRITICAL)
    sim = await start_server(SimSettings(ttft=0.002, ttft_jitter=0.0, per_token=0.0, cached_fraction=0.25, seed=7))
    app = AgnoApp(db_url, sim.url)
    llm = LlmTarget.simulated(sim.url)
    models = []
    try:
        for name, prompt, stream, runs in _SCENARIOS:
            runner = (build_team(_TEAM, app.db, llm) if name == "FinanceTeam"
                      else build_agent(_AGENTS[name], app.db, llm))
            models.extend(runner_models(runner))
            session_id = None
            for _ in range(runs):
                out = await app.run(runner, prompt, stream=stream, session_id=session_id)
                session_id = out.session_id
    finally:
        await close_models(models)
        await app.close()
        await sim.close()


def capture(db_url: str) -> list[Captured]:
    """Run the scenarios into ``db_url`` (agno creates its tables there) and read the rows back."""
    asyncio.run(_run_scenarios(db_url))
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        rows = conn.execute("SELECT * FROM ai.agno_runs ORDER BY created_at, run_id").fetchall()
        sessions = {r["session_id"]: r for r in conn.execute("SELECT * FROM ai.agno_sessions").fetchall()}
    children: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["parent_run_id"]:
            children.setdefault(r["parent_run_id"], []).append(r)
    out = [Captured((r, *children.get(r["run_id"], [])), sessions[r["session_id"]])
           for r in rows if not r["parent_run_id"]]
    if not any(c.run_type == "team" and len(c.rows) > 1 for c in out):
        raise RuntimeError("capture: no team run with member runs was stored; agno's storage changed?")
    return out


def describe(captured: list[Captured]) -> str:
    sizes = [len(json.dumps(r["run_data"])) for c in captured for r in c.rows]
    statuses = sorted({r["status"] for c in captured for r in c.rows})
    names = sorted({r["run_data"].get("agent_name") or r["run_data"].get("team_name")
                    for c in captured for r in c.rows})
    return (f"{len(sizes)} real agno rows ({len(captured)} top-level runs; {', '.join(statuses)}; "
            f"{', '.join(map(str, names))}), run_data {min(sizes)}-{max(sizes)} bytes")
