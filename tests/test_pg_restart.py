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
from scrape import Samples, scrape_text
from test_collect_e2e import make_service
from test_exactly_once import stored_tokens, write_runs

from exporter.embedded import start_embedded


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
                for _ in range(100):
                    await asyncio.sleep(0.1)
                    if Samples(await scrape_text(service.port)).sum("agno_runs_total") == 2:
                        break
                nonlocal pg
                pg.stop()  # the server goes away
                stopped = time.monotonic()
                await asyncio.sleep(1.0)
                s = Samples(await scrape_text(service.port))
                assert s.sum("agno_exporter_up") == 0 and s.sum("agno_exporter_poll_errors_total") > 0
                async with aiohttp.ClientSession() as http, \
                        http.get(f"http://127.0.0.1:{service.port}/readyz") as r:
                    assert r.status == 503
                pg = start_embedded(datadir)  # ... and comes back
                restarted = time.monotonic()
                for _ in range(200):
                    await asyncio.sleep(0.05)
                    if Samples(await scrape_text(service.port)).sum("agno_exporter_up") == 1:
                        break
                recovery = time.monotonic() - restarted
                print(f"down for {restarted - stopped:.1f}s; recovered {recovery:.2f}s after the restart")
                await write_runs(url, sim_url, 2)
                for _ in range(100):
                    await asyncio.sleep(0.1)
                    s = Samples(await scrape_text(service.port))
                    if s.sum("agno_runs_total") == 4:
                        break
                with psycopg.connect(url) as conn:
                    truth = stored_tokens(conn)
                assert s.sum("agno_runs_total") == 4 and s.sum("agno_tokens_total") == truth
                return recovery
            finally:
                await service.stop()

        recovery = asyncio.run(main())
        assert recovery < 5.0
    finally:
        pg.stop()
        shutil.rmtree(datadir, ignore_errors=True)
