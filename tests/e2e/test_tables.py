"""Every agno table of the schema is found by its columns and read (issue 16.6), and a database where
none is found says so where operators look (issue 20: misconfiguration that looks healthy).

Data is written by real agno apps: the seed's cookbook writes with
``PostgresDb(session_table="bg_metrics_sessions")`` (runs in ``ai.bg_metrics_sessions_runs``), another
app with agno's defaults (``ai.agno_runs``), into one database; every number is compared with agno's
own API for each app.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import psycopg
import pytest
from agno.agent import Agent
from agno.team import Team

from exporter.db import ConnectOptions, Database
from exporter.ingest.discovery import FoundTable, Layout, TablePair, pair_tables
from exporter.ingest.readers import AgnoSource, nothing_to_read
from tests.helpers.agno_app import AgnoApp
from tests.helpers.scrape import Samples, scrape_text, scrape_until
from tests.helpers.support import PgServer, exporter_cmd
from tests.helpers.truth import assert_matches_agno, run_truth
from tests.pg.test_collect_e2e import make_service, wait_counted
from tests.pg.test_readonly_role import as_user

COOKBOOK = "bg_metrics_sessions"  # the seed cookbook's session_table


async def agno_truth(app: AgnoApp, runs_table: str) -> list[dict[str, Any]]:
    """What agno's own API reports for every run row of one app's runs table."""
    readers = {"agent": Agent(model=app.model(), db=app.db, telemetry=False),
               "team": Team(members=[], model=app.model(), db=app.db, telemetry=False)}
    with psycopg.connect(app.db_url, row_factory=psycopg.rows.dict_row) as conn:
        rows = conn.execute(f"SELECT run_id, session_id, run_type FROM ai.{runs_table} ORDER BY created_at").fetchall()
    out = []
    for r in rows:
        run = await readers[r["run_type"]].aget_run_output(run_id=r["run_id"], session_id=r["session_id"])
        assert run is not None and run.metrics is not None, r
        out.append(run_truth(run))
    return out


async def write_default_app(db_url: str, sim_url: str, n: int = 1) -> list[dict[str, Any]]:
    """An app on agno's default tables: an agent with a tool call and a team (leader + member run)."""
    app = AgnoApp(db_url, sim_url)
    try:
        agent, team = app.agent("Alpha"), app.team()
        for _ in range(n):
            await app.run(agent)
        await app.run(team)
        return await agno_truth(app, "agno_runs")
    finally:
        await app.close()


async def write_cookbook_app(db_url: str, sim_url: str, session_table: str = COOKBOOK,
                             name: str = "BackgroundMetricsAgent") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The seed's cookbook: its agent on PostgresDb(session_table=...), two runs in one session and one
    streamed. Returns agno's runs and its session metrics per session."""
    app = AgnoApp(db_url, sim_url, session_table=session_table)
    try:
        agent = app.agent(name)
        first = await app.run(agent)
        await app.run(agent, "And MSFT?", session_id=first.session_id)
        await app.run(agent, stream=True)
        truth = await agno_truth(app, f"{session_table}_runs")
        sessions = {r["session_id"]: await agent.aget_session_metrics(session_id=r["session_id"]) for r in truth}
        return truth, sessions
    finally:
        await app.close()


def found(name: str, kind: str = "runs", **kw: Any) -> FoundTable:
    return FoundTable("ai", name, kind, **kw)


def test_a_runs_table_pairs_with_the_session_table_it_references_else_by_name() -> None:
    tables = [found("agno_runs", sessions_fk="agno_sessions"), found("agno_sessions", "sessions"),
              found("bg_metrics_sessions_runs"), found("bg_metrics_sessions", "sessions"),  # agno 3.0: no FK
              found("custom_runs", sessions_fk="support"), found("support", "sessions"),  # PostgresDb(runs_table=...)
              found("orphan_runs"),  # its session table is gone
              found("legacy", "sessions", runs_column=True),  # agno 2.x, no runs table
              found("fresh", "sessions")]  # agno 3.x session table whose runs table agno has not created yet
    pairs, unread = pair_tables(tables)
    assert pairs == [TablePair("agno_runs", "agno_sessions"),
                     TablePair("bg_metrics_sessions_runs", "bg_metrics_sessions"),
                     TablePair("custom_runs", "support"), TablePair("orphan_runs", None),
                     TablePair(None, "legacy", False, True)]
    assert unread == []


