"""agno 2.x databases (runs inside agno_sessions.runs) and databases mid-migration to agno 3.x.

Data is written by real agno 2.9 (its own virtualenv, see agno2_support.py) and, for the mixed cases,
by real agno 3.x and agno 3.x's own migration; every exported number is compared with what agno
itself reports for each run (``aget_run_output().metrics``) and session (``get_session_metrics()``).
"""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporter.commands.check import run_check
from exporter.config import load_settings
from tests.e2e.test_exactly_once import close, exported_runs, exported_tokens, make_collector
from tests.helpers.agno2_support import migrate_sessions, write_agno2
from tests.helpers.otlp_receiver import OtlpReceiver
from tests.helpers.scrape import Samples, scrape_text
from tests.helpers.support import more_polls
from tests.helpers.truth import assert_matches_agno, run_truth, truth_tokens
from tests.pg.test_collect_e2e import make_service, wait_counted
from tests.pg.test_traces_e2e import all_exported, start_traced_service, wait_until

pytestmark = pytest.mark.slow


def test_agno2_metrics_equal_agno_api(db_url: str, sim_url: str, agno2_python: str) -> None:
    result = write_agno2(agno2_python, db_url, sim_url, "basic")
    runs = result["runs"]
    assert any(r["parent_run_id"] for r in runs) and any(r["status"] == "ERROR" for r in runs)

    out = io.StringIO()
    settings = load_settings(None, environ={}, overrides={"database": {"url": db_url}})
    assert asyncio.run(run_check(settings, out)) == 0, out.getvalue()
    assert "agno layout v2" in out.getvalue()

    async def main(rx: OtlpReceiver) -> Samples:
        service = start_traced_service(db_url, rx)
        await service.start()
        try:
            await wait_counted(service, len(runs))
            await wait_until(all_exported(db_url, {r["run_id"] for r in runs}), "every run's spans exported")
            await more_polls(service.registry)  # nothing more may appear
            return Samples(await scrape_text(service.port))
        finally:
            await service.stop()

    with OtlpReceiver() as rx:
        s = asyncio.run(main(rx))
        spans = rx.spans()
    assert_matches_agno(s, runs)
    # Spans of agno 2.x runs: one invoke_agent span per run, members under their team run, agno's tokens.
    top = {sp.attributes["agno.run_id"]: sp for sp in spans if sp.name.startswith("invoke_agent ")}
    assert set(top) == {r["run_id"] for r in runs}
    for r in runs:
        span, m = top[r["run_id"]], r["metrics"] or {}
        assert span.attributes.get("gen_ai.usage.input_tokens", 0) == m.get("input_tokens", 0)
        assert span.attributes.get("gen_ai.usage.output_tokens", 0) == m.get("output_tokens", 0)
        assert (span.status_code == 2) == (r["status"] == "ERROR")
        if r["parent_run_id"]:  # a member: under the team's call that delegated to it
            parent = top[r["parent_run_id"]]
            (call,) = [sp for sp in spans if sp.name == "execute_tool delegate_task_to_member"
                       and sp.attributes["agno.run_id"] == r["parent_run_id"]]
            assert (span.trace_id, span.parent_span_id) == (parent.trace_id, call.span_id)
            assert call.parent_span_id == parent.span_id
    assert s.sum("agno_runs_total", name="StockAgent") == 2  # member runs, counted once each
    # Sessions: agno's stored session totals equal the sums of their runs (run one after another here).
    top = {labels["session_id"]: v for labels, v in s.by_name["agno_session_top_tokens"]}
    for sess in result["sessions"]:
        sm = sess["metrics"] or {}
        assert top.get(sess["session_id"], 0) == sm.get("input_tokens", 0) + sm.get("output_tokens", 0)
    assert s.sum("agno_sessions_total") == len({r["session_id"] for r in runs})
    assert s.sum("agno_session_disagreements_total") == 0


