"""A real PostgreSQL restart under a running exporter: it reports down, recovers by itself, exact totals.

Uses a PostgreSQL of its own (embedded) so restarting it disturbs no other test.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time

import aiohttp
import psycopg
import pytest

from exporter.embedded import start_embedded
from tests.e2e.test_exactly_once import stored_tokens, write_runs
from tests.helpers.scrape import scrape_until
from tests.helpers.support import DEADLINE
from tests.pg.test_collect_e2e import make_service


@pytest.mark.slow
def test_exporter_survives_a_postgres_restart(sim_url: str) -> None:
    datadir = tempfile.mkdtemp(prefix="aerst-")
    pg = start_embedded(datadir)  # not ephemeral: the data must survive the restart
    url = pg.url
    try:
        asyncio.run(write_runs(url, sim_url, 2))

        async def main() -> float:
            service = make_service(url, collector={"poll_interval": "100ms", "max_backoff": "1s"})
            await service.start()
            try:
                await scrape_until(service.port, lambda s: s.sum("agno_runs_total") == 2)
                nonlocal pg
                pg.stop()  # the server goes away
                stopped = time.monotonic()
                s = await scrape_until(service.port, lambda s: s.sum("agno_exporter_up") == 0)
                assert s.sum("agno_exporter_up") == 0 and s.sum("agno_exporter_poll_errors_total") > 0
                async with aiohttp.ClientSession() as http, \
                        http.get(f"http://127.0.0.1:{service.port}/readyz") as r:
                    assert r.status == 503
                pg = start_embedded(datadir)  # ... and comes back
                restarted = time.monotonic()
                s = await scrape_until(service.port, lambda s: s.sum("agno_exporter_up") == 1)
                assert s.sum("agno_exporter_up") == 1, "did not recover after the restart"
                recovery = time.monotonic() - restarted
                print(f"down for {restarted - stopped:.1f}s; recovered {recovery:.2f}s after the restart")
                await write_runs(url, sim_url, 2)
                s = await scrape_until(service.port, lambda s: s.sum("agno_runs_total") == 4)
                with psycopg.connect(url) as conn:
                    truth = stored_tokens(conn)
                assert s.sum("agno_runs_total") == 4 and s.sum("agno_tokens_total") == truth
                return recovery
            finally:
                await service.stop()

        recovery = asyncio.run(main())
        # max_backoff is 1 s: recovery waits at most one backoff and one poll, unless the machine is slow
        assert recovery < DEADLINE
    finally:
        pg.stop()
        shutil.rmtree(datadir, ignore_errors=True)
