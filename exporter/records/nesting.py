"""Runs nested inside a row (a workflow's step runs, the member runs of a team step) and the tool call of a team
that delegated to a member.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from exporter.records.parse import build_run_record
from exporter.records.runs import BadRow, RunRecord, ToolCall, record
from exporter.records.values import read_str

# ---------------------------------------------------------------------------------------------
# runs nested inside a row: a workflow's step runs, the member runs of a team step

# agno stops reading nested workflow runs this deep (WorkflowRunOutput._MAX_NESTED_DEPTH, agno/run/workflow.py)
MAX_NESTING = 10
# The tools a team leader hands a task to its members with (agno/team/_default_tools.py, _task_tools.py).
DELEGATION_TOOLS = frozenset(
    {"delegate_task_to_member", "delegate_task_to_members", "execute_task", "execute_tasks_parallel"})


@record
class RowRuns:
    """The runs one stored row holds: the row's own run, then the runs agno nested inside it.

    agno (3.1, and 2.x alike) keeps the run of a workflow's agent or team step only inside the
    workflow run: ``step_executor_runs`` (a nested workflow's run there holds its own steps in turn)
    and ``workflow_agent_run`` (the ``WorkflowAgent`` that decided to run the workflow). The member
    runs of a team step are only inside that team run's ``member_responses``. None of them has a row
    of its own, unless the step's agent had a database and persisted its run itself (agno does that
    for steps inside Parallel/Loop/Condition/Router/Steps, without ``parent_run_id``): the same run
    id in two places, which the collector counts once.

    ``nested`` is depth first: a run comes after the run it is nested in. ``skipped`` holds
    ``(key, reason)`` of nested runs that cannot be read; the key is the run id, or the host's id
    and the JSON path when the run has none. The row's own run and its other nested runs still count.
    """

    run: RunRecord
    nested: tuple[RunRecord, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def records(self) -> tuple[RunRecord, ...]:
        return (self.run, *self.nested)


def build_row_runs(row: Mapping[str, Any], run_data: Any, *, with_content: bool = False) -> RowRuns:
    """Every run one row holds (see :class:`RowRuns`); raises :class:`BadRow` only for the row's own run.

    A team run that is a row of its own carries no member runs here: agno 3.x persists every member
    run as a row of its own (``_persist_member_runs_for_team_run``, agno/team/_run.py), agno 2.x as an
    element of the session's ``runs``; its ``member_responses`` is a copy (empty unless
    ``store_member_responses``). Only the members of a *nested* team are read from there.

    A nested run is attributed like the copy agno stored: its own status, metrics, messages and
    tools; ``parent_run_id`` as agno set it (the workflow run, or the team run for a member), else
    the run it is nested in; session and user from the copy, else the row's. It has no
    ``updated_at`` of its own: the row's is when it was saved.
    """
    run = build_run_record(row, run_data, with_content=with_content)
    nested: list[RunRecord] = []
    skipped: list[tuple[str, str]] = []
    seen = {run.run_id}
    assert isinstance(run_data, Mapping)  # build_run_record checked it
    _nested_runs(run_data, run, run, 1, False, with_content, seen, nested, skipped)
    return RowRuns(run, tuple(nested), tuple(skipped))


def _nested_runs(
    data: Mapping[str, Any], container: RunRecord, host: RunRecord, depth: int, members: bool,
    with_content: bool, seen: set[str], out: list[RunRecord], skipped: list[tuple[str, str]],
) -> None:
    """Append the runs nested in ``data`` (the JSON of ``container``) to ``out``, recursively."""
    found: list[tuple[str, Any, str | None]] = []  # (JSON path, element, run type agno would read it as)
    lists = ("step_executor_runs",) if container.run_type == "workflow" else ()
    if members and container.run_type == "team":
        lists = ("member_responses",)
    for key in lists:
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, list):
            skipped.append((f"{host.run_id}/{container.run_id}.{key}", "wrong_type"))
            continue
        found.extend((f"{key}[{i}]", element, None) for i, element in enumerate(value))
    if container.run_type == "workflow" and data.get("workflow_agent_run") is not None:
        found.append(("workflow_agent_run", data["workflow_agent_run"], "agent"))  # a RunOutput in agno
    for path, element, run_type in found:
        key = f"{host.run_id}/{container.run_id}.{path}"
        if not isinstance(element, Mapping):
            skipped.append((key, "wrong_type"))
            continue
        if depth > MAX_NESTING:
            skipped.append((read_str(element.get("run_id")) or key, "nested_too_deep"))
            continue
        try:
            record = _nested_record(element, run_type or _nested_type(element), container, host, with_content)
        except BadRow as exc:
            skipped.append((read_str(element.get("run_id")) or key, exc.reason))
            continue
        if record.run_id in seen:  # the same run nested twice in one row: agno's copy of a copy
            continue
        seen.add(record.run_id)
        out.append(record)
        _nested_runs(element, record, host, depth + 1, True, with_content, seen, out, skipped)


def _nested_type(element: Mapping[str, Any]) -> str:
    """The run type agno reads a ``step_executor_runs`` element as (WorkflowRunOutput.from_dict): team
    first, then agent (a step agent's run also carries ``workflow_id``), then a nested workflow."""
    def has(*keys: str) -> bool:  # agno omits a field that is None; a projected row holds it as null
        return any(element.get(k) is not None for k in keys)

    if has("team_id", "team_name"):
        return "team"
    if has("agent_id", "agent_name"):
        return "agent"
    if has("workflow_name", "step_executor_runs"):
        return "workflow"
    return "agent"


def _nested_record(element: Mapping[str, Any], run_type: str, container: RunRecord, host: RunRecord,
                   with_content: bool) -> RunRecord:
    columns: dict[str, Any] = {
        "run_type": run_type,
        "session_id": read_str(element.get("session_id")) or host.session_id,
        "user_id": read_str(element.get("user_id")) or host.user_id,
        "parent_run_id": read_str(element.get("parent_run_id")) or container.run_id,
        "updated_at": host.updated_at,
    }
    return replace(build_run_record(columns, element, with_content=with_content), host_run_id=host.run_id)


def delegating_tool(team: RunRecord, member: RunRecord) -> ToolCall | None:
    """The tool call of ``team`` that started ``member``'s run, or None when it cannot be told.

    Candidates are the team run's delegation tool calls (:data:`DELEGATION_TOOLS`) whose
    ``member_id`` argument names the member's agent or team id (``delegate_task_to_members`` names
    none: it starts every member). One candidate is the answer. Several (the member was handed
    several tasks in one run) are narrowed to the call whose exact start/end contains the member's
    run (its whole-second ``created_at`` and ``duration``); one left is the answer.

    agno's own link, ``child_run_id`` on the tool call, is not used: agno 3.1 sets it only while
    streaming (the tool is not in ``run_response.tools`` yet otherwise), and on every delegation it
    sets it on all earlier delegation calls of the run too (agno/team/_default_tools.py), so with two
    delegations both calls name the second member.
    """
    if member.parent_run_id != team.run_id:
        return None
    found = [t for t in team.tool_calls
             if t.name in DELEGATION_TOOLS and (t.member_id is None or t.member_id == member.entity_id)]
    if len(found) > 1:
        found = [t for t in found if _ran_within(member, t)]
    return found[0] if len(found) == 1 else None


def _ran_within(member: RunRecord, tool: ToolCall) -> bool:
    if tool.start_time is None or tool.end_time is None:
        return False
    return math.floor(tool.start_time) <= member.created_at and \
        member.created_at + (member.duration or 0.0) <= tool.end_time