def test_agno2_workflow_steps_are_counted(db_url: str, sim_url: str, agno2_python: str) -> None:
    """agno 2.9 nests a workflow's step runs (and a team step's member runs) in the workflow run's
    element of ``agno_sessions.runs``, as 3.x does in its row: each is counted once, like any run."""
    result = write_agno2(agno2_python, db_url, sim_url, "workflow")
    runs = result["runs"]
    kinds = sorted(r["kind"] for r in runs)
    assert kinds == ["member", "step", "step", "step", "step", "step", "workflow"]  # loop: two runs
    (session,) = result["sessions"]
    assert session["session_type"] == "workflow"

    async def main() -> Samples:
        c = make_collector(db_url, session_settle=0.0)
        try:
            while (await c.poll_once()).counted:
                pass
            await c.poll_once()  # the session check, now all runs are counted
            assert not c.session_totals.pending
            ours = (await c.state.sessions_by_id([session["session_id"]]))[session["session_id"]]
            sm = session["metrics"]
            # agno's workflow session totals: its run's metrics.steps (the team's leader, one Loop run)
            assert ours["agno_tokens"] == sm["input_tokens"] + sm["output_tokens"] < ours["tokens"]
            registry = CollectorRegistry()
            registry.register(c.sink.store)
            return Samples(generate_latest(registry).decode())
        finally:
            await close(c)

    s = asyncio.run(main())
    assert_matches_agno(s, runs)
    assert s.sum("agno_runs_total") == len(runs)
    assert s.sum("agno_runs_total", run_type="workflow", name="ReportFlow") == 1
    assert s.sum("agno_runs_total", run_type="team", name="StepTeam") == 1
    assert s.sum("agno_session_disagreements_total") == 0
    assert truth_tokens(runs) > 0


def test_mid_migration_counts_each_run_once(db_url: str, sim_url: str, agno2_python: str) -> None:
    from tests.helpers.agno_app import AgnoApp

    basic = write_agno2(agno2_python, db_url, sim_url, "basic")["runs"]
    many = write_agno2(agno2_python, db_url, sim_url, "many", n=12, concurrency=4)["runs"]
    legacy = basic + many
    assert len({r["run_id"] for r in legacy}) == len(legacy)
    sessions = sorted({r["session_id"] for r in legacy})

    async def agno3_runs() -> list[dict[str, Any]]:
        # The app upgraded to agno 3.x without migrating: new runs go to agno_runs only, also in an old session.
        app = AgnoApp(db_url, sim_url)
        try:
            agent = app.agent("PlainAgent", tools=False)
            old = next(r["session_id"] for r in basic if r["label"] == "session-1")
            outs = [await app.run(agent, "And the day after?", session_id=old), await app.run(app.agent())]
            return [run_truth(o) for o in outs]
        finally:
            await app.close()

    async def main() -> None:
        c = make_collector(db_url, rediscover=0)
        try:
            # 1. agno 2.x only: everything from the legacy column.
            assert (await c.poll_once()).counted == len(legacy)
            assert c.source.layout is not None and c.source.layout.version == "v2"
            # 2. agno 3.x's migration applied to half of the sessions: their runs are now in both places.
            await asyncio.to_thread(migrate_sessions, db_url, sessions[::2])
            assert (await c.poll_once()).counted == 0
            assert c.source.layout.version == "mixed"
            out = io.StringIO()
            settings = load_settings(None, environ={}, overrides={"database": {"url": db_url}})
            assert await run_check(settings, out) == 0, out.getvalue()
            assert "agno layout mixed" in out.getvalue() and "the runs table wins" in out.getvalue()
            # 3. the upgraded app writes new runs: only those are new.
            new = await agno3_runs()
            assert (await c.poll_once()).counted == len(new)
            # 4. the rest migrated (agno stamps every copied row with the migration time): nothing new.
            await asyncio.to_thread(migrate_sessions, db_url)
            assert (await c.poll_once()).counted == 0
            everything = legacy + new
            assert exported_runs(c) == len(everything)
            assert exported_tokens(c) == truth_tokens(everything)
        finally:
            await close(c)
        # A restarted exporter loads its totals and counts nothing again; a fresh one on the half-migrated
        # database backfills both layouts and arrives at the same numbers.
        c2 = make_collector(db_url, rediscover=0)
        try:
            assert (await c2.poll_once()).counted == 0
            assert exported_tokens(c2) == truth_tokens(everything)
        finally:
            await close(c2)
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("DROP SCHEMA agno_exporter CASCADE")
            # make it half-migrated again: some runs only in the legacy column, some in both, some only in 3.x
            conn.execute("DELETE FROM ai.agno_runs WHERE session_id = ANY(%s) AND run_id = ANY(%s)",
                         (sessions[1::2], [r["run_id"] for r in legacy]))
        c3 = make_collector(db_url, rediscover=0, batch_size=3)
        try:
            assert (await c3.poll_once()).counted == len(everything)
            assert exported_tokens(c3) == truth_tokens(everything)
            assert (await c3.poll_once()).counted == 0
        finally:
            await close(c3)

    asyncio.run(main())


