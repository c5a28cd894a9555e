"""OpenTelemetry sink: agno runs as GenAI spans, delivered at least once.

Why it looks like this
----------------------
* **Spans are built, not recorded.** The exporter reads finished runs from agno's tables after the
  fact, so there is no live ``Tracer``: :func:`build_spans` turns one :class:`~exporter.records.runs.RunRecord`
  into SDK ``ReadableSpan`` objects, a pure function of the record. Trace and span ids come from
  :mod:`exporter.records.ids` (hashes of run ids), so a run exported twice gives the same ids, and a team's
  member run lands in its parent's trace whichever row is read first.
* **Delivery is driven by a durable outbox, not by a ``BatchSpanProcessor``.** A processor keeps
  spans in memory and its ``force_flush`` does not say whether the backend took them. The
  :class:`TraceSink` asks the outbox (Postgres state owned by the collector) for runs not yet
  exported, calls ``SpanExporter.export`` itself and marks runs exported only when it returned
  ``SUCCESS``. A backend that is down only makes the outbox backlog grow; memory holds at most
  ``batch_size`` runs. Delivery is at least once: a crash between export and mark re-sends the
  same ids, which trace backends treat as the same spans.
* **One delivery path for every outbox.** The sink only knows :class:`Pending` items (a key for the
  outbox, and how to build their spans): runs (:class:`PendingTrace`) and agno's own spans
  (:mod:`exporter.sinks.otel.agno_spans`) go through the same export, probe, backoff and counters, told apart
  by the ``origin`` label (``runs`` / ``agno_tracing``).

Span tree (GenAI semantic conventions, agent spans)
---------------------------------------------------
``invoke_agent {name}`` (agent and team runs; ``invoke_workflow {name}`` for workflow runs) is the
run's span. Under it, one ``chat {model}`` span per model call and one ``execute_tool {tool}`` span
per tool call. Tool spans are *siblings* of the chat spans, as in the conventions ("tool spans
produced from the plan are sibling operations under the same invoke_agent span"): a tool runs after
the model call that requested it has ended, so it cannot be inside that call's span. The link
to the requesting call is kept as a span link (and ``gen_ai.tool.call.id``). A run with a parent
is in the root run's trace: a workflow step's run under the workflow's span, a team member's run
under the ``execute_tool`` span of the team's delegation call that started it
(:func:`exporter.records.nesting.delegating_tool`), else under its parent run's span.

Timing layout (what agno stores and how spans are placed)
---------------------------------------------------------
agno stores the run's ``created_at`` (whole epoch seconds, floored) and ``metrics.duration``
(seconds, float); each model call's ``created_at`` (whole seconds, taken just before the request)
and ``duration``; each tool call's exact ``start_time``/``end_time`` (float epoch seconds).
From that:

1. Tool spans with stored start/end are exact (``agno.timing = "exact"``); everything else is
   reconstructed (``agno.timing = "reconstructed"``).
2. Model calls are laid out back to back in message order, each followed by the tools it
   requested. Calls *before* the first exact tool are anchored on it: the call that requested the
   tool ends when the tool starts, the call before it ends when that one starts, and so on. Calls
   *after* a tool start when the latest preceding call or tool ended (tools running in parallel
   are all waited for). A call never starts before its own whole-second ``created_at``.
   Without any exact tool time, calls are laid out from the run's start.
3. The run span lasts exactly agno's ``duration``. With exact tool times, its end is aligned with
   the end of its last call or tool (the unmeasured setup time — session load, memory, prompt
   building — comes first), but it never starts before ``created_at`` nor after its first child;
   without them it starts at ``created_at``.
4. A run without a stored duration (agno measured nothing, e.g. a run that failed early) is a
   zero-length span at ``created_at``, widened only to cover its children. ``updated_at`` is not
   used: it is whole seconds, and a member run's row is rewritten when its team saves, after the
   member has finished.
5. Containment is enforced last: the run span is widened to cover every child, no duration is
   negative. Times agno stored that contradict each other are not "fixed" beyond that; exact tool
   times always win.
6. The runs nested in a run are its children too (:func:`layout_tree`): each is laid out by these
   rules from its own record first, then a workflow's span covers its steps' spans like exactly
   timed children. agno times only the last moments of a team's delegation call (the tool is a
   generator; its ``start_time`` is after the member ran), so the call's span is widened to cover
   the member runs it started (then ``agno.timing = "reconstructed"``). A run's layout depends
   only on its own record and the records nested in it, never on its parent: the same whichever
   span is built first.

Dropped spans
-------------
``agno_exporter_spans_dropped_total`` counts spans given up on, never silently:

* a run whose spans cannot be built (a bug met on unexpected data): logged with its key (run id)
  and marked exported at once, since building it again gives the same error;
* a run the backend keeps rejecting while it accepts other requests: when an export fails, the
  sink sends an empty export as a probe. Probe failing means the backend is down: back off and
  retry everything later, nothing is dropped however long it lasts. Probe succeeding means the
  backend is up and refused this batch: the batch is split in halves until the refused run is
  alone; a run refused alone ``drop_after_rejections`` times in a row (with a successful probe
  each time) is logged and marked exported. A backend that refuses empty requests makes the probe
  fail, so the sink falls back to retrying forever, never to dropping.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlparse

from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AttributeValue
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from exporter import __version__
from exporter.records.ids import span_id_for, trace_id_for
from exporter.records.nesting import delegating_tool
from exporter.records.runs import ModelCall, RunRecord, ToolCall
from exporter.retry import Backoff

log = logging.getLogger(__name__)

SCOPE = InstrumentationScope("agno-exporter", __version__)
AGNO_TRACING_SCOPE = InstrumentationScope("agno.tracing")

DEFAULT_SERVICE_NAME = "agno"
TOOL_ERROR_TYPE = "ToolCallError"  # agno stores only a flag for a failed tool call, no exception class

# agno's token types (records.TOKEN_TYPES) -> GenAI usage attributes. input/output are always set;
# the others only when non-zero, as agno stores them. All are defined by the GenAI conventions.
_USAGE_ATTRIBUTES = {
    "input": "gen_ai.usage.input_tokens",
    "output": "gen_ai.usage.output_tokens",
    "cache_read": "gen_ai.usage.cache_read.input_tokens",
    "cache_write": "gen_ai.usage.cache_creation.input_tokens",
    "reasoning": "gen_ai.usage.reasoning.output_tokens",
    "audio_input": "gen_ai.usage.audio.input_tokens",
    "audio_output": "gen_ai.usage.audio.output_tokens",
}

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)

Attributes = dict[str, AttributeValue]


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


# ---------------------------------------------------------------------------------------------
# span builder


def make_resource(attributes: Mapping[str, str] | None = None) -> Resource:
    """The resource of exported spans: defaults < ``OTEL_RESOURCE_ATTRIBUTES``/``OTEL_SERVICE_NAME`` <
    ``attributes`` (from the exporter's config). ``service.name`` names the monitored agno app."""
    defaults: dict[str, AttributeValue] = {
        "service.name": DEFAULT_SERVICE_NAME,
        "telemetry.distro.name": "agno-exporter",
        "telemetry.distro.version": __version__,
    }
    env = dict(OTELResourceDetector().detect().attributes)
    return Resource.create({**defaults, **env, **dict(attributes or {})})


def _context(trace_id: int, span_id: int) -> SpanContext:
    return SpanContext(trace_id, span_id, is_remote=False, trace_flags=_SAMPLED)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _timing(times: SpanTimes) -> str:
    return "exact" if times.exact else "reconstructed"


def _chat_output(call: ModelCall, tool_names: Mapping[str, str]) -> str | None:
    """``gen_ai.output.messages`` of one model call, per the conventions' output-messages schema."""
    parts: list[dict[str, str]] = []
    if call.content:
        parts.append({"type": "text", "content": call.content})
    for call_id in call.tool_call_ids:
        parts.append({"type": "tool_call", "id": call_id, "name": tool_names.get(call_id, "unknown")})
    if not parts:
        return None
    reason = "tool_call" if call.tool_call_ids else "stop"
    return _json([{"role": "assistant", "parts": parts, "finish_reason": reason}])


def build_spans(
    record: RunRecord,
    *,
    root_run_id: str,
    parent_run_id: str | None = None,
    resource: Resource,
    capture_content: bool = False,
    parent_tool: ToolCall | None = None,
    nested: Mapping[str, Sequence[RunRecord]] | None = None,
) -> list[ReadableSpan]:
    """The spans of one run: its invoke span first, then chat spans, then tool spans.

    ``root_run_id`` names the trace (the top-level run); ``parent_run_id`` the run whose span is
    this run's parent, and ``parent_tool`` the tool call of that run that started this one (a team
    member under its delegation call, see records.delegating_tool): its ``execute_tool`` span is
    then the parent. ``nested`` (run id -> runs nested directly in it, from the row holding them)
    lets a workflow's span cover its steps' spans. A run that is its own root gets no parent.
    Content (prompts, answers) is added only with ``capture_content=True`` *and* a record built
    with content.
    """
    run_id = record.run_id
    root = root_run_id or run_id
    trace_id = trace_id_for(root)
    run_ctx = _context(trace_id, span_id_for(run_id))
    parent = None
    if parent_run_id and root != run_id:
        parent_span = span_id_for(parent_run_id, "tool", parent_tool.call_id) if parent_tool else span_id_for(
            parent_run_id)
        parent = _context(trace_id, parent_span)
    layout = layout_tree(record, nested or {})
    workflow = record.run_type == "workflow"
    operation = "invoke_workflow" if workflow else "invoke_agent"
    known_model = record.model != "unknown"

    attrs: Attributes = {"gen_ai.operation.name": operation}
    if workflow:
        attrs["gen_ai.workflow.name"] = record.name
        if record.entity_id:
            attrs["agno.workflow.id"] = record.entity_id
    else:
        attrs["gen_ai.agent.name"] = record.name
        if record.entity_id:
            attrs["gen_ai.agent.id"] = record.entity_id
        attrs["gen_ai.provider.name"] = record.provider
    if known_model:
        attrs["gen_ai.request.model"] = record.model
    if record.session_id:
        attrs["gen_ai.conversation.id"] = record.session_id
    for token_type, key in _USAGE_ATTRIBUTES.items():
        count = record.totals.get(token_type, 0)
        if count or token_type in ("input", "output"):
            attrs[key] = count
    attrs["agno.run_id"] = run_id
    if record.session_id:
        attrs["agno.session_id"] = record.session_id
    attrs["agno.run.status"] = record.status
    attrs["agno.run_type"] = record.run_type
    if record.parent_run_id:
        attrs["agno.parent_run_id"] = record.parent_run_id
    if record.user_id:
        attrs["user.id"] = record.user_id
    if record.time_to_first_token is not None:
        attrs["agno.time_to_first_token"] = record.time_to_first_token
    if record.costs:
        attrs["agno.cost_usd"] = record.cost_usd
    if record.anomalies:
        attrs["agno.token_anomalies"] = list(record.anomaly_kinds)
    if record.workflow_step_names:
        attrs["agno.workflow.steps"] = list(record.workflow_step_names)
    attrs["agno.timing"] = _timing(layout.run)
    status = Status(StatusCode.UNSET)
    if record.error_type:
        attrs["error.type"] = record.error_type
        status = Status(StatusCode.ERROR, record.error_message or record.error_type)
    if capture_content:
        if record.input_content:
            attrs["gen_ai.input.messages"] = _json(
                [{"role": "user", "parts": [{"type": "text", "content": record.input_content}]}]
            )
        if record.output_content:
            attrs["gen_ai.output.messages"] = _json(
                [
                    {
                        "role": "assistant",
                        "parts": [{"type": "text", "content": record.output_content}],
                        "finish_reason": "stop",
                    }
                ]
            )

    spans = [
        ReadableSpan(
            name=f"{operation} {record.name}",
            context=run_ctx,
            parent=parent,
            resource=resource,
            attributes=attrs,
            kind=SpanKind.INTERNAL,  # agno runs agents in-process: the "internal" invoke_agent span
            status=status,
            start_time=layout.run.start_ns,
            end_time=layout.run.end_ns,
            instrumentation_scope=SCOPE,
        )
    ]

    tool_names = {t.call_id: t.name for t in record.tool_calls}
    chat_ctx: dict[str, SpanContext] = {}
    for call, times in zip(record.model_calls, layout.chats, strict=True):
        ctx = _context(trace_id, span_id_for(run_id, "chat", str(call.index)))
        for call_id in call.tool_call_ids:
            chat_ctx.setdefault(call_id, ctx)
        c_attrs: Attributes = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": call.provider,
            "gen_ai.request.model": call.model,
        }
        c_attrs["gen_ai.usage.input_tokens"] = call.input_tokens
        c_attrs["gen_ai.usage.output_tokens"] = call.output_tokens
        for token_type, key in _USAGE_ATTRIBUTES.items():
            if token_type not in ("input", "output") and (count := call.usage.get(token_type, 0)):
                c_attrs[key] = count
        if record.session_id:
            c_attrs["gen_ai.conversation.id"] = record.session_id
        if call.source == "message":
            c_attrs["gen_ai.request.stream"] = call.streamed
        if call.time_to_first_token is not None:
            # the conventions' time to first chunk exists for streamed calls only; agno stores a
            # non-streamed call's whole duration as its time to first token
            if call.streamed:
                c_attrs["gen_ai.response.time_to_first_chunk"] = call.time_to_first_token
            c_attrs["agno.time_to_first_token"] = call.time_to_first_token
        c_attrs["agno.model_role"] = call.model_role
        c_attrs["agno.model_call.source"] = call.source
        c_attrs["agno.run_id"] = run_id
        if call.message_id:
            c_attrs["agno.message_id"] = call.message_id
        c_attrs["agno.timing"] = _timing(times)
        if capture_content and (output := _chat_output(call, tool_names)):
            c_attrs["gen_ai.output.messages"] = output
        spans.append(
            ReadableSpan(
                name=f"chat {call.model}",
                context=ctx,
                parent=run_ctx,
                resource=resource,
                attributes=c_attrs,
                kind=SpanKind.CLIENT,
                start_time=times.start_ns,
                end_time=times.end_ns,
                instrumentation_scope=SCOPE,
            )
        )

    for tool, times in zip(record.tool_calls, layout.tools, strict=True):
        t_attrs: Attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool.name,
            "gen_ai.tool.call.id": tool.call_id,
            "gen_ai.tool.type": "function",
            "agno.run_id": run_id,
            "agno.timing": _timing(times),
        }
        if tool.child_run_id:
            t_attrs["agno.child_run_id"] = tool.child_run_id
        t_status = Status(StatusCode.UNSET)
        if tool.error:
            t_attrs["error.type"] = TOOL_ERROR_TYPE
            t_status = Status(StatusCode.ERROR, f"tool call {tool.name} failed")
        requester = chat_ctx.get(tool.call_id)
        spans.append(
            ReadableSpan(
                name=f"execute_tool {tool.name}",
                context=_context(trace_id, span_id_for(run_id, "tool", tool.call_id)),
                parent=run_ctx,
                resource=resource,
                attributes=t_attrs,
                links=[Link(requester)] if requester is not None else [],
                kind=SpanKind.INTERNAL,
                status=t_status,
                start_time=times.start_ns,
                end_time=times.end_ns,
                instrumentation_scope=SCOPE,
            )
        )
    return spans


