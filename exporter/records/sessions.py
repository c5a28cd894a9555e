"""agno's sessions: what a session's stored totals claim, by the rules of the agno release that saved them, and
agno's metrics as stored, field by field (for ``runs show`` / ``sessions show``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exporter.records.parse import session_tokens_of
from exporter.records.runs import FINAL_STATUSES, TOKEN_FIELDS, BadRow, SessionRecord, SessionRun
from exporter.records.values import (
    COST_OUT_OF_RANGE,
    MAX_SESSION_TOKENS,
    read_bounded,
    read_count,
    read_epoch,
    read_list,
    read_object,
    read_seconds,
    read_str,
    read_tokens,
    read_usd,
    run_label,
)

# ---------------------------------------------------------------------------------------------
# sessions

# What agno's stored session totals (session_data.session_metrics) add up changed twice for team
# sessions; agent sessions add each run's metrics in every release. Checked by running each release
# (tests/releases/test_agno_releases.py) and in agno's source:
#   agno 2.1.0-2.3.4  recomputed at every save from the messages of every run stored in the session,
#                     member runs included (Team._update_session_metrics); a team run's metrics are
#                     stored whole (dataclass asdict: zeros, "timer": null), the totals with
#                     "duration": null.
#   agno 2.3.5-2.5.3  each team run adds its own metrics, the leader's model calls only (agno-agi/agno
#                     #5567: "accumulate rather than recalculate"); run metrics keep non-zero fields,
#                     have no "details", and the totals carry the summed "duration".
#   agno 2.5.4 on     each team run adds its metrics and those of its member_responses, recursively
#                     (#6704); a run whose model reported usage has "details" by model role (#6405),
#                     and so do the totals, which have no "duration".
TEAM_TOTALS = ("members", "leader")  # the team runs and their member runs / the team runs' own only


def _leaves_out_members(metrics: Mapping[str, Any], tokens: int) -> bool:
    """A team run's metrics as agno 2.3.5-2.5.3 stored them (see above).

    Earlier releases store a "timer" key, later ones "details" whenever a model reported usage; a run
    without tokens has no members' tokens to leave out either way.
    """
    return tokens > 0 and "timer" not in metrics and "details" not in metrics


def build_session_run(row: Mapping[str, Any], run_data: Any) -> SessionRun:
    """A run of a session (a row of ``agno_runs``, or a 2.x ``runs`` element as ``run_data``) reduced
    to what agno's session totals count of it. Raises :class:`BadRow` like :func:`build_run_record`."""
    if not isinstance(run_data, Mapping):
        raise BadRow("run_data_not_object", f"run_data is {type(run_data).__name__}")
    run_id = read_str(row.get("run_id")) or read_str(run_data.get("run_id"))
    if not run_id:
        raise BadRow("missing_run_id", "no run_id in the row or in run_data")
    metrics = read_object(run_data.get("metrics"), "metrics")
    totals = {"input": read_tokens(metrics.get("input_tokens"), "metrics.input_tokens"),
              "output": read_tokens(metrics.get("output_tokens"), "metrics.output_tokens")}
    run_type = (read_str(row.get("run_type")) or "").lower()
    is_team = run_type == "team" or (not run_type and not run_data.get("agent_id") and not (
        run_data.get("workflow_id") or run_data.get("workflow_name")) and bool(
        run_data.get("team_id") or run_data.get("team_name")))
    # a workflow run adds its steps' metrics (session_tokens_of), an agent or team run its own totals
    is_workflow = run_type == "workflow" or (not run_type and bool(run_data.get("workflow_name")) and not (
        run_data.get("agent_id") or run_data.get("team_id")))
    tokens = session_tokens_of("workflow" if is_workflow else "agent", metrics, totals)
    status = (read_str(row.get("status")) or read_str(run_data.get("status")) or "").upper()
    return SessionRun(
        run_id=run_id,
        parent_run_id=read_str(row.get("parent_run_id")) or read_str(run_data.get("parent_run_id")),
        tokens=tokens,
        leaves_out_members=is_team and _leaves_out_members(metrics, tokens),
        final=status in FINAL_STATUSES,
    )


def session_claim_tokens(runs: Sequence[SessionRun]) -> int:
    """Input plus output tokens agno's stored session totals should claim for ``runs`` (all the
    finished runs of one session), by the rules of the releases that saved them (see TEAM_TOTALS)."""
    return sum(r.tokens for r in counted_in_session_totals(runs))


def counted_in_session_totals(runs: Sequence[SessionRun]) -> list[SessionRun]:
    """The runs (of one session, finished) whose metrics agno's stored session totals include, by the
    rules of the releases that saved them (see TEAM_TOTALS).

    Each run counts, except the runs under a top-level team run that leaves out its members. A
    session saved by several releases (an app upgraded between two of its runs) is judged run by
    run; a downgrade from 2.3.5-2.5.3 to an older release (which recomputes the totals from every
    stored run) is not followed.
    """
    by_id = {r.run_id: r for r in runs}

    def root(run: SessionRun) -> SessionRun:
        seen = {run.run_id}
        top = run
        while (parent := by_id.get(top.parent_run_id or "")) is not None:
            if parent.run_id in seen:  # parent links that loop (no agno writes them): the run is its own root
                return run
            seen.add(parent.run_id)
            top = parent
        return top

    out = []
    for run in by_id.values():
        top = root(run)
        if top is run or not top.leaves_out_members:
            out.append(run)
    return out