def test_named_tables_only_and_unreadable_ones_left_out_with_why() -> None:
    tables = [found("agno_runs", sessions_fk="agno_sessions"), found("agno_sessions", "sessions"),
              found("app_sessions_runs", sessions_fk="app_sessions", readable=False),
              found("app_sessions", "sessions")]
    pairs, unread = pair_tables(tables)
    assert pairs == [TablePair("agno_runs", "agno_sessions")]
    assert [(t.name, why) for t, why in unread] == [
        ("app_sessions_runs", "no SELECT privilege (GRANT SELECT ON ai.app_sessions_runs TO <role>)")]
    pairs, unread = pair_tables(tables, only=("app_sessions_runs", "app_sessions"))
    assert pairs == [TablePair(None, "app_sessions")]
    assert {t.name for t, _ in unread} == {"agno_runs", "agno_sessions", "app_sessions_runs"}


def test_nothing_to_read_says_what_is_there() -> None:
    here = found("agno_runs", readable=False)
    there = FoundTable("app", "agno_runs", "runs")
    layout = Layout("ai", (), ((here, "no SELECT privilege"), (there, "schema 'app'")))
    assert nothing_to_read(layout, False, "agno_runs", "agno_sessions") == (
        "no agno tables in schema 'ai'; found but not readable by this role: ai.agno_runs (GRANT SELECT on them);"
        " found app.agno_runs (agno 3.x runs table): set database.schema to 'app'")
    named = Layout("ai", (), ((found("agno_runs"), "not named"), (found("my_runs", readable=False), "no SELECT")))
    assert nothing_to_read(named, True, "my_runs", "my") == (
        "no agno table ai.my_runs or ai.my to read (database.session_table / database.runs_table); agno tables in"
        " schema 'ai': ai.agno_runs (agno 3.x runs table) (leave database.session_table and database.runs_table"
        " unset to read them all); found but not readable by this role: ai.my_runs (GRANT SELECT on them)")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGNO_EXPORTER_") and k != "DATABASE_URL"}
    return subprocess.run([*exporter_cmd(), *args], capture_output=True, text=True, timeout=60,
                          env={**clean, **(env or {})})


def tables_gauge(s: Samples) -> dict[tuple[str, ...], float]:
    return s.group("agno_exporter_tables", "layout")