def expected_span_count(record: RunRecord) -> int:
    """How many spans :func:`build_spans` makes for a record (used to count dropped spans)."""
    try:
        return 1 + len(record.model_calls) + len(record.tool_calls)
    except TypeError:
        return 1


# ---------------------------------------------------------------------------------------------
# agno's own tracing tables


def _iso_ns(value: Any, column: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value  # agno's Span.from_dict also accepts epoch nanoseconds
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    else:
        raise ValueError(f"{column} is {type(value).__name__}, expected an ISO 8601 string")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _attribute(value: Any) -> AttributeValue | None:
    if value is None:
        return None
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, list) and value:
        kinds = {type(v) for v in value}
        if len(kinds) == 1 and kinds <= {str, bool, int, float}:
            return list(value)
    return _json(value)


def span_from_agno_row(row: Mapping[str, Any], *, resource: Resource) -> ReadableSpan:
    """One row of agno's own ``agno_spans`` table (agno.tracing / AgentOS) as a ``ReadableSpan``.

    The original ids and times are kept (agno stores ISO 8601 times, so microsecond precision).
    These spans belong to agno's trace ids, not to the ids this exporter derives from run ids; the
    resource is the caller's because agno does not store one. Raises ``ValueError`` on a bad row.
    """
    try:
        trace_id = int(str(row["trace_id"]), 16)
        span_id = int(str(row["span_id"]), 16)
        parent_hex = row.get("parent_span_id")
        parent_id = int(str(parent_hex), 16) if parent_hex else None
    except (KeyError, ValueError) as exc:
        raise ValueError(f"agno span row without valid hex ids: {exc}") from exc
    if not trace_id or not span_id:
        raise ValueError("agno span row with a zero trace or span id")
    start = _iso_ns(row.get("start_time"), "start_time")
    end = _iso_ns(row.get("end_time"), "end_time")
    raw_attrs = row.get("attributes") or {}
    if isinstance(raw_attrs, str):
        raw_attrs = json.loads(raw_attrs)
    if not isinstance(raw_attrs, Mapping):
        raise ValueError(f"attributes is {type(raw_attrs).__name__}, expected an object")
    attrs: Attributes = {}
    for key, value in raw_attrs.items():
        converted = _attribute(value)
        if converted is not None:
            attrs[str(key)] = converted
    kind = SpanKind.__members__.get(str(row.get("span_kind") or "INTERNAL").upper(), SpanKind.INTERNAL)
    code = StatusCode.__members__.get(str(row.get("status_code") or "UNSET").upper(), StatusCode.UNSET)
    message = row.get("status_message")
    status = Status(code, str(message) if code is StatusCode.ERROR and message else None)
    return ReadableSpan(
        name=str(row.get("name") or "span"),
        context=_context(trace_id, span_id),
        parent=_context(trace_id, parent_id) if parent_id else None,
        resource=resource,
        attributes=attrs,
        kind=kind,
        status=status,
        start_time=start,
        end_time=max(start, end),
        instrumentation_scope=AGNO_TRACING_SCOPE,
    )


