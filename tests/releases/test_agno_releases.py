"""Every agno release whose storage differs (agno2_support.RELEASES, the README's agno release table):
what it stores is counted exactly as that release itself reports it, and its stored session totals are
checked by its own rules: a disagreement where agno lost something, none where it did not.

Each release writes with agno2_writer.py in a virtualenv of its own (cached; the installed 3.1.10 in the
project's). The exporter is then driven poll by poll (a Service whose loop is never started: its
collector's ``poll_once`` and its registry), so every session check has happened when figures are read.
"""

from __future__ import annotations

import asyncio
import io
from collections import defaultdict
from typing import Any

import psycopg
import pytest
from prometheus_client import generate_latest
from psycopg.types.json import Jsonb

from exporter.commands.check import run_check
from exporter.commands.service import Service
from exporter.commands.show import show_session
from exporter.config import load_settings
from tests.helpers.agno2_support import RELEASES, Release, migrate_sessions, release_python, write_agno2
from tests.helpers.scrape import Samples
from tests.helpers.truth import assert_matches_agno

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session", params=list(RELEASES.values()), ids=str)
def release(request: pytest.FixtureRequest) -> Release:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def python(release: Release) -> str:
    """The release's python; the test fails (once per release and process) if it cannot be built."""
    return release_python(release)


def tokens(metrics: dict[str, Any] | None) -> int:
    m = metrics or {}
    return int(m.get("input_tokens", 0) + m.get("output_tokens", 0))


def by_session(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        out[r["session_id"]].append(r)
    return out


def rule_sum(runs: list[dict[str, Any]], leader_only: bool) -> int:
    """The session's runs summed the way the survey found the release sums them (stated per release in
    RELEASES, independently of how the exporter detects it)."""
    return sum(tokens(r["metrics"]) for r in runs if not (leader_only and r.get("parent_run_id")))


def settings(db_url: str, **collector: Any) -> Any:
    return load_settings(None, environ={}, overrides={
        "database": {"url": db_url}, "collector": {"session_check_delay": "0s", **collector}})


async def collect(db_url: str, runs: int, service: Service | None = None, **collector: Any) -> Samples:
    """Poll until ``runs`` runs are counted and every session check is done; the exposition then."""
    own = service is None
    service = service or Service(settings(db_url, **collector))
    c = service.collector
    try:
        for _ in range(200):
            await c.poll_once()
            counted = sum(v.total for v in service.store.series("agno_runs").values())
            if counted >= runs and not c.session_totals.pending:  # checks run in the poll after the count
                break
            await asyncio.sleep(0.05)
        assert counted == runs, f"counted {counted} runs, agno reports {runs}"
        assert not c.session_totals.pending
        return Samples(generate_latest(service.registry).decode())
    finally:
        if own:
            await close(service)


async def close(service: Service) -> None:
    await service.stop()
    await service.source_db.close()
    await service.state_db.close()


def table_type(db_url: str, table: str, column: str) -> str | None:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT data_type FROM information_schema.columns WHERE table_schema = 'ai'"
                           " AND table_name = %s AND column_name = %s", (table, column)).fetchone()
    return row[0] if row else None