def test_the_cookbooks_table_is_found_without_configuration(db_url: str, sim_url: str) -> None:
    truth, sessions = asyncio.run(write_cookbook_app(db_url, sim_url))
    assert len(truth) == 3

    proc = cli("check", "--db-url", db_url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (f"[ok] agno layout v3: ai.{COOKBOOK}_runs (agno 3.x runs table), ai.{COOKBOOK}\n"
            in proc.stdout), proc.stdout
    # runs show / sessions show find them too
    run = truth[0]
    proc = cli("runs", "show", run["run_id"], "--db-url", db_url)
    assert proc.returncode == 0 and run["run_id"] in proc.stdout and "BackgroundMetricsAgent" in proc.stdout, proc
    proc = cli("sessions", "show", run["session_id"], "--db-url", db_url)
    assert proc.returncode == 0 and run["session_id"] in proc.stdout, proc

    async def main() -> Samples:
        service = make_service(db_url)
        await service.start()
        try:
            await wait_counted(service, len(truth))
            return Samples(await scrape_text(service.port))
        finally:
            await service.stop()

    s = asyncio.run(main())
    assert_matches_agno(s, truth)
    assert tables_gauge(s) == {("v3",): 1.0, ("v2",): 0.0}
    top = {labels["session_id"]: v for labels, v in s.by_name["agno_session_top_tokens"]}
    assert top == {sid: float(m.input_tokens + m.output_tokens) for sid, m in sessions.items() if m}


def test_two_apps_in_one_database_each_counted_once(db_url: str, sim_url: str) -> None:
    """Two apps, each on its own tables; a restart, and an exporter that read only one app's tables
    before (the state an older version leaves: the same keys) then reading both."""
    default = asyncio.run(write_default_app(db_url, sim_url))
    cookbook, sessions = asyncio.run(write_cookbook_app(db_url, sim_url))
    everything = default + cookbook
    # agno lost an update of one cookbook session's totals (as under concurrent runs): the check must
    # find it in the cookbook's session table.
    wrong = next(iter(sessions))
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f"UPDATE ai.{COOKBOOK} SET session_data = jsonb_set(session_data,"
                     " '{session_metrics,input_tokens}', to_jsonb((session_data->'session_metrics'->>'input_tokens')"
                     "::bigint + 1000)) WHERE session_id = %s", (wrong,))

    proc = cli("check", "--db-url", db_url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[ok] agno layout v3: ai.agno_runs (agno 3.x runs table), ai.agno_sessions\n" in proc.stdout
    assert f"[ok] agno layout v3: ai.{COOKBOOK}_runs (agno 3.x runs table), ai.{COOKBOOK}\n" in proc.stdout

    async def run_service(n: int, until: Callable[[Samples], bool] = lambda s: True, **sections: dict[str, Any]
                          ) -> tuple[Samples, str]:
        service = make_service(db_url, collector={"session_check_delay": "100ms"}, **sections)
        await service.start()
        try:
            await wait_counted(service, n)
            s = await scrape_until(service.port, until)
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{service.port}/") as r:
                return s, await r.text()
        finally:
            await service.stop()

    # 1. An exporter told to read agno's default tables only, as every older version did.
    s, _ = asyncio.run(run_service(len(default), database={"session_table": "agno_sessions"}))
    assert_matches_agno(s, default)
    assert tables_gauge(s) == {("v3",): 1.0, ("v2",): 0.0}
    # 2. The same state, now reading every agno table: only the cookbook's runs are new.
    s, page = asyncio.run(run_service(len(everything), lambda s: s.sum("agno_session_disagreements_total") >= 1))
    assert_matches_agno(s, everything)
    assert tables_gauge(s) == {("v3",): 2.0, ("v2",): 0.0}
    assert s.sum("agno_exporter_runs_collected_total") == len(cookbook)
    assert s.group("agno_session_disagreements_total", "name") == {("BackgroundMetricsAgent",): 1.0}
    assert "ai.agno_runs" in page and f"ai.{COOKBOOK}_runs" in page and "read (agno 3.x runs table)" in page
    # the session tables are read too (agno's stored totals): the tables section lists them, as the
    # status line's "tables read" does
    for sessions in ("agno_sessions", COOKBOOK):
        assert f"<td>ai.{sessions}</td><td>read (the session totals agno stores)</td>" in page
    # 3. A restart counts nothing again.
    s, _ = asyncio.run(run_service(len(everything)))
    assert_matches_agno(s, everything)
    assert s.sum("agno_exporter_runs_collected_total") == 0
    # One state for the database, keyed as older versions keyed it; a cursor per table.
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT DISTINCT source FROM agno_exporter.runs").fetchall() == [("ai.agno_runs",)]
        assert sorted(r[0] for r in conn.execute("SELECT source FROM agno_exporter.cursor")) == [
            "ai.agno_runs", f"ai.{COOKBOOK}_runs"]


@pytest.mark.parametrize("backfill", [True, False])
def test_a_table_created_after_start_is_read_from_its_first_run(db_url: str, sim_url: str, backfill: bool) -> None:
    default = asyncio.run(write_default_app(db_url, sim_url))
    # Without backfill, runs finished before the start are not counted; agno stamps whole seconds, so
    # the start waits for the next second (and the window has no clock_skew) to draw an exact line.
    with psycopg.connect(db_url) as conn:
        while conn.execute("SELECT extract(epoch FROM clock_timestamp()) < max(updated_at) + 1 FROM ai.agno_runs"
                           ).fetchone() == (True,):
            conn.execute("SELECT pg_sleep(0.05)")

    async def main() -> None:
        service = make_service(db_url, collector={"discovery_interval": "1h", "backfill": backfill,
                                                  "clock_skew": "0s"})
        await service.start()
        try:
            await wait_counted(service, len(default) if backfill else 0)
            # A new app deploys next to the running exporter: agno creates its tables on its first run.
            late, _ = await write_cookbook_app(db_url, sim_url, "late_sessions", "LateAgent")
            more = await write_default_app(db_url, sim_url)
            old = {d["run_id"] for d in default}
            want = (default if backfill else []) + [r for r in more if r["run_id"] not in old]
            s = await scrape_until(service.port, lambda s: s.sum("agno_runs_total") == len(want))
            assert s.sum("agno_runs_total") == len(want) and tables_gauge(s) == {("v3",): 1.0, ("v2",): 0.0}
            # discovery_interval later (now, here) the exporter looks again and finds the new table, whose
            # runs all finished before it was found: all are counted, backfill or not (they are new).
            service.source.rediscover = 0.0
            s = await scrape_until(service.port, lambda s: s.sum("agno_runs_total") == len(want) + len(late))
            assert tables_gauge(s) == {("v3",): 2.0, ("v2",): 0.0}
            assert_matches_agno(s, want + late)
        finally:
            await service.stop()

    asyncio.run(main())


def test_a_schema_typo_is_visible_where_operators_look(db_url: str, sim_url: str) -> None:
    """AGNO_EXPORTER_DATABASE__SCHEMA=aii: connected and ready (a sidecar must be), but the metric says 0
    tables, check and the landing page say where agno's data is."""
    asyncio.run(write_default_app(db_url, sim_url))
    proc = cli("check", "--db-url", db_url, env={"AGNO_EXPORTER_DATABASE__SCHEMA": "aii"})
    assert proc.returncode == 1, proc.stdout
    assert ("[FAIL] database: no agno tables in schema 'aii'; found ai.agno_runs (agno 3.x runs table),"
            " ai.agno_sessions (agno session table): set database.schema to 'ai'\n") in proc.stdout, proc.stdout
    # An app's custom session_table named in the config, while its app writes agno's default tables.
    proc = cli("check", "--db-url", db_url, env={"AGNO_EXPORTER_DATABASE__SESSION_TABLE": COOKBOOK})
    assert proc.returncode == 1, proc.stdout
    assert (f"[FAIL] database: no agno table ai.{COOKBOOK}_runs or ai.{COOKBOOK} to read (database.session_table /"
            " database.runs_table); agno tables in schema 'ai': ai.agno_runs (agno 3.x runs table),"
            " ai.agno_sessions (agno session table) (leave database.session_table and database.runs_table unset"
            " to read them all)\n") in proc.stdout, proc.stdout

    async def main() -> None:
        service = make_service(db_url, database={"schema": "aii"})
        await service.start()
        try:
            s = await scrape_until(service.port, lambda s: s.sum("agno_exporter_up") == 1)
            async with aiohttp.ClientSession() as http:
                base = f"http://127.0.0.1:{service.port}"
                async with http.get(base + "/readyz") as r:
                    assert r.status == 200  # ready: the pod's app must be able to start and write
                    body = await r.text()
                async with http.get(base + "/") as r:
                    page = await r.text()
            assert tables_gauge(s) == {("v3",): 0.0, ("v2",): 0.0}
            assert s.sum("agno_exporter_up") == 1 and s.sum("agno_runs_total") == 0
            assert "no agno tables in schema 'aii'; found ai.agno_runs" in body
            assert "ai.agno_runs</td><td>not read: schema &#x27;ai&#x27;, not database.schema &#x27;aii&#x27;" in page
        finally:
            await service.stop()

    asyncio.run(main())


def test_nothing_to_read_is_logged_every_few_minutes_not_every_poll(db_url: str, sim_url: str,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    asyncio.run(write_default_app(db_url, sim_url))
    now = [1000.0]

    async def main() -> list[str]:
        source = AgnoSource(Database(ConnectOptions(db_url, read_only=True)), "aii", "agno_runs", "agno_sessions",
                            clock=lambda: now[0], warn_every=300.0)
        try:
            with caplog.at_level(logging.WARNING, logger="agno_exporter.source"):
                for step in (0, 5, 5, 280, 15, 5):  # polls: warned at 0 s and at 300 s only
                    now[0] += step
                    assert await source.refresh() == []
            assert source.tables_read() == {"v3": 0, "v2": 0}
            return [r.getMessage() for r in caplog.records if r.name == "agno_exporter.source"]
        finally:
            await source.db.close()

    warnings = asyncio.run(main())
    assert len(warnings) == 2, warnings
    assert all(w.startswith("no agno tables in schema 'aii'; found ai.agno_runs (agno 3.x runs table),"
                            " ai.agno_sessions (agno session table): set database.schema to 'ai'; nothing is"
                            " exported until agno writes one") for w in warnings), warnings


def test_a_table_the_role_may_not_read_is_named(db_url: str, sim_url: str, pg_server: PgServer) -> None:
    """A SELECT-only role granted one app's tables but not the other's: the readable one is counted,
    the other is named with the GRANT it needs (check, log), never a failing poll."""
    default = asyncio.run(write_default_app(db_url, sim_url))
    asyncio.run(write_cookbook_app(db_url, sim_url))
    role = "ro_" + uuid.uuid4().hex[:8]
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute(f'GRANT USAGE ON SCHEMA ai TO "{role}"')
        conn.execute(f'GRANT SELECT ON ai.agno_runs, ai.agno_sessions TO "{role}"')
    state_url = pg_server.create_database()
    try:
        proc = cli("check", "--db-url", as_user(db_url, role), env={"AGNO_EXPORTER_STATE__URL": state_url})
        assert proc.returncode == 0, proc.stdout
        assert (f"[warn] not read: ai.{COOKBOOK}_runs (agno 3.x runs table): no SELECT privilege (GRANT SELECT ON"
                f" ai.{COOKBOOK}_runs TO <role>)\n") in proc.stdout, proc.stdout

        async def main() -> None:
            service = make_service(as_user(db_url, role), state={"url": state_url})
            await service.start()
            try:
                await wait_counted(service, len(default))
                s = Samples(await scrape_text(service.port))
                assert_matches_agno(s, default)
                assert tables_gauge(s) == {("v3",): 1.0, ("v2",): 0.0}
                assert s.sum("agno_exporter_poll_errors_total") == 0
            finally:
                await service.stop()

        asyncio.run(main())
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')
        pg_server.drop_database(state_url)
