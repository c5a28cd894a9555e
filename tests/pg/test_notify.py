"""The opt-in wake-up (`create-notify-trigger`): real agno commits a run, the trigger notifies, the
collector polls at once. The poll interval is an hour, so a run that reaches /metrics within the
test's deadline (a minute at most, far below the hour) got there by the wake-up, not by a poll.
How the poll loop waits (:class:`exporter.ingest.notify.Wakeup`) is checked alone in
tests/unit/test_wakeup.py, agno 2.x's session table in tests/releases/test_agno2_notify.py."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import psycopg
import pytest

from exporter.commands.check import run_check
from exporter.commands.cli import main
from exporter.commands.service import Service
from exporter.config import load_settings
from exporter.ingest.notify import CHANNEL, TRIGGER
from tests.e2e.test_cli_errors import as_role, grant_read_only, reader_role  # noqa: F401  (reader_role: a fixture)
from tests.helpers.agno_app import AgnoApp
from tests.helpers.cli_support import cli, one_line_error
from tests.helpers.scrape import Samples, scrape_text
from tests.helpers.support import eventually, more_polls
from tests.helpers.truth import assert_matches_agno, run_truth
from tests.pg.test_collect_e2e import make_service, wait_counted

HOUR = "1h"  # the poll interval: no poll but the first fires during a test


async def run_cli(command: str, db_url: str) -> int:
    """The command as a user runs it (its own asyncio.run, hence a thread of its own)."""
    return await asyncio.to_thread(main, [command, "--db-url", db_url])


async def check(db_url: str) -> str:
    out = io.StringIO()
    assert await run_check(load_settings(None, environ={}, overrides={"database": {"url": db_url}}), out) == 0
    return out.getvalue()


def sample(service: Service, name: str, **labels: str) -> float:
    return service.registry.get_sample_value(name, labels) or 0.0


def listening(service: Service) -> bool:
    return sample(service, "agno_exporter_notify_listening") == 1.0


def triggers(db_url: str) -> set[str]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
                            " WHERE t.tgname = %s", (TRIGGER,)).fetchall()
    return {r[0] for r in rows}


async def counted_by_wakeup(service: Service, app: AgnoApp, runner: Any, n: int, together: int = 1) -> list[Any]:
    """Run agno ``together`` times at once and wait until ``n`` runs are counted: the next poll by
    interval is an hour away. Returns agno's own outputs of the runs."""
    notified = sample(service, "agno_exporter_wakeups_total", reason="notify")
    outs = await asyncio.gather(*(app.run(runner) for _ in range(together)))
    await wait_counted(service, n)
    assert sample(service, "agno_exporter_wakeups_total", reason="notify") > notified
    assert sample(service, "agno_exporter_wakeups_total", reason="interval") == 0
    return list(outs)


def test_trigger_wakes_the_collector(db_url: str, sim_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    async def scenario(app: AgnoApp) -> None:
        agent = app.agent()
        outs = [await app.run(agent)]  # agno creates its tables with its first run
        assert await run_cli("create-notify-trigger", db_url) == 0
        out = capsys.readouterr().out
        assert f"created trigger {TRIGGER} on ai.agno_runs: notifies channel {CHANNEL}" in out
        assert await run_cli("create-notify-trigger", db_url) == 0
        assert "exists already" in capsys.readouterr().out
        assert "[ok] wake-up: trigger on ai.agno_runs: finished runs reach /metrics at once" in await check(db_url)

        service = make_service(db_url, collector={"poll_interval": HOUR})
        await service.start()
        try:
            await wait_counted(service, 1)  # the first poll, at start
            await eventually(lambda: listening(service), "the LISTEN connection")
            for n in (2, 3):  # one after another: each commit wakes its own poll
                outs += await counted_by_wakeup(service, app, agent, n)
            # at once: commits out of order, polls whenever notifications come; each run counted once
            outs += await counted_by_wakeup(service, app, agent, 9, together=6)
            await more_notified_polls(service)
            s = Samples(await scrape_text(service.port))
            assert_matches_agno(s, [run_truth(out) for out in outs])
            assert s.sum("agno_runs_total", name="BackgroundMetricsAgent") == 9
            assert s.sum("agno_exporter_notifications_total") >= 3
        finally:
            await service.stop()

        assert await run_cli("drop-notify-trigger", db_url) == 0
        out = capsys.readouterr().out
        assert f"dropped trigger {TRIGGER} on ai.agno_runs" in out and f"dropped function ai.{TRIGGER}()" in out
        assert triggers(db_url) == set()
        assert await run_cli("drop-notify-trigger", db_url) == 0
        assert "no trigger" in capsys.readouterr().out

    run_app(db_url, sim_url, scenario)


def test_without_the_trigger_polling_counts(db_url: str, sim_url: str) -> None:
    """No trigger: the wake-up stays off (no LISTEN connection) and every poll is an interval's."""

    async def scenario(app: AgnoApp) -> None:
        agent = app.agent()
        await app.run(agent)
        assert ("[--] wake-up off: no trigger on ai.agno_runs (agno-exporter create-notify-trigger adds it)"
                in await check(db_url))
        service = make_service(db_url, collector={"poll_interval": "200ms"})
        await service.start()
        try:
            await wait_counted(service, 1)
            await app.run(agent)
            await wait_counted(service, 2)
            assert not listening(service)
            assert sample(service, "agno_exporter_wakeups_total", reason="interval") >= 1
            for reason in ("notify", "listen"):
                assert sample(service, "agno_exporter_wakeups_total", reason=reason) == 0
            with psycopg.connect(db_url) as conn:
                assert conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name ="
                                    " 'agno-exporter-listen'").fetchone() == (0,)
        finally:
            await service.stop()

    run_app(db_url, sim_url, scenario)


