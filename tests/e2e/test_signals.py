"""Signals agno itself gets wrong: runs stuck in PENDING/RUNNING, and cost (see test_prices.py)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg

from tests.helpers.scrape import scrape_until
from tests.helpers.support import DEADLINE, sqlalchemy_url
from tests.pg.test_collect_e2e import make_service

AGENT_PROCESS = textwrap.dedent("""
    import asyncio, sys
    from agno.agent import Agent
    from agno.db.postgres import PostgresDb
    from agno.models.openai import OpenAIChat

    async def main():
        agent = Agent(name="SlowAgent", model=OpenAIChat(id="gpt-4o-mini", base_url=sys.argv[2], api_key="sim",
                      max_retries=0), db=PostgresDb(db_url=sys.argv[1]), telemetry=False)
        await agent.arun("Think slowly [sim:ttft=60]", background=True)
        await asyncio.sleep(120)

    asyncio.run(main())
""")


def test_run_left_pending_by_a_killed_process_is_stuck_until_finished(db_url: str, sim_url: str,
                                                                      tmp_path: Path) -> None:
    script = tmp_path / "agent_app.py"
    script.write_text(AGENT_PROCESS)
    proc = subprocess.Popen([sys.executable, str(script), sqlalchemy_url(db_url), sim_url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + DEADLINE
        status = None
        while time.monotonic() < deadline and status != "RUNNING":
            time.sleep(0.1)
            try:
                with psycopg.connect(db_url) as conn:
                    row = conn.execute("SELECT status FROM ai.agno_runs").fetchone()
                    status = row[0] if row else None
            except psycopg.errors.UndefinedTable:
                continue
        assert status == "RUNNING", "the agent process never started its run"
    finally:
        proc.send_signal(signal.SIGKILL)  # the app dies: agno never finishes the run
        proc.wait(10)

    async def main() -> None:
        service = make_service(db_url, collector={"stuck_after": "1s"})
        await service.start()
        try:
            # agno's created_at is whole seconds: "older than 1s" shows within 2s of the run's start
            s = await scrape_until(service.port, lambda s: s.sum("agno_runs_stuck") > 0)
            assert s.sum("agno_runs_stuck", name="SlowAgent", status="RUNNING") == 1
            assert s.sum("agno_runs_in_progress", name="SlowAgent") == 1
            assert s.sum("agno_runs_oldest_in_progress_age_seconds", name="SlowAgent") >= 1
            assert s.sum("agno_runs_total") == 0
            # Someone finishes it (agno's cancel/cleanup, or an operator): it is counted normally and
            # is no longer stuck.
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute("UPDATE ai.agno_runs SET status = 'CANCELLED',"
                             " updated_at = extract(epoch FROM now())::bigint")
            s = await scrape_until(service.port, lambda s: s.sum("agno_runs_total") > 0)
            assert s.sum("agno_runs_stuck") == 0 and s.sum("agno_runs_in_progress") == 0
            assert s.sum("agno_runs_total", name="SlowAgent", status="CANCELLED") == 1
        finally:
            await service.stop()

    asyncio.run(main())


def test_concurrent_runs_of_one_session_make_agnos_session_totals_disagree(db_url: str, sim_url: str) -> None:
    """The trap in tests/fixtures/README.md: agno's stored session totals lose updates under concurrency."""
    import uuid

    from tests.helpers.agno_app import AgnoApp

    async def main() -> None:
        app = AgnoApp(db_url, sim_url)
        try:
            team = app.team()
            session_id = str(uuid.uuid4())
            # Each model call takes 2 s, so the three runs surely overlap (each reads the session when
            # it starts and writes its totals back when it ends), however slow the machine.
            prompt = "What is the stock price of AAPL? [sim:ttft=2]"
            await asyncio.gather(*(app.run(team, prompt, session_id=session_id) for _ in range(3)))
            stored = await team.aget_session_metrics(session_id=session_id)
        finally:
            await app.close()
        with psycopg.connect(db_url) as conn:
            runs_total = conn.execute(
                "SELECT sum((run_data->'metrics'->>'input_tokens')::bigint + (run_data->'metrics'->>'output_tokens')"
                "::bigint) FROM ai.agno_runs WHERE session_id = %s", (session_id,)).fetchone()[0]  # type: ignore[index]
        assert stored is not None
        claimed = stored.input_tokens + stored.output_tokens
        service = make_service(db_url, collector={"session_check_delay": "100ms"})
        await service.start()
        try:
            s = await scrape_until(service.port, lambda s: s.sum("agno_runs_total") == 6 and bool(
                claimed == runs_total or s.sum("agno_session_disagreements_total")))
            # exported totals come from the runs, whatever agno's session row claims
            assert s.sum("agno_tokens_total", token_type="input") + s.sum("agno_tokens_total", token_type="output") \
                == runs_total
            top = {labels["session_id"]: v for labels, v in s.by_name["agno_session_top_tokens"]}
            assert top[session_id] == runs_total
            expected = 0 if claimed == runs_total else 1
            assert s.sum("agno_session_disagreements_total", run_type="team", name="FinanceTeam") == expected
            assert claimed != runs_total, "agno's lost update did not reproduce this time"
        finally:
            await service.stop()

    asyncio.run(main())
