"""records.py: what agno's stored session totals should claim, by the rules of the release that saved them.

Pure, on the rows agno 2.1.10, 2.3.26, 2.9.0 and 3.1.10 themselves wrote for agno2_writer.py's matrix
scenario (``tests/fixtures``, see its README), read as the exporter's readers hand them over (a 2.x
``runs`` element as run_data). The same conventions are checked end to end, each release in its own
virtualenv, in test_agno_releases.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from exporter.records.runs import BadRow, SessionRun
from exporter.records.sessions import build_session_record, build_session_run, session_claim_tokens
from tests.helpers.reference import MATRIX_RELEASES, matrix_runs, matrix_sessions


def session(version: str, name: str) -> tuple[Any, list[SessionRun]]:
    row = next(s for s in matrix_sessions(version) if (s["team_data"] or s["agent_data"])["name"] == name)
    if version.startswith("2."):
        runs = [build_session_run({"session_id": row["session_id"]}, e) for e in row["runs"]]
    else:
        rows = [r for r in matrix_runs(version) if r["session_id"] == row["session_id"]]
        runs = [build_session_run(r, r["run_data"]) for r in rows]
    assert all(r.final for r in runs)
    return build_session_record(row), runs


@pytest.mark.parametrize("version, team_totals", [("2.1.10", "members"), ("2.3.26", "leader"), ("2.9.0", "members"),
                                                  ("3.1.10", "members")])
def test_team_session_totals_follow_their_release(version: str, team_totals: str) -> None:
    record, runs = session(version, "FinanceTeamTwice")
    assert record.team_totals == team_totals
    assert len(runs) == 4 and sum(1 for r in runs if r.parent_run_id) == 2  # two team runs, a member each
    assert [r.leaves_out_members for r in runs if not r.parent_run_id] == [team_totals == "leader"] * 2
    everything = sum(r.tokens for r in runs)
    assert record.claimed_tokens == session_claim_tokens(runs)
    assert (record.claimed_tokens == everything) == (team_totals == "members")


@pytest.mark.parametrize("version", MATRIX_RELEASES)
def test_agent_sessions_sum_every_run(version: str) -> None:
    record, runs = session(version, "PlainAgent")
    assert record.team_totals == "members" and len(runs) == 3 and not any(r.leaves_out_members for r in runs)
    assert record.claimed_tokens == session_claim_tokens(runs) == sum(r.tokens for r in runs)


@pytest.mark.parametrize("version, claim_above_runs", [("2.1.10", False), ("2.3.26", False), ("2.9.0", True),
                                                       ("3.1.10", True)])
def test_a_team_inside_a_team(version: str, claim_above_runs: bool) -> None:
    """From 2.5.4 agno adds the inner team's member runs to the totals but stores no run for them."""
    record, runs = session(version, "HoldingTeam")
    assert len(runs) == 2  # the outer team's run and the inner team's, nothing below it
    assert (record.claimed_tokens > session_claim_tokens(runs)) == claim_above_runs
    if not claim_above_runs:
        assert record.claimed_tokens == session_claim_tokens(runs)


def test_a_session_saved_by_two_releases_is_summed_run_by_run() -> None:
    """An app upgraded from 2.3 to 2.9 between two runs of a session: the old runs count without their
    members, the new ones with them (the runs of both releases' sessions, joined into one)."""
    _, old = session("2.3.26", "FinanceTeamTwice")
    _, new = session("2.9.0", "FinanceTeamTwice")
    expected = sum(r.tokens for r in old if not r.parent_run_id) + sum(r.tokens for r in new)
    assert session_claim_tokens(old + new) == expected


def test_malformed_runs_are_rejected_with_a_reason() -> None:
    with pytest.raises(BadRow, match="run_data_not_object"):
        build_session_run({"run_id": "r"}, [1, 2])
    with pytest.raises(BadRow, match="missing_run_id"):
        build_session_run({}, {"metrics": {}})
    with pytest.raises(BadRow, match="negative"):
        build_session_run({"run_id": "r"}, {"metrics": {"input_tokens": -1}})


def test_parent_links_that_loop_do_not_hang() -> None:
    """Hand-made: two runs each naming the other as parent (no agno writes that)."""
    a = SessionRun("a", "b", 10, leaves_out_members=True)
    b = SessionRun("b", "a", 5, leaves_out_members=True)
    assert session_claim_tokens([a, b]) == 15  # each its own root
