"""Where a run's spans sit in time, from what agno stores (see the timing layout in :mod:`exporter.sinks.otel.traces`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from exporter.records.nesting import delegating_tool
from exporter.records.runs import RunRecord, ToolCall

# ---------------------------------------------------------------------------------------------
# timing


def epoch_ns(seconds: float) -> int:
    """Epoch seconds -> nanoseconds without the float rounding of ``seconds * 1e9`` (~256 ns)."""
    whole = math.floor(seconds)
    return int(whole) * 1_000_000_000 + round((seconds - whole) * 1e9)


@dataclass(frozen=True, slots=True)
class SpanTimes:
    start_ns: int
    end_ns: int
    exact: bool  # True only for tool calls with agno's measured start/end


@dataclass(frozen=True, slots=True)
class RunLayout:
    """Where the spans of one run sit in time (see the module docstring)."""

    run: SpanTimes
    chats: tuple[SpanTimes, ...]  # aligned with record.model_calls
    tools: tuple[SpanTimes, ...]  # aligned with record.tool_calls


def _exact(tool: ToolCall) -> tuple[float, float] | None:
    if tool.start_time is None or tool.end_time is None or tool.end_time < tool.start_time:
        return None
    return tool.start_time, tool.end_time


def layout_run(record: RunRecord, children: Sequence[tuple[SpanTimes, str | None]] = ()) -> RunLayout:
    """Place a run's spans (see the module docstring).

    ``children``: the run spans of the runs nested in this one (a workflow's steps, a team's member
    runs), each with the call id of the tool call that started it (a team's delegation call) or
    None. The run covers them like exactly timed children of its own; a delegation call covers the
    member runs it started, since agno times only the call's last moments (module docstring).
    """
    calls, tools = record.model_calls, record.tool_calls
    created = float(record.created_at)
    started: dict[str, list[SpanTimes]] = {}
    for child, call_id in children:
        if call_id is not None:
            started.setdefault(call_id, []).append(child)

    def measured(tool: ToolCall) -> tuple[float, float] | None:
        exact = _exact(tool)
        runs = started.get(tool.call_id)
        if exact is None or not runs:
            return exact
        return min(exact[0], *(r.start_ns / 1e9 for r in runs)), max(exact[1], *(r.end_ns / 1e9 for r in runs))

    # Message order: each model call, then the tools it requested; tools no call claims go last.
    owner: dict[str, int] = {}
    for ci, call in enumerate(calls):
        for call_id in call.tool_call_ids:
            owner.setdefault(call_id, ci)
    requested: dict[int, list[int]] = {}
    orphans: list[int] = []
    for ti, tool in enumerate(tools):
        by = owner.get(tool.call_id)
        if by is None:
            orphans.append(ti)
        else:
            requested.setdefault(by, []).append(ti)
    seq: list[tuple[str, int]] = []
    for ci in range(len(calls)):
        seq.append(("chat", ci))
        seq.extend(("tool", ti) for ti in requested.get(ci, ()))
    seq.extend(("tool", ti) for ti in orphans)

    def length(kind: str, i: int) -> float:
        d = calls[i].duration if kind == "chat" else tools[i].duration
        return d if d is not None and d > 0 else 0.0

    # Items before the first exact tool are placed backwards from it (as late as they can be).
    anchor: int | None = None
    cursor = 0.0
    for k, (kind, i) in enumerate(seq):
        if kind == "tool" and (interval := measured(tools[i])) is not None:
            anchor, cursor = k, interval[0]
            break
    proposed: dict[int, float] = {}
    if anchor is not None:
        for k in range(anchor - 1, -1, -1):
            cursor -= length(*seq[k])
            proposed[k] = cursor

    placed: dict[tuple[str, int], tuple[float, float]] = {}
    prev_end: float | None = None
    for k, (kind, i) in enumerate(seq):
        exact = measured(tools[i]) if kind == "tool" else None
        if exact is not None:
            start, end = exact
        else:
            start = proposed.get(k, prev_end if prev_end is not None else created)
            floor_at = calls[i].created_at if kind == "chat" else None
            if floor_at is not None:
                start = max(start, float(floor_at))
            if prev_end is not None:
                start = max(start, prev_end)
            end = start + length(kind, i)
        placed[(kind, i)] = (start, end)
        prev_end = end if prev_end is None else max(prev_end, end)

    spans = [*placed.values(), *((c.start_ns / 1e9, c.end_ns / 1e9) for c, _ in children)]
    lo = min((s for s, _ in spans), default=None)
    hi = max((e for _, e in spans), default=None)
    duration = record.duration
    if duration is not None:
        aligned = anchor is not None or bool(children)
        start = max(created, hi - duration) if aligned and hi is not None else created
        if lo is not None:
            start = min(start, lo)
        end = max(start + duration, hi if hi is not None else start)
    else:
        start = created if lo is None else min(created, lo)
        end = start if hi is None else max(start, hi)

    def times(interval: tuple[float, float], exact: bool) -> SpanTimes:
        s = epoch_ns(interval[0])
        return SpanTimes(s, max(s, epoch_ns(interval[1])), exact)

    chat_times = tuple(times(placed[("chat", ci)], False) for ci in range(len(calls)))
    def tool_times_of(ti: int) -> SpanTimes:
        t = times(placed[("tool", ti)], _exact(tools[ti]) is not None)
        runs = started.get(tools[ti].call_id)
        if not runs:
            return t
        # covering the member runs exactly (in ns: seconds as floats are ~0.4 µs coarse at today's epoch)
        return SpanTimes(min(t.start_ns, *(r.start_ns for r in runs)), max(t.end_ns, *(r.end_ns for r in runs)),
                         False)

    tool_times = tuple(tool_times_of(ti) for ti in range(len(tools)))
    inner = (*chat_times, *tool_times, *(c for c, _ in children))
    run_start = min([epoch_ns(start), *(t.start_ns for t in inner)])
    run_end = max([epoch_ns(end), run_start, *(t.end_ns for t in inner)])
    return RunLayout(SpanTimes(run_start, run_end, False), chat_times, tool_times)


def layout_tree(record: RunRecord, nested: Mapping[str, Sequence[RunRecord]]) -> RunLayout:
    """:func:`layout_run` of a run together with the runs nested in it (``nested``: run id -> the
    runs nested directly in it), each laid out the same way first: a run's layout depends only on
    its own record and theirs, so it is the same whichever span is built first."""
    kids: list[tuple[SpanTimes, str | None]] = []
    for child in nested.get(record.run_id, ()):
        tool = delegating_tool(record, child) if record.run_type == "team" else None
        kids.append((layout_tree(child, nested).run, tool.call_id if tool else None))
    return layout_run(record, kids)
