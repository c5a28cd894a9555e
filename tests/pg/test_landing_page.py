"""The landing page `/` over HTTP: what a person needs at a glance, each figure equal to its source.

Real agno runs in a real Postgres; the page's numbers are checked against agno's table and the
exporter's own /metrics, read in the same quiet moment (a long poll interval: one poll, then none).
"""

from __future__ import annotations

import asyncio
import html
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import psycopg
import pytest

from exporter.db import redact
from tests.helpers.agno_app import AgnoApp
from tests.helpers.prom_server import free_port
from tests.helpers.sched_support import until
from tests.helpers.scrape import Samples, scrape_text, scrape_until
from tests.helpers.support import with_database
from tests.pg.test_collect_e2e import make_service, wait_counted

pytestmark = pytest.mark.usefixtures("otel_env")

STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC \(((?:\d+[dhm] )?\d+[hms]) ago\)"


async def page(port: int) -> tuple[dict[str, str], str]:
    """The page's rows (label -> text) and its raw HTML."""
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/") as r:
        assert r.status == 200 and r.content_type == "text/html"
        text = await r.text()
    rows = {html.unescape(k): html.unescape(v)
            for k, v in re.findall(r"<tr(?: class=bad)?><th>(.*?)</th><td>(.*?)</td></tr>", text, re.S)}
    return rows, text


def finished_runs(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM ai.agno_runs WHERE status IN ('COMPLETED', 'ERROR')").fetchone()
    assert row is not None
    return int(row[0])


def test_landing_page_shows_the_exporter_at_a_glance(db_url: str, sim_url: str) -> None:
    async def main() -> None:
        app = AgnoApp(db_url, sim_url)
        try:
            await app.run(app.agent())  # a tool call
            await app.run(app.team())  # the leader's run and the member's
            await app.run(app.agent("BrokenAgent", base_url="http://127.0.0.1:9/v1"))  # ERROR
        finally:
            await app.close()
        runs = finished_runs(db_url)
        assert runs == 4
        # Traces on, the backend down: every run waits for span delivery.
        down = f"http://127.0.0.1:{free_port()}"
        service = make_service(db_url, collector={"poll_interval": "1h"}, traces={"endpoint": down})
        await service.start()
        try:
            await wait_counted(service, runs)
            s = await scrape_until(service.port, lambda s: s.sum("agno_exporter_trace_backlog_runs") == runs, 20)
            assert s.sum("agno_exporter_trace_backlog_runs") == runs
            rows, text = await page(service.port)
            after = Samples(await scrape_text(service.port))
        finally:
            await service.stop()
        assert rows["collector"] == "ready"
        m = re.fullmatch(STAMP, rows["last successful poll"])
        assert m, rows["last successful poll"]
        success = after.sum("agno_exporter_last_success_timestamp_seconds")
        assert m.group(1) == datetime.fromtimestamp(success, UTC).strftime("%Y-%m-%d %H:%M:%S")
        assert rows["runs counted"] == f"{runs} ({runs} by this process)"
        assert after.sum("agno_exporter_runs_collected_total") == runs
        assert rows["layout"] == "agno 3.x (a row per run in the runs table)"
        assert rows["tables read"] == "ai.agno_runs (agno 3.x runs table), ai.agno_sessions"
        assert rows["last error"] == "none since start"
        assert rows["trace backlog"].startswith(f"{runs} runs waiting for span delivery")
        assert "agno spans backlog" not in rows  # agno's own spans are not forwarded here
        assert rows["database"] == redact(db_url)
        assert rows["series"] == str(round(after.sum("agno_exporter_series")))
        assert "class=bad" not in text
        for link in ("metrics", "healthz", "readyz"):
            assert f"href='{link}'" in text

    asyncio.run(main())


def test_landing_page_shows_the_last_error_with_credentials_masked(db_url: str) -> None:
    """The state in another database the exporter may not reach: every poll fails. The page names
    the error and its age, masks the password in it and in the URLs, and shows no trace backlog
    while traces are off."""
    secret = "s3cr3t-Pa55"
    parts = urlsplit(with_database(db_url, "no_such_db"))
    state_url = urlunsplit(parts._replace(netloc=f"nobody:{secret}@" + parts.netloc.rpartition("@")[2]))

    async def main() -> dict[str, Any]:
        service = make_service(db_url, state={"url": state_url})
        await service.start()
        try:
            await scrape_until(service.port, lambda s: s.sum("agno_exporter_poll_errors_total") >= 1, 20)
            await until(lambda: service.collector.last_failure is not None, timeout=20)
            rows, text = await page(service.port)
        finally:
            await service.stop()
        return {"rows": rows, "text": text}

    got = asyncio.run(main())
    rows, text = got["rows"], got["text"]
    assert secret not in text
    assert rows["collector"].startswith("not ready")
    assert rows["last successful poll"] == "none yet"
    m = re.fullmatch(STAMP + r", (database|query|state): (.+)", rows["last error"])
    assert m, rows["last error"]
    assert "no_such_db" in m.group(4) or "nobody" in m.group(4), m.group(4)
    assert "class=bad" in text  # the error is current: no success since
    assert rows["state"] == state_url.replace(secret, "***")
    assert "trace backlog" not in rows
