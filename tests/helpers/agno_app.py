"""A real agno app for tests: agents and teams on PostgresDb, fired with arun(background=True).

This is what users run; the tests write their data through it (never hand-made rows, except in the
malformed-input tests) and compare the exporter's numbers with agno's own API.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from agno.agent import Agent
from agno.db.postgres import PostgresDb
from agno.models.openai import OpenAIChat
from agno.run.base import RunStatus
from agno.team import Team

from tests.helpers.support import DEADLINE, sqlalchemy_url

DONE = {RunStatus.completed, RunStatus.error, RunStatus.cancelled}


def get_stock_price(symbol: str) -> str:
    """Get the current stock price for a ticker symbol."""
    return f"{symbol}: 123.45"


@dataclass
class AgnoApp:
    db_url: str
    llm_url: str
    session_table: str | None = None  # PostgresDb(session_table=...): its runs go to <session_table>_runs

    def __post_init__(self) -> None:
        self.db = PostgresDb(db_url=sqlalchemy_url(self.db_url), session_table=self.session_table)
        self._models: list[OpenAIChat] = []

    def model(self, base_url: str | None = None) -> OpenAIChat:
        m = OpenAIChat(id="gpt-4o-mini", base_url=base_url or self.llm_url, api_key="sim", max_retries=0)
        self._models.append(m)
        return m

    def agent(self, name: str = "BackgroundMetricsAgent", tools: bool = True, base_url: str | None = None,
              **kw: Any) -> Agent:
        return Agent(name=name, model=self.model(base_url), db=self.db,
                     tools=[get_stock_price] if tools else [], telemetry=False, **kw)

    def team(self, name: str = "FinanceTeam") -> Team:
        member = self.agent("StockAgent")
        return Team(name=name, model=self.model(), members=[member], db=self.db, telemetry=False)

    async def run(self, runner: Agent | Team, prompt: str = "What is the stock price of AAPL?",
                  stream: bool = False, session_id: str | None = None) -> Any:
        """Fire one background run and wait (as the seed does) until agno stored its final state."""
        if stream:
            # agno's background=True with stream=True needs AgentOS (fastapi); a streamed run in the
            # foreground is persisted by agno exactly the same way.
            last: Any = None
            async for event in runner.arun(prompt, stream=True, session_id=session_id,  # type: ignore[union-attr]
                                           yield_run_output=True):
                last = event
            run_id, sid = last.run_id, last.session_id
        else:
            pending = await runner.arun(prompt, background=True, session_id=session_id)
            run_id, sid = pending.run_id, pending.session_id
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            out = await runner.aget_run_output(run_id=run_id, session_id=sid)
            if out is not None and out.status in DONE:
                return out
            await asyncio.sleep(0.05)
        raise AssertionError(f"run {run_id} did not finish in {DEADLINE:g}s")

    async def close(self) -> None:
        from agno.run.background import await_background_runs

        await await_background_runs(timeout=10)
        # agno keeps one openai client per model and never closes it.
        for m in self._models:
            for attr in ("async_client", "client"):
                client = getattr(m, attr, None)
                if client is not None:
                    close = client.close()
                    if asyncio.iscoroutine(close):
                        await close
        self.db.db_engine.dispose()
