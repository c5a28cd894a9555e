"""The opt-in wake-up on agno 2.x's session table: real agno 2.9 writes the runs, the trigger on its
session table wakes the collector (the poll interval is an hour)."""

from __future__ import annotations

import asyncio

import pytest

from exporter.ingest.notify import TRIGGER
from tests.helpers.agno2_support import write_agno2
from tests.helpers.support import eventually
from tests.pg.test_collect_e2e import make_service, wait_counted
from tests.pg.test_notify import HOUR, listening, run_cli, sample


@pytest.mark.slow
def test_agno2_session_table_wakes_the_collector(db_url: str, sim_url: str, agno2_python: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """agno 2.x keeps runs in the session row: the trigger on the session table wakes the collector."""
    first = write_agno2(agno2_python, db_url, sim_url, "many", n=1, concurrency=1)["runs"]

    async def scenario() -> None:
        assert await run_cli("create-notify-trigger", db_url) == 0
        assert f"created trigger {TRIGGER} on ai.agno_sessions" in capsys.readouterr().out
        service = make_service(db_url, collector={"poll_interval": HOUR})
        await service.start()
        try:
            await wait_counted(service, len(first))
            await eventually(lambda: listening(service), "the LISTEN connection")
            notified = sample(service, "agno_exporter_wakeups_total", reason="notify")
            more = (await asyncio.to_thread(write_agno2, agno2_python, db_url, sim_url, "many", n=1,
                                            concurrency=1))["runs"]
            await wait_counted(service, len(first) + len(more))
            assert sample(service, "agno_exporter_wakeups_total", reason="notify") > notified
            assert sample(service, "agno_exporter_wakeups_total", reason="interval") == 0
        finally:
            await service.stop()

    asyncio.run(scenario())