def test_agno2_out_of_order_saves_are_counted_once(db_url: str, sim_url: str, agno2_python: str) -> None:
    runs = write_agno2(agno2_python, db_url, sim_url, "many", n=6, concurrency=2)["runs"]  # 3 runs a session
    a, b = sorted({r["session_id"] for r in runs})
    truth = truth_tokens(runs)
    with psycopg.connect(db_url, autocommit=True) as conn:
        blobs = dict(conn.execute("SELECT session_id, runs FROM ai.agno_sessions").fetchall())
        # Both sessions back to how agno 2.x saved them while their runs were in flight.
        for sid, blob in blobs.items():
            conn.execute("UPDATE ai.agno_sessions SET runs = %s, updated_at = updated_at - 60 WHERE session_id = %s",
                         (psycopg.types.json.Jsonb([{**e, "status": "RUNNING"} for e in blob]), sid))

    async def main() -> None:
        # A tight clock_skew: it only covers the test stamping updated_at just before its UPDATE (the
        # assumption of exporter.ingest.cursor); far more time passes below, so only the watermark keeps session a.
        c = make_collector(db_url, rediscover=0, clock_skew=0.5)
        try:
            assert (await c.poll_once()).counted == 0
            t1 = await psycopg.AsyncConnection.connect(db_url)
            t2 = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
            save = "UPDATE ai.agno_sessions SET runs = %s, updated_at = %s WHERE session_id = %s"
            try:
                # T1 saves session a (its runs final) first but stays open ...
                await t1.execute(save, (psycopg.types.json.Jsonb(blobs[a]), int(time.time()), a))
                await asyncio.sleep(1.1)
                # ... T2 saves session b a second later and commits first.
                await t2.execute(save, (psycopg.types.json.Jsonb(blobs[b]), int(time.time()), b))
                assert (await c.poll_once()).counted == len(blobs[b])
                for _ in range(3):  # polls go on, time passes; the watermark must wait for T1
                    await asyncio.sleep(0.6)
                    assert (await c.poll_once()).counted == 0
                await t1.commit()
                assert (await c.poll_once()).counted == len(blobs[a])
                assert (await c.poll_once()).counted == 0
            finally:
                await t1.close()
                await t2.close()
            assert exported_tokens(c) == truth
        finally:
            await close(c)

    asyncio.run(main())


