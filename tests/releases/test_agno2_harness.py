"""The agno 2.x harness itself: real agno 2.9 writes what it claims, and agno 3.x's migration does what we say.

These tests pin facts about agno 2.x storage that the 2.x reader relies on (see the module docstrings of
agno2_support.py and agno2_writer.py); when agno changes them, these fail first.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.helpers.agno2_support import migrate_sessions, write_agno2

pytestmark = pytest.mark.slow

def query(db_url: str, q: str, *args: Any) -> list[dict[str, Any]]:
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        return conn.execute(q, args or None).fetchall()  # type: ignore[arg-type]


def sessions(db_url: str) -> dict[str, dict[str, Any]]:
    return {r["session_id"]: r for r in query(db_url, "SELECT * FROM ai.agno_sessions")}


def blob_runs(db_url: str) -> dict[str, dict[str, Any]]:
    """run_id -> the element of agno_sessions.runs, with its session and position."""
    out: dict[str, dict[str, Any]] = {}
    for sid, row in sessions(db_url).items():
        for i, run in enumerate(row["runs"] or []):
            assert run["run_id"] not in out, "a run id appears twice in the legacy blobs"
            out[run["run_id"]] = {**run, "_session": sid, "_index": i}
    return out


def table_exists(db_url: str, name: str) -> bool:
    return bool(query(db_url, "SELECT to_regclass(%s) AS t", name)[0]["t"])


def test_writer_basic_matches_stored_blob(db_url: str, sim_url: str, agno2_python: str) -> None:
    result = write_agno2(agno2_python, db_url, sim_url, "basic")
    assert result["agno_version"] == "2.9.0"
    runs = {r["run_id"]: r for r in result["runs"]}
    labels = {r["label"]: r for r in result["runs"]}
    assert set(labels) == {"tool", "stream", "session-1", "session-2", "team", "team:member", "team-stored",
                           "team-stored:member", "error"}

    # agno 2.x layout: no runs table; runs are a JSONB array in agno_sessions.runs.
    assert not table_exists(db_url, "ai.agno_runs")
    types = {r["column_name"]: r["data_type"] for r in query(
        db_url, "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'ai' AND table_name = 'agno_sessions'")}
    assert types["runs"] == types["session_data"] == "jsonb"
    assert types["created_at"] == types["updated_at"] == "bigint"
    assert query(db_url, "SELECT version FROM ai.agno_schema_versions WHERE table_name = 'agno_sessions'") == [
        {"version": "2.5.6"}]

    # Every run the writer reports is an element of its session's blob, with the same status and metrics.
    stored = blob_runs(db_url)
    sessions_by_id = sessions(db_url)
    assert set(stored) == set(runs)
    for run_id, r in runs.items():
        s = stored[run_id]
        assert s["_session"] == r["session_id"] == s["session_id"]
        assert s["status"] == r["status"]
        assert s.get("parent_run_id") == r["parent_run_id"]
        assert s["metrics"] == r["metrics"], r["label"]
        # No per-run updated_at in 2.x elements; None fields are dropped, so user_id only when the run had one.
        assert not {"updated_at", "workflow_id"} & set(s)
        assert s.get("user_id") == r["user_id"] == sessions_by_id[r["session_id"]]["user_id"]
    assert all(r["status"] == "COMPLETED" for r in result["runs"] if r["label"] != "error")

    # The error run: status ERROR, metrics hold only the duration.
    err = labels["error"]
    assert err["status"] == "ERROR" and set(err["metrics"]) == {"duration"}

    # Team member runs: separate elements of the TEAM session's blob, after the team run, with
    # parent_run_id and the member's agent_id (no team_id); the member has no session of its own.
    for team_label in ("team", "team-stored"):
        team, member = labels[team_label], labels[team_label + ":member"]
        assert member["session_id"] == team["session_id"] and member["parent_run_id"] == team["run_id"]
        assert stored[member["run_id"]]["_index"] == stored[team["run_id"]]["_index"] + 1
        assert member["agent_id"] == "stockagent" and member["team_id"] is None
        assert "agent_id" not in stored[team["run_id"]] and stored[team["run_id"]]["team_id"]
    # store_member_responses=True nests a second copy of the member run inside the team run.
    assert labels["team"]["nested_member_run_ids"] == []
    assert stored[labels["team"]["run_id"]].get("member_responses", []) == []
    assert labels["team-stored"]["nested_member_run_ids"] == [labels["team-stored:member"]["run_id"]]
    nested = stored[labels["team-stored"]["run_id"]]["member_responses"]
    assert [m["run_id"] for m in nested] == [labels["team-stored:member"]["run_id"]]
    assert nested[0]["metrics"] == labels["team-stored:member"]["metrics"]
    assert "stockagent" not in {s["agent_id"] for s in sessions(db_url).values()}
    assert {r["label"] for r in result["runs"] if r["user_id"]} == {"session-1", "session-2", "team", "team:member"}

    # Session metrics: agno's get_session_metrics() is session_data.session_metrics, the sum of every run
    # of the session, member runs included (runs here were one after another).
    rows = sessions(db_url)
    assert len(rows) == len(result["sessions"]) == 5
    for s in result["sessions"]:
        assert rows[s["session_id"]]["session_data"]["session_metrics"] == s["metrics"]
        in_session = [r for r in result["runs"] if r["session_id"] == s["session_id"]]
        assert s["metrics"].get("input_tokens", 0) == sum((r["metrics"] or {}).get("input_tokens", 0)
                                                          for r in in_session)
    assert next(s for s in result["sessions"] if s["owner"] == "BrokenAgent")["metrics"] == {}


def test_stuck_run_stays_running_in_blob(db_url: str, sim_url: str, agno2_python: str) -> None:
    result = write_agno2(agno2_python, db_url, sim_url, "stuck")
    (run,) = result["runs"]
    assert run["status"] == "RUNNING"
    (row,) = sessions(db_url).values()
    (element,) = row["runs"]
    # What a PENDING/RUNNING background run looks like in the blob: empty metrics, no messages/content.
    assert element["run_id"] == run["run_id"] and element["status"] == "RUNNING"
    assert element["metrics"] == {}
    assert not {"messages", "content", "tools"} & set(element)
    assert "session_metrics" not in row["session_data"]  # no run of the session has finished


AUDIT = """
CREATE TABLE public.audit (id serial PRIMARY KEY, op text, session_id text, created_at bigint, updated_at bigint,
                           runs jsonb, saved_at double precision DEFAULT extract(epoch FROM clock_timestamp()));
