"""High availability: two replicas on one database; exactly one collects; kill -9 the leader, the
other takes over at one of its next polls, and totals stay exact across the handover.

The takeover time is printed (README, Reliability): on an idle machine half a second at a 200 ms
poll interval. The test bounds it by TAKEOVER: far above what a loaded machine needs, far below a
standby that would not try the lock at each poll or a lock left to a TCP timeout (keepalives: 30 s
idle + 3 x 10 s)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

import aiohttp
import psycopg
import pytest

from tests.e2e.test_exactly_once import stored_tokens, write_runs
from tests.helpers.scrape import Samples
from tests.helpers.support import DEADLINE, exporter_cmd, free_port

TAKEOVER = 20.0  # seconds from the leader's kill -9 to the standby leading


async def scrape(port: int) -> Samples | None:
    try:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
            return Samples(await r.text())
    except aiohttp.ClientError:
        return None


@pytest.mark.slow
def test_one_leader_then_failover_with_exact_totals(db_url: str, sim_url: str) -> None:
    asyncio.run(write_runs(db_url, sim_url, 3))
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update({"AGNO_EXPORTER_HA__ENABLED": "true", "AGNO_EXPORTER_COLLECTOR__POLL_INTERVAL": "200ms"})
    ports = [free_port(), free_port()]
    procs = [subprocess.Popen([*exporter_cmd(), "collect", "--db-url", db_url, "--listen", f"127.0.0.1:{p}"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in ports]

    async def main() -> None:
        try:
            # exactly one leader exports the totals; the standby exports none
            deadline = time.monotonic() + DEADLINE
            while True:
                await asyncio.sleep(0.1)
                got = [await scrape(p) for p in ports]
                if all(got) and sum(s.sum("agno_exporter_leader") for s in got if s) == 1 and any(
                        s and s.sum("agno_runs_total") == 3 for s in got):
                    break
                assert time.monotonic() < deadline, "no single leader emerged"
            assert [s.sum("agno_exporter_leader") for s in got if s] in ([1, 0], [0, 1])
            leader = 0 if got[0] and got[0].sum("agno_exporter_leader") == 1 else 1
            standby = 1 - leader
            assert got[standby] is not None and "agno_runs_total" not in got[standby].by_name

            procs[leader].send_signal(signal.SIGKILL)
            procs[leader].wait(10)
            killed_at = time.monotonic()
            await write_runs(db_url, sim_url, 2)
            took = None
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                s = await scrape(ports[standby])
                if s and s.sum("agno_exporter_leader") == 1 and took is None:
                    took = time.monotonic() - killed_at
                if s and s.sum("agno_runs_total") == 5:
                    break
            assert took is not None and took <= TAKEOVER, f"takeover took {took}s"
            with psycopg.connect(db_url) as conn:
                truth = stored_tokens(conn)
            assert s is not None and s.sum("agno_runs_total") == 5 and s.sum("agno_tokens_total") == truth
            print(f"takeover after kill -9 of the leader: {took:.2f}s")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    p.wait(10)

    asyncio.run(main())
