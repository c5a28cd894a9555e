"""What Prometheus sees: promtool lints the exposition; OpenMetrics carries exemplars; health endpoints."""

from __future__ import annotations

import asyncio
import subprocess

import aiohttp

from exporter.records.ids import trace_id_hex
from tests.helpers.agno_app import AgnoApp
from tests.helpers.scrape import scrape_text
from tests.helpers.support import system_tool
from tests.pg.test_collect_e2e import make_service, wait_counted


def promtool() -> str:
    """Debian's promtool; skips the test (fails it under CI) when it is not installed."""
    return system_tool("promtool")


def test_exposition_passes_promtool_and_has_exemplars(db_url: str, sim_url: str) -> None:
    lint = promtool()  # before any work: a missing promtool skips at once

    async def main() -> tuple[str, str, str]:
        app = AgnoApp(db_url, sim_url)
        try:
            out = await app.run(app.agent())
            await app.run(app.team())
        finally:
            await app.close()
        service = make_service(db_url)
        await service.start()
        try:
            await wait_counted(service, 3)
            text = await scrape_text(service.port)
            om = await scrape_text(service.port, accept="application/openmetrics-text; version=1.0.0")
        finally:
            await service.stop()
        return text, om, out.run_id

    text, om, run_id = asyncio.run(main())
    proc = subprocess.run([lint, "check", "metrics"], input=text, capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc.stdout + proc.stderr
    assert om.rstrip().endswith("# EOF")
    assert f'trace_id="{trace_id_hex(run_id)}"' in om  # the TTFT/duration buckets link to the run's trace
    assert "agno_exporter_build_info{" in text and "agno_exporter_up 1.0" in text


def test_health_endpoints_and_landing_page(db_url: str) -> None:
    async def main() -> None:
        service = make_service(db_url.replace("/t_", "/missing_"), collector={"poll_interval": "50ms"})
        await service.start()
        try:
            async with aiohttp.ClientSession() as s:
                base = f"http://127.0.0.1:{service.port}"
                async with s.get(base + "/healthz") as r:
                    assert r.status == 200
                await asyncio.sleep(0.3)
                async with s.get(base + "/readyz") as r:
                    assert r.status == 503  # database does not exist: not ready, but the process runs
                async with s.get(base + "/") as r:
                    page = await r.text()
                    assert "/metrics" in page and "agno-exporter" in page
                async with s.get(base + "/metrics") as r:
                    assert "agno_exporter_up 0.0" in await r.text()
        finally:
            await service.stop()
        good = make_service(db_url)
        await good.start()
        try:
            await wait_counted(good, 0)
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{good.port}/readyz") as r:
                assert r.status == 200
        finally:
            await good.stop()

    asyncio.run(main())