CREATE FUNCTION public.audit_fn() RETURNS trigger AS $$ BEGIN
  INSERT INTO public.audit (op, session_id, created_at, updated_at, runs)
  VALUES (TG_OP, NEW.session_id, NEW.created_at, NEW.updated_at, NEW.runs); RETURN NEW; END $$ LANGUAGE plpgsql;
CREATE TRIGGER audit AFTER INSERT OR UPDATE ON ai.agno_sessions FOR EACH ROW EXECUTE FUNCTION public.audit_fn();
"""


def test_every_save_rewrites_the_blob(db_url: str, sim_url: str, agno2_python: str) -> None:
    """What a poller can see between saves: each state of each run, and the session's updated_at."""
    write_agno2(agno2_python, db_url, sim_url, "prepare")
    with psycopg.connect(db_url) as conn:
        conn.execute(AUDIT)
    result = write_agno2(agno2_python, db_url, sim_url, "basic")
    saves = query(db_url, "SELECT * FROM public.audit ORDER BY id")
    labels = {r["label"]: r for r in result["runs"]}

    def states(run_id: str) -> list[str]:
        seen = [next((e["status"] for e in s["runs"] or [] if e["run_id"] == run_id), None) for s in saves]
        out: list[str] = []
        for st in seen:
            if st is not None and (not out or out[-1] != st):
                out.append(st)
        return out

    # Background runs: saved PENDING (the session's INSERT for a new session), RUNNING, then final.
    for label in ("tool", "session-1", "session-2", "team", "error"):
        assert states(labels[label]["run_id"]) == ["PENDING", "RUNNING", labels[label]["status"]], label
    # A streamed (foreground) run appears once, already final; a member run first appears final,
    # in the same save as its team run's final state.
    assert states(labels["stream"]["run_id"]) == ["COMPLETED"]
    for label in ("team", "team-stored"):
        team, member = labels[label]["run_id"], labels[label + ":member"]["run_id"]
        first = next(s for s in saves if any(e["run_id"] == member for e in s["runs"] or []))
        assert {e["run_id"]: e["status"] for e in first["runs"]} == {team: "COMPLETED", member: "COMPLETED"}
    # updated_at: created_at on the INSERT, the save's own clock (epoch seconds) on every UPDATE.
    for s in saves:
        if s["op"] == "INSERT":
            assert s["updated_at"] == s["created_at"]
        else:
            assert s["updated_at"] == int(s["saved_at"]) or s["updated_at"] == int(s["saved_at"]) - 1
    # PENDING/RUNNING elements: metrics {} and nothing of the answer yet.
    for s in saves:
        for e in s["runs"] or []:
            if e["status"] in ("PENDING", "RUNNING"):
                assert e["metrics"] == {} and not {"messages", "content", "tools"} & set(e)


def test_many_runs(db_url: str, sim_url: str, agno2_python: str) -> None:
    result = write_agno2(agno2_python, db_url, sim_url, "many", n=20, concurrency=4)
    assert len(result["runs"]) == 20
    assert {r["status"] for r in result["runs"]} == {"COMPLETED"}
    stored = blob_runs(db_url)
    assert set(stored) == {r["run_id"] for r in result["runs"]}
    assert len(sessions(db_url)) == 7  # 3 runs per session, one after another; sessions in parallel