def build_session_record(row: Mapping[str, Any]) -> SessionRecord:
    """Build a record of agno's stored session totals from a row of ``agno_sessions``.

    Every release's shape is read: agno up to 2.5.3 stores every field of its Metrics dataclass (zeros,
    nulls, ``timer``), later ones only non-zero fields plus ``details``. ``team_totals`` says which
    runs the totals add up, by the shape of the release that saved them last; a session saved by
    several releases is compared run by run (:func:`session_claim_tokens`).
    """
    session_id = read_str(row.get("session_id"))
    if not session_id:
        raise BadRow("missing_session_id", "no session_id")
    sanitized: list[str] = []
    session_type = (read_str(row.get("session_type")) or "agent").lower()
    data = read_object(row.get(f"{session_type}_data"), f"{session_type}_data")
    entity_id = read_str(row.get(f"{session_type}_id")) or ""
    name = run_label(read_str(data.get("name")), entity_id, sanitized)
    session_data = read_object(row.get("session_data"), "session_data")
    sm = read_object(session_data.get("session_metrics"), "session_data.session_metrics")
    totals = {t: read_count(sm.get(f), MAX_SESSION_TOKENS, "tokens in one session", f"session_metrics.{f}")
              for f, t in TOKEN_FIELDS}
    # agno 2.3.5-2.5.3's team totals: the summed duration, no details (see TEAM_TOTALS)
    duration = sm.get("duration")
    leader = session_type == "team" and isinstance(duration, (int, float)) and not isinstance(duration, bool) \
        and not sm.get("details")
    return SessionRecord(
        session_id=session_id,
        session_type=session_type,
        name=name,
        entity_id=entity_id,
        user_id=read_str(row.get("user_id")),
        created_at=read_epoch(row.get("created_at"), "created_at"),
        updated_at=read_epoch(row.get("updated_at"), "updated_at"),
        totals=totals,
        cost_usd=read_bounded(sm.get("cost"), math.inf, COST_OUT_OF_RANGE, "USD", "session_metrics.cost"),
        team_totals="leader" if leader else "members",
    )


# ---------------------------------------------------------------------------------------------
# agno's metrics as stored, field by field (for `runs show` / `sessions show`)

# agno's token fields in the order its metric classes declare them (agno/metrics.py, BaseMetrics).
AGNO_TOKEN_FIELDS: tuple[str, ...] = (
    "input_tokens", "output_tokens", "total_tokens", "audio_input_tokens", "audio_output_tokens",
    "audio_total_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
)


@dataclass(frozen=True, slots=True)
class StoredModelMetrics:
    """One entry of agno's ``details[<model role>]`` (agno's ``ModelMetrics``) as stored."""

    model_role: str
    id: str
    provider: str  # agno's own provider string, e.g. "OpenAI Chat" (not the exported label value)
    tokens: Mapping[str, int]  # every AGNO_TOKEN_FIELDS name -> count (absent = 0, as agno stores only non-zero)
    cost: float | None


@dataclass(frozen=True, slots=True)
class StoredMetrics:
    """agno's ``RunMetrics`` (a run's ``metrics``) or ``SessionMetrics`` (``session_data.session_metrics``)
    as stored, under agno's own field names: what ``pprint(run_output.metrics)`` shows in agno."""

    tokens: Mapping[str, int]  # every AGNO_TOKEN_FIELDS name -> count
    cost: float | None  # US dollars, when the provider reported it
    duration: float | None  # seconds (runs only)
    time_to_first_token: float | None  # seconds (runs only)
    details: tuple[StoredModelMetrics, ...]


def stored_metrics(metrics: Any, where: str = "metrics") -> StoredMetrics:
    """agno's stored metrics object -> :class:`StoredMetrics`; raises :class:`BadRow` like the run builder."""
    m = read_object(metrics, where)
    details: list[StoredModelMetrics] = []
    for role, entries in read_object(m.get("details"), where, ".details").items():
        for i, entry in enumerate(read_list(entries, where, ".details.", role)):
            entry = read_object(entry, where, ".details.", role, "[", i, "]")
            details.append(StoredModelMetrics(
                model_role=str(role), id=read_str(entry.get("id")) or "",
                provider=read_str(entry.get("provider")) or "",
                tokens={f: read_tokens(entry.get(f), where, ".details.", role, "[", i, "].", f)
                        for f in AGNO_TOKEN_FIELDS},
                cost=read_usd(entry.get("cost"), where, ".details.", role, "[", i, "].cost")))
    return StoredMetrics(
        tokens={f: read_count(m.get(f), MAX_SESSION_TOKENS, "tokens", where, ".", f) for f in AGNO_TOKEN_FIELDS},
        cost=read_bounded(m.get("cost"), math.inf, COST_OUT_OF_RANGE, "USD", where, ".cost"),
        duration=read_seconds(m.get("duration"), where, ".duration"),
        time_to_first_token=read_seconds(m.get("time_to_first_token"), where, ".time_to_first_token"),
        details=tuple(details),
    )


def run_stored_metrics(run_data: Any) -> StoredMetrics:
    """A run's ``metrics`` (``run_data.metrics`` in agno 3.x, the array element's in 2.x)."""
    return stored_metrics(read_object(run_data, "run_data").get("metrics"))


def session_stored_metrics(row: Mapping[str, Any]) -> StoredMetrics:
    """A session row's ``session_data.session_metrics``: agno's own running total of the session's runs."""
    data = read_object(row.get("session_data"), "session_data")
    return stored_metrics(data.get("session_metrics"), "session_data.session_metrics")