def test_release_is_counted_as_it_reports_itself(release: Release, python: str, db_url: str, sim_url: str) -> None:
    result = write_agno2(python, db_url, sim_url, "matrix", timeout=300)
    assert result["agno_version"] == release.version
    runs, sessions = result["runs"], {s["session_id"]: s for s in result["sessions"]}
    labels = {r["label"] for r in runs}
    assert {"tool", "stream", "session-3", "team:member", "team-session-2:member", "team-nested:member"} <= labels

    # What the survey found this release stores (these fail first when a release is not what we say).
    assert table_type(db_url, "agno_runs", "run_data") == ("jsonb" if release.layout == "v3" else None)
    assert table_type(db_url, "agno_sessions", "runs") == {"v3": None, "v2": release.runs_column}[release.layout]
    assert ("error" in labels) == release.error_runs_stored
    assert [u["label"] for u in result["unstored"]] == ([] if release.error_runs_stored else ["error"])
    per_session = by_session(runs)
    expect_disagreeing = set()
    for sid, session in sessions.items():
        team = session["session_type"] == "team"
        claimed = tokens(session["metrics"])
        summed = rule_sum(per_session[sid], leader_only=team and release.team_totals == "leader")
        if session["owner"] == "HoldingTeam" and release.nested_members == "unstored":
            # agno adds the member runs of the team inside the team to the totals, but stores no run for them
            assert claimed > summed, session
            expect_disagreeing.add(("team", "HoldingTeam"))
        else:
            assert claimed == summed, session
        if team and release.team_totals == "leader":
            assert claimed < rule_sum(per_session[sid], leader_only=False)  # the member runs are left out

    out = io.StringIO()
    assert asyncio.run(run_check(settings(db_url), out)) == 0, out.getvalue()
    assert f"agno layout {release.layout}" in out.getvalue()
    twice = next(sid for sid, x in sessions.items() if x["owner"] == "FinanceTeamTwice")
    out, err = io.StringIO(), io.StringIO()
    assert asyncio.run(show_session(settings(db_url), twice, out, err)) == 0, err.getvalue()
    assert "agno's stored session totals agree with the sum of the" in out.getvalue()
    assert ("member run(s) are left out of the sum" in out.getvalue()) == (release.team_totals == "leader")

    s = asyncio.run(collect(db_url, len(runs)))
    assert_matches_agno(s, runs)
    assert s.sum("agno_sessions_total") == len(sessions)
    top = {labels["session_id"]: v for labels, v in s.by_name["agno_session_top_tokens"]}
    assert top == {sid: sum(tokens(r["metrics"]) for r in rs) for sid, rs in per_session.items()}
    assert set(s.group("agno_session_disagreements_total", "run_type", "name")) == expect_disagreeing


def test_session_saved_by_three_releases(db_url: str, sim_url: str) -> None:
    """A team session begun by agno 2.3 (team runs' own metrics only), continued by agno 2.9 (members
    included), migrated to agno 3.x's runs table and continued by agno 3.1: its totals are summed run by
    run by each run's rules, and the exporter reports no disagreement."""
    old, new, now = RELEASES["2.3.26"], RELEASES["2.9.0"], RELEASES["3.1.10"]
    first = write_agno2(release_python(old), db_url, sim_url, "matrix", timeout=300)
    sid = next(r["session_id"] for r in first["runs"] if r["label"] == "team-session-1")
    second = write_agno2(release_python(new), db_url, sim_url, "continue", session_id=sid)
    migrate_sessions(db_url)  # agno 3.x's own migration: every run now also in agno_runs
    third = write_agno2(release_python(now), db_url, sim_url, "continue", session_id=sid)
    runs = first["runs"] + second["runs"] + third["runs"]
    assert len({r["run_id"] for r in runs}) == len(runs)
    ours = [r for r in runs if r["session_id"] == sid]
    by_writer = [[r for r in w["runs"] if r["session_id"] == sid] for w in (first, second, third)]
    assert [len(w) for w in by_writer] == [4, 2, 2]  # two team runs and their members, then one and one
    claimed = tokens(third["sessions"][0]["metrics"])
    assert claimed == rule_sum(by_writer[0], leader_only=True) + rule_sum(by_writer[1] + by_writer[2], False)
    assert claimed < sum(tokens(r["metrics"]) for r in ours)

    s = asyncio.run(collect(db_url, len(runs)))
    assert_matches_agno(s, runs)
    assert s.sum("agno_session_disagreements_total") == 0


AUDIT = """
CREATE TABLE public.saves (id bigserial PRIMARY KEY, row jsonb NOT NULL);
CREATE FUNCTION public.save_fn() RETURNS trigger AS $$ BEGIN
  INSERT INTO public.saves (row) VALUES (to_jsonb(NEW)); RETURN NEW; END $$ LANGUAGE plpgsql;
CREATE TRIGGER save AFTER INSERT OR UPDATE ON ai.agno_sessions FOR EACH ROW EXECUTE FUNCTION public.save_fn();
"""
REPLAY = ("DELETE FROM ai.agno_sessions WHERE session_id = %(row)s->>'session_id'",
          "INSERT INTO ai.agno_sessions SELECT * FROM jsonb_populate_record(NULL::ai.agno_sessions, %(row)s)")