def test_agno3_migration_of_some_sessions(db_url: str, sim_url: str, agno2_python: str) -> None:
    result = write_agno2(agno2_python, db_url, sim_url, "basic")
    before = sessions(db_url)
    blob_before = blob_runs(db_url)
    team_session = next(r["session_id"] for r in result["runs"] if r["label"] == "team")
    error_session = next(r["session_id"] for r in result["runs"] if r["label"] == "error")
    migrated = {team_session, error_session}

    started = int(time.time())
    migrate_sessions(db_url, migrated)
    ended = int(time.time())

    # The legacy column is KEPT as agno wrote it, for every session; session rows are not touched.
    after = sessions(db_url)
    assert after == before
    # agno_runs holds exactly the migrated sessions' runs, one row per blob element, same run ids.
    rows = {r["run_id"]: r for r in query(db_url, "SELECT * FROM ai.agno_runs")}
    assert set(rows) == {rid for rid, b in blob_before.items() if b["_session"] in migrated}
    for run_id, row in rows.items():
        b = blob_before[run_id]
        assert row["session_id"] == b["_session"] and row["run_index"] == b["_index"]
        assert row["status"] == b["status"] and row["parent_run_id"] == b.get("parent_run_id")
        assert row["run_type"] == ("agent" if b.get("agent_id") else "team")
        assert row["agent_id"] == b.get("agent_id") and row["team_id"] == b.get("team_id")
        assert row["user_id"] == before[b["_session"]]["user_id"]  # the SESSION's user_id, not the run's
        assert row["workflow_id"] is None
        assert row["run_data"] == {k: v for k, v in b.items() if not k.startswith("_")}  # verbatim copy
        assert row["created_at"] == b["created_at"]  # the run's own created_at ...
        assert started <= row["updated_at"] <= ended  # ... but updated_at is the migration's clock
    member = next(r for r in result["runs"] if r["label"] == "team:member")
    assert rows[member["run_id"]]["run_type"] == "agent" and rows[member["run_id"]]["team_id"] is None
    # A partial migration is not stamped; the runs table agno created is.
    versions = {r["table_name"]: r["version"] for r in query(db_url, "SELECT * FROM ai.agno_schema_versions")}
    assert versions == {"agno_sessions": "2.5.6", "agno_runs": "3.0.0"}

    # The full migration (what a user runs) copies the rest; rows already there are left alone
    # (ON CONFLICT (run_id) DO NOTHING), the blobs are still kept, and agno_sessions is stamped 3.0.0.
    first_updated = {rid: r["updated_at"] for rid, r in rows.items()}
    time.sleep(1.05)  # updated_at is in seconds
    migrate_sessions(db_url)
    rows = {r["run_id"]: r for r in query(db_url, "SELECT * FROM ai.agno_runs")}
    assert set(rows) == set(blob_before)
    assert all(rows[rid]["updated_at"] == ts for rid, ts in first_updated.items())
    assert sessions(db_url) == before
    versions = {r["table_name"]: r["version"] for r in query(db_url, "SELECT * FROM ai.agno_schema_versions")}
    assert versions["agno_sessions"] == "3.0.0"


def test_agno3_app_continues_unmigrated_agno2_session(db_url: str, sim_url: str, agno2_python: str) -> None:
    """Upgrading the app without migrating: agno 3.x leaves the blob alone and writes new runs to agno_runs."""
    from tests.helpers.agno_app import AgnoApp

    result = write_agno2(agno2_python, db_url, sim_url, "basic")
    first = next(r for r in result["runs"] if r["label"] == "session-1")
    sid = first["session_id"]
    before = sessions(db_url)[sid]
    blob_before = blob_runs(db_url)
    time.sleep(1.05)

    async def main() -> Any:
        app = AgnoApp(db_url, sim_url)
        try:
            agent = app.agent("PlainAgent", tools=False)
            out = await app.run(agent, "And the day after?", session_id=sid)
            return out, (await agent.aget_session_metrics(session_id=sid))
        finally:
            await app.close()

    out, session_metrics = asyncio.run(main())
    after = sessions(db_url)[sid]
    assert after["runs"] == before["runs"]  # the legacy blob is not rewritten, nor cleared
    assert blob_runs(db_url) == blob_before
    assert after["updated_at"] > before["updated_at"]  # the session row itself is saved
    rows = query(db_url, "SELECT run_id, session_id, status, run_index FROM ai.agno_runs")
    assert [(r["run_id"], r["session_id"], r["status"]) for r in rows] == [(out.run_id, sid, "COMPLETED")]
    # agno 3.x adds the new run onto the 2.x session total it found.
    assert session_metrics.input_tokens == before["session_data"]["session_metrics"]["input_tokens"] + \
        out.metrics.input_tokens
