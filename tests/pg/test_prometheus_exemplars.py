"""A real Prometheus (exemplar storage on) scraping a running exporter fed by real agno runs: the
histogram exemplars it stores name the trace of each run (the trace of the top-level run for a
team member), so Grafana can jump from a TTFT bucket to the run's trace."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from exporter.records.ids import trace_id_hex
from tests.helpers.agno_app import AgnoApp
from tests.helpers.prom_server import PromServer, prometheus_binary
from tests.helpers.scrape import Samples, scrape_text
from tests.helpers.support import DEADLINE
from tests.pg.test_collect_e2e import make_service, wait_counted
from tests.pg.test_traces_e2e import stored_rows, top_level_of

TTFT_BUCKETS = "agno_run_time_to_first_token_seconds_bucket"


def exemplars_by_series(result: list[dict[str, Any]]) -> dict[str, list[tuple[str, float]]]:
    """``name`` label of each series -> (trace_id, value) of its exemplars."""
    out: dict[str, list[tuple[str, float]]] = {}
    for series in result:
        name = series["seriesLabels"].get("name", "")
        for ex in series["exemplars"]:
            out.setdefault(name, []).append((ex["labels"].get("trace_id", ""), float(ex["value"])))
    return out


def test_prometheus_stores_exemplars_naming_the_runs_traces(db_url: str, sim_url: str) -> None:
    prometheus_binary()  # before any work: a missing prometheus skips at once

    async def main() -> None:
        service = make_service(db_url)
        await service.start()
        prom: PromServer | None = None
        try:
            # Prometheus applies its target list ~5 s after start: start it before the runs are written.
            prom = await asyncio.to_thread(PromServer([f"127.0.0.1:{service.port}"]).start)
            app = AgnoApp(db_url, sim_url)
            try:
                await app.run(app.agent("ExemplarAgent"))  # tool call, non-streamed
                await app.run(app.agent("StreamedAgent", tools=False), stream=True)
                await app.run(app.team("ExemplarTeam"))  # team + StockAgent member run
            finally:
                await app.close()
            rows = await asyncio.to_thread(stored_rows, db_url)
            assert len(rows) == 4, [r["run_type"] for r in rows.values()]
            await wait_counted(service, len(rows))
            roots = top_level_of(rows)
            # Each run is alone in its series (one name each): its TTFT is the one exemplar there.
            expected = {
                r["run_data"].get("agent_name") or r["run_data"].get("team_name"): (
                    trace_id_hex(roots[run_id]), float(r["run_data"]["metrics"]["time_to_first_token"]))
                for run_id, r in rows.items()
            }
            assert set(expected) == {"ExemplarAgent", "StreamedAgent", "ExemplarTeam", "StockAgent"}

            # The exporter offers the exemplars in OpenMetrics (what Prometheus negotiates).
            om = Samples(await scrape_text(service.port, accept="application/openmetrics-text; version=1.0.0"))
            assert om.sum("agno_run_time_to_first_token_seconds_count") == len(rows)

            start = time.time() - 3600
            found: dict[str, list[tuple[str, float]]] = {}
            deadline = time.monotonic() + DEADLINE
            while True:
                result = await asyncio.to_thread(prom.query_exemplars, TTFT_BUCKETS, start, time.time() + 3600)
                found = exemplars_by_series(result)
                if set(found) >= set(expected) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            targets = await asyncio.to_thread(prom.targets_health)
            assert set(found) >= set(expected), (found, targets, prom.log_tail())
            assert [t["health"] for t in targets] == ["up"], targets
        finally:
            if prom is not None:
                await asyncio.to_thread(prom.stop)
            await service.stop()

        for name, (trace_id, ttft) in expected.items():
            got = found[name]
            assert [t for t, _ in got] == [trace_id], (name, got)  # the member's names the team's trace
            assert math.isclose(got[0][1], ttft, rel_tol=1e-9), (name, got, ttft)
        # the member's exemplar names its team's trace, not a trace of its own
        member = next(r for r in rows.values() if r["parent_run_id"])
        assert expected["StockAgent"][0] == trace_id_hex(member["parent_run_id"])

    asyncio.run(main())