# ---------------------------------------------------------------------------------------------
# OTLP exporter


def make_span_exporter(
    endpoint: str | None = None,
    protocol: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> SpanExporter:
    """An OTLP span exporter; ``None`` arguments fall back to the standard environment variables.

    ``protocol``: ``http/protobuf`` (default) or ``grpc``; when None, ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``
    then ``OTEL_EXPORTER_OTLP_PROTOCOL``. ``endpoint`` is a base URL like ``OTEL_EXPORTER_OTLP_ENDPOINT``
    (for HTTP, ``/v1/traces`` is appended unless already there); when None the exporters read
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` themselves, and likewise
    ``*_HEADERS``, ``*_TIMEOUT``, ``*_COMPRESSION``, ``*_CERTIFICATE`` and (gRPC) ``*_INSECURE``.
    """
    chosen = (
        protocol
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    chosen = chosen.strip().lower()
    extra = dict(headers) if headers else None
    if chosen == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        url = endpoint
        if url and not urlparse(url).path.rstrip("/").endswith("/v1/traces"):
            url = url.rstrip("/") + "/v1/traces"
        return HttpExporter(endpoint=url or None, headers=extra, timeout=timeout)
    if chosen == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=endpoint or None, headers=extra, timeout=timeout)
    raise ValueError(f"unsupported OTLP protocol {chosen!r}: use 'http/protobuf' or 'grpc'")


# ---------------------------------------------------------------------------------------------
# delivery


class Pending(Protocol):
    """One outbox entry whose spans wait for delivery; ``key`` names it to its outbox."""

    @property
    def key(self) -> str: ...

    def build(self, resource: Resource, capture_content: bool) -> list[ReadableSpan]:
        """Its spans; deterministic, so an error here is given up on (counted as dropped)."""
        ...

    def span_count(self) -> int:
        """How many spans :meth:`build` makes, also when it fails (for the dropped counter)."""
        ...


@dataclass(frozen=True, slots=True)
class PendingTrace:
    """A run collected but not yet exported as spans; ``root_run_id`` names its trace, ``parent_tool``
    and ``nested`` are as in :func:`build_spans`."""

    record: RunRecord
    root_run_id: str
    parent_tool: ToolCall | None = None
    nested: Mapping[str, Sequence[RunRecord]] | None = None

    @property
    def key(self) -> str:
        return self.record.run_id

    def build(self, resource: Resource, capture_content: bool) -> list[ReadableSpan]:
        return build_spans(self.record, root_run_id=self.root_run_id, parent_run_id=self.record.parent_run_id,
                           resource=resource, capture_content=capture_content, parent_tool=self.parent_tool,
                           nested=self.nested)

    def span_count(self) -> int:
        return expected_span_count(self.record)


class TraceOutbox(Protocol):
    """Durable list of entries whose spans are still to be exported (implemented on Postgres state)."""

    async def pending(self, limit: int) -> Sequence[Pending]:
        """At most ``limit`` entries not yet exported, oldest first."""
        ...

    async def mark_exported(self, keys: Sequence[str]) -> None: ...


ORIGIN_RUNS = "runs"  # spans built from agno's runs
ORIGIN_AGNO_TRACING = "agno_tracing"  # agno's own spans, forwarded as they are

_BACKLOG = {
    ORIGIN_RUNS: ("agno_exporter_trace_backlog_runs",
                  "Runs waiting for span export, as seen by the last pass (at most the batch size)."),
    ORIGIN_AGNO_TRACING: ("agno_exporter_agno_spans_backlog",
                          "Spans of agno's own tracing waiting to be forwarded, as seen by the last pass "
                          "(at most the batch size)."),
}


class DeliveryMetrics:
    """Span delivery self-metrics, registered once per registry and shared by every sink on it;
    the ``origin`` label tells the sinks apart. The backlog is a gauge per origin: its unit differs
    (runs, spans)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.exported = Counter("agno_exporter_spans_exported", "Spans the trace backend accepted.", ["origin"],
                                registry=registry)
        self.failed = Counter(
            "agno_exporter_spans_failed",
            "Spans in export attempts that failed (retried later; a span retried n times counts n times).",
            ["origin"], registry=registry)
        self.dropped = Counter(
            "agno_exporter_spans_dropped",
            "Spans given up on: spans that cannot be built or that the backend keeps rejecting.",
            ["origin"], registry=registry)
        self.errors = Counter("agno_exporter_trace_export_errors", "Span export requests that failed.", ["origin"],
                              registry=registry)
        self.duration = Histogram(
            "agno_exporter_trace_export_duration_seconds",
            "Duration of one span export request, failed ones included.",
            ["origin"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=registry,
        )
        self._backlogs: dict[str, Gauge] = {}

    def backlog(self, origin: str) -> Gauge:
        if origin not in self._backlogs:
            name, doc = _BACKLOG[origin]
            self._backlogs[origin] = Gauge(name, doc, registry=self.registry)
        return self._backlogs[origin]


class _Outcome(enum.Enum):
    OK = "ok"
    REJECTED = "rejected"  # the backend is up but refused something
    DOWN = "down"  # the backend does not answer or refuses everything


class _Pass(enum.Enum):
    IDLE = "idle"  # nothing pending
    DONE = "done"  # everything pending was exported
    MORE = "more"  # a full batch was exported: more may be waiting
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class _Built:
    key: str
    spans: list[ReadableSpan]


class TraceSink:
    """Exports pending entries from an outbox through a ``SpanExporter``; see the module docstring."""

    def __init__(
        self,
        outbox: TraceOutbox,
        exporter: SpanExporter,
        *,
        resource: Resource,
        registry: CollectorRegistry | None = None,
        metrics: DeliveryMetrics | None = None,
        origin: str = ORIGIN_RUNS,
        batch_size: int = 256,
        max_backoff: float = 60.0,
        min_backoff: float = 0.5,
        capture_content: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        max_spans_per_export: int = 512,
        poll_interval: float = 30.0,
        drop_after_rejections: int = 3,
        rng: random.Random | None = None,
    ) -> None:
        if batch_size < 1 or max_spans_per_export < 1 or drop_after_rejections < 1:
            raise ValueError("batch_size, max_spans_per_export and drop_after_rejections must be >= 1")
        self._outbox = outbox
        self._exporter = exporter
        self._resource = resource
        self._batch_size = batch_size
        if not 0 < min_backoff <= max_backoff:
            raise ValueError("need 0 < min_backoff <= max_backoff")
        self._backoff_policy = Backoff(min_backoff, max_backoff, rng=rng or random.Random())
        self._capture_content = capture_content
        self._clock = clock
        self._sleep = sleep
        self._max_spans = max_spans_per_export
        self._poll_interval = poll_interval
        self._drop_after = drop_after_rejections
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rejections: dict[str, int] = {}  # key -> consecutive rejections while the backend is up

        if metrics is None:
            if registry is None:
                raise ValueError("give a registry or the shared DeliveryMetrics")
            metrics = DeliveryMetrics(registry)
        if origin not in _BACKLOG:
            raise ValueError(f"unknown origin {origin!r}")
        self.origin = origin
        self.spans_exported = metrics.exported.labels(origin)
        self.spans_failed = metrics.failed.labels(origin)
        self.spans_dropped = metrics.dropped.labels(origin)
        self.export_errors = metrics.errors.labels(origin)
        self.export_duration = metrics.duration.labels(origin)
        self.backlog = metrics.backlog(origin)

    def notify(self) -> None:
        """New entries were committed to the outbox: start a pass now (callable from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._wake.set()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        """Export until cancelled: after each pass wait for :meth:`notify` (or ``poll_interval``);
        after a failed pass back off exponentially with jitter, up to ``max_backoff``."""
        self._loop = asyncio.get_running_loop()
        failures = 0
        while True:
            self._wake.clear()  # before the pass, so a notify during the pass is not lost
            try:
                _, result = await self._pass()
            except Exception:
                log.exception("span export pass failed (outbox)")
                result = _Pass.FAILED
            if result is _Pass.FAILED:
                failures += 1
                delay = self._backoff_policy.delay(failures)
                log.warning("span export failed %d time(s) in a row; retrying in %.2fs", failures, delay)
                await self._sleep(delay)
                continue
            failures = 0
            if result is _Pass.MORE:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll_interval)

    async def flush_once(self) -> int:
        """One pass over at most ``batch_size`` pending entries; returns how many were exported."""
        exported, _ = await self._pass()
        return exported

    async def _pass(self) -> tuple[int, _Pass]:
        async with self._lock:  # run() and flush_once() (shutdown) must never export concurrently
            batch = list(await self._outbox.pending(self._batch_size))
            self.backlog.set(len(batch))
            if not batch:
                self._rejections.clear()
                return 0, _Pass.IDLE
            full = len(batch) >= self._batch_size
            built, unbuildable = await asyncio.to_thread(self._build_batch, batch)
            del batch
            if unbuildable:
                await self._outbox.mark_exported([key for key, _ in unbuildable])
                self.spans_dropped.inc(sum(n for _, n in unbuildable))
            live = {b.key for b in built}
            self._rejections = {k: v for k, v in self._rejections.items() if k in live}

            exported = 0
            failed = False
            for chunk in self._chunks(built):
                outcome, n = await self._deliver(chunk)
                exported += n
                if outcome is _Outcome.DOWN:
                    failed = True
                    break
                if outcome is _Outcome.REJECTED:
                    failed = True
            if failed:
                return exported, _Pass.FAILED
            if not full:
                self.backlog.set(0)  # everything this pass saw was delivered (or dropped)
            return exported, _Pass.MORE if full else _Pass.DONE

    def _build_batch(self, batch: Sequence[Pending]) -> tuple[list[_Built], list[tuple[str, int]]]:
        built: list[_Built] = []
        unbuildable: list[tuple[str, int]] = []
        for item in batch:
            try:
                spans = item.build(self._resource, self._capture_content)
            except Exception:
                # Building is deterministic: retrying gives the same error, so give up on this entry.
                log.exception("cannot build spans of %s %s; dropping them", self.origin, item.key)
                unbuildable.append((item.key, item.span_count()))
                continue
            built.append(_Built(item.key, spans))
        return built, unbuildable

    def _chunks(self, built: list[_Built]) -> list[list[_Built]]:
        """Whole entries per export request, at most ``max_spans_per_export`` spans (a bigger one alone)."""
        chunks: list[list[_Built]] = []
        current: list[_Built] = []
        size = 0
        for item in built:
            if current and size + len(item.spans) > self._max_spans:
                chunks.append(current)
                current, size = [], 0
            current.append(item)
            size += len(item.spans)
        if current:
            chunks.append(current)
        return chunks

    async def _deliver(self, items: list[_Built]) -> tuple[_Outcome, int]:
        spans = [span for item in items for span in item.spans]
        if await self._export(spans):
            await self._outbox.mark_exported([item.key for item in items])
            for item in items:
                self._rejections.pop(item.key, None)
            return _Outcome.OK, len(items)
        if not await self._probe():
            return _Outcome.DOWN, 0
        if len(items) == 1:
            item = items[0]
            rejections = self._rejections.get(item.key, 0) + 1
            if rejections >= self._drop_after:
                log.error(
                    "trace backend rejected the spans of %s %s %d times while accepting other requests; "
                    "dropping them",
                    self.origin,
                    item.key,
                    rejections,
                )
                await self._outbox.mark_exported([item.key])
                self.spans_dropped.inc(len(item.spans))
                self._rejections.pop(item.key, None)
            else:
                self._rejections[item.key] = rejections
            return _Outcome.REJECTED, 0
        # The backend is up but refused the batch: split it to find the entry it refuses.
        mid = len(items) // 2
        total = 0
        worst = _Outcome.OK
        for half in (items[:mid], items[mid:]):
            outcome, n = await self._deliver(half)
            total += n
            if outcome is _Outcome.DOWN:
                return outcome, total
            if outcome is _Outcome.REJECTED:
                worst = outcome
        return worst, total

    async def _export(self, spans: list[ReadableSpan]) -> bool:
        started = self._clock()
        try:
            result = await asyncio.to_thread(self._exporter.export, spans)
        except Exception:
            log.warning("span exporter raised", exc_info=True)
            result = SpanExportResult.FAILURE
        self.export_duration.observe(max(0.0, self._clock() - started))
        if result is SpanExportResult.SUCCESS:
            self.spans_exported.inc(len(spans))
            return True
        self.spans_failed.inc(len(spans))
        self.export_errors.inc()
        return False

    async def _probe(self) -> bool:
        """An empty export: succeeds when the backend is up and accepting requests."""
        try:
            result = await asyncio.to_thread(self._exporter.export, [])
        except Exception:
            return False
        return result is SpanExportResult.SUCCESS