def test_listen_connection_killed_reconnects(db_url: str, sim_url: str) -> None:
    async def scenario(app: AgnoApp) -> None:
        agent = app.agent()
        await app.run(agent)
        assert await run_cli("create-notify-trigger", db_url) == 0
        service = make_service(db_url, collector={"poll_interval": HOUR, "max_backoff": "2s"})
        await service.start()
        try:
            await wait_counted(service, 1)
            await eventually(lambda: listening(service), "the LISTEN connection")
            with psycopg.connect(db_url, autocommit=True) as conn:
                (killed,) = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                         " WHERE application_name = 'agno-exporter-listen'").fetchone() or (0,)
            assert killed == 1
            await eventually(lambda: sample(service, "agno_exporter_wakeups_total", reason="listen") >= 2,
                             "LISTEN again after the connection was killed")
            await counted_by_wakeup(service, app, agent, 2)
        finally:
            await service.stop()

    run_app(db_url, sim_url, scenario)


async def more_notified_polls(service: Service) -> None:
    """Two more polls, each started as a notification starts one (nothing more may be counted by them)."""
    for _ in range(2):
        service.wake.wake()
        await more_polls(service.registry, 1)


def run_app(db_url: str, sim_url: str, scenario: Any) -> None:
    async def go() -> None:
        app = AgnoApp(db_url, sim_url)
        try:
            await scenario(app)
        finally:
            await app.close()

    asyncio.run(go())


def test_read_only_exporter_listens_once_the_owner_installed_the_trigger(db_url: str, sim_url: str,
                                                                         reader_role: str) -> None:  # noqa: F811
    """The exporter's role needs no privilege for the wake-up (any role may LISTEN); installing it
    needs TRIGGER on agno's tables and CREATE on agno's schema, and the error says so in one line."""

    async def scenario(app: AgnoApp) -> None:
        agent = app.agent()
        await app.run(agent)
        grant_read_only(db_url, reader_role)
        reader_url = as_role(db_url, reader_role)
        proc = await asyncio.to_thread(cli, "create-notify-trigger", "--db-url", reader_url)
        assert proc.returncode == 1
        assert one_line_error(proc) == (
            f"agno-exporter create-notify-trigger: role '{reader_role}' has no CREATE on schema ai, has no TRIGGER"
            " privilege on ai.agno_runs: create-notify-trigger needs a role with the TRIGGER privilege on agno's"
            " tables (their owner, agno's own role, has it) and CREATE on agno's schema; run it with that role's"
            " --db-url")
        assert await run_cli("create-notify-trigger", db_url) == 0
        service = make_service(reader_url, state={"url": db_url}, collector={"poll_interval": HOUR})
        await service.start()
        try:
            await wait_counted(service, 1)
            await eventually(lambda: listening(service), "the LISTEN connection of the read-only role")
            await counted_by_wakeup(service, app, agent, 2)
        finally:
            await service.stop()

    run_app(db_url, sim_url, scenario)