def test_concurrent_team_runs_of_one_session(release: Release, python: str, db_url: str, sim_url: str) -> None:
    """The trap in the agno reference notes, in every release: team runs of one session at once.

    agno 3.x keeps every run (a row each) but loses updates of the session totals: a disagreement.
    agno 2.x rewrites the session's whole runs blob on every save, from the copy each run loaded, so
    the last save drops the runs finished meanwhile (or leaves them PENDING), with totals to match:
    an exporter that read those runs between the saves must report the session, one that never saw
    them cannot. Every save is recorded (a trigger) and replayed one at a time with a poll after
    each, the worst case of a poller: every run agno ever stored as finished is counted.
    """
    if release.layout == "v2":
        write_agno2(python, db_url, sim_url, "prepare")
        with psycopg.connect(db_url) as conn:
            conn.execute(AUDIT)
    result = write_agno2(python, db_url, sim_url, "concurrent", n=3)
    (session,) = result["sessions"]
    claimed = tokens(session["metrics"])

    if release.layout == "v3":
        runs = result["runs"]
        assert not result["lost"] and len(runs) == 6  # three team runs, three member runs: all stored
        summed = sum(tokens(r["metrics"]) for r in runs)
        assert claimed < summed, "agno's lost update did not reproduce this time"
        s = asyncio.run(collect(db_url, len(runs)))
        assert_matches_agno(s, runs)
        assert s.group("agno_session_disagreements_total", "name") == {("ConcurrentTeam",): 1.0}
        return

    assert result["lost"], "agno 2.x kept every concurrent run this time: the trap did not reproduce"
    with psycopg.connect(db_url, autocommit=True) as conn:
        saves = [row for (row,) in conn.execute("SELECT row FROM public.saves ORDER BY id")]
        conn.execute("DROP TRIGGER save ON ai.agno_sessions")
        conn.execute("TRUNCATE ai.agno_sessions")
    ever_final = {e["run_id"]: e for save in saves for e in save["runs"] or []
                  if e["status"] in ("COMPLETED", "ERROR", "CANCELLED")}
    last = saves[-1]["runs"] or []
    still_open = [e for e in last if e["status"] in ("PENDING", "RUNNING")]
    dropped = set(ever_final) - {e["run_id"] for e in last if e["status"] == "COMPLETED"}
    assert dropped, "every finished run survived the last save: the trap did not reproduce"
    assert {r["run_id"] for r in result["runs"]} == set(ever_final) - dropped  # what agno's API still shows

    async def replay() -> Samples:
        # The saves carry their own (past) updated_at: a re-read window of an hour keeps them in view.
        service = Service(settings(db_url, clock_skew="1h"))
        try:
            with psycopg.connect(db_url, autocommit=True) as conn:
                for save in saves:
                    with conn.transaction():  # as agno's upsert: one commit per save
                        for statement in REPLAY:
                            conn.execute(statement, {"row": Jsonb(save)})
                    await service.collector.poll_once()
            return await collect(db_url, len(ever_final), service)
        finally:
            await close(service)

    s = asyncio.run(replay())
    assert s.sum("agno_runs_total") == len(ever_final)
    assert s.sum("agno_tokens_total", token_type="input") + s.sum("agno_tokens_total", token_type="output") == sum(
        tokens(e["metrics"]) for e in ever_final.values())
    if still_open:
        # agno 2.5 and later save a run PENDING first: the overwritten ones stay open for good. The
        # session is not compared while it has open runs; they show as in progress (and stuck, later).
        assert s.sum("agno_runs_in_progress", name="ConcurrentTeam") == len(still_open)
        assert s.sum("agno_session_disagreements_total") == 0
    else:
        # agno's totals match what it kept, by its rules ...
        assert claimed == rule_sum(last, leader_only=release.team_totals == "leader")
        # ... but not what it had stored as finished
        assert s.group("agno_session_disagreements_total", "name") == {("ConcurrentTeam",): 1.0}