def test_agno2_crash_mid_backfill_then_restart(db_url: str, sim_url: str, agno2_python: str) -> None:
    runs = write_agno2(agno2_python, db_url, sim_url, "many", n=12, concurrency=4)["runs"]

    class Crash(Exception):
        pass

    pages = 0

    def crash_after_two_pages(_: Any) -> None:
        nonlocal pages
        pages += 1
        if pages == 2:
            raise Crash  # after the second page's commit, before the cursor is saved

    async def main() -> None:
        c = make_collector(db_url, rediscover=0, batch_size=2)
        c.on_commit = crash_after_two_pages
        try:
            with pytest.raises(Crash):
                await c.poll_once()
            assert 0 < exported_runs(c) < len(runs)
        finally:
            await close(c)
        c2 = make_collector(db_url, rediscover=0, batch_size=2)
        try:
            await c2.poll_once()
            assert exported_runs(c2) == len(runs)
            assert exported_tokens(c2) == truth_tokens(runs)
            assert (await c2.poll_once()).counted == 0
        finally:
            await close(c2)

    asyncio.run(main())


def test_agno2_stuck_run_is_reported(db_url: str, sim_url: str, agno2_python: str) -> None:
    write_agno2(agno2_python, db_url, sim_url, "stuck")
    time.sleep(1.1)  # created_at is whole seconds: "older than 0 s" needs the next second

    async def main() -> None:
        c = make_collector(db_url, rediscover=0, stuck_after=0.0)
        try:
            assert (await c.poll_once()).counted == 0
            assert [(t, st, n, stuck) for t, _, st, n, stuck, _ in c.open_runs] == [("agent", "RUNNING", 1, 1)]
        finally:
            await close(c)

    asyncio.run(main())


def test_agno2_custom_schema_and_session_table(db_url: str, sim_url: str, agno2_python: str) -> None:
    runs = write_agno2(agno2_python, db_url, sim_url, "many", n=3, concurrency=1, schema="app",
                       session_table="my_sessions")["runs"]

    async def main() -> None:
        settings = load_settings(None, environ={}, overrides={
            "database": {"url": db_url, "schema": "app", "session_table": "my_sessions"}})
        out = io.StringIO()
        assert await run_check(settings, out) == 0, out.getvalue()
        assert "app.my_sessions with a legacy runs column" in out.getvalue()
        service = make_service(db_url, database={"schema": "app", "session_table": "my_sessions"})
        await service.start()
        try:
            await wait_counted(service, len(runs))
            assert sum(v.total for v in service.store.series("agno_tokens").values()) == truth_tokens(runs)
        finally:
            await service.stop()

    asyncio.run(main())


def test_an_agno2_app_beside_an_agno3_app_is_found_without_configuration(db_url: str, sim_url: str,
                                                                          agno2_python: str) -> None:
    """Two apps in one database: agno 2.9 on a custom session_table (runs in its `runs` column) and agno
    3.x on the defaults. Both found by their columns, each read by its own reader, each run counted once."""
    from tests.e2e.test_tables import write_default_app

    legacy = write_agno2(agno2_python, db_url, sim_url, "basic", session_table="legacy_sessions")["runs"]
    modern = asyncio.run(write_default_app(db_url, sim_url))
    out = io.StringIO()
    settings = load_settings(None, environ={}, overrides={"database": {"url": db_url}})
    assert asyncio.run(run_check(settings, out)) == 0, out.getvalue()
    assert "[ok] agno layout v2: ai.legacy_sessions with a legacy runs column (agno 2.x)\n" in out.getvalue()
    assert "[ok] agno layout v3: ai.agno_runs (agno 3.x runs table), ai.agno_sessions\n" in out.getvalue()

    async def main() -> Samples:
        service = make_service(db_url, collector={"session_check_delay": "100ms"})
        await service.start()
        try:
            await wait_counted(service, len(legacy) + len(modern))
            return Samples(await scrape_text(service.port))
        finally:
            await service.stop()

    s = asyncio.run(main())
    assert_matches_agno(s, legacy + modern)
    assert s.group("agno_exporter_tables", "layout") == {("v3",): 1.0, ("v2",): 1.0}
    assert s.sum("agno_sessions_total") == len({r["session_id"] for r in legacy + modern})
