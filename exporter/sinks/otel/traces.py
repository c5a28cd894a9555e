"""OpenTelemetry sink: agno runs as GenAI spans, delivered at least once.

Why it looks like this
----------------------
* **Spans are built, not recorded.** The exporter reads finished runs from agno's tables after the
  fact, so there is no live ``Tracer``: :func:`span_data` turns one :class:`~exporter.records.runs.RunRecord`
  into :class:`SpanData` records, a pure function of the record, which :mod:`exporter.sinks.otel.otlp`
  encodes into the OTLP request (:func:`build_spans`: the same as SDK ``ReadableSpan`` objects). Trace and
  span ids come from :mod:`exporter.records.ids` (hashes of run ids), so a run exported twice gives the
  same ids, and a team's member run lands in its parent's trace whichever row is read first.
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

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AttributeValue

from exporter import __version__
from exporter.records.ids import span_id_for, trace_id_for
from exporter.records.runs import ModelCall, RunRecord, ToolCall
from exporter.sinks.otel.layout import SpanTimes, layout_tree

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


@dataclass(frozen=True, slots=True)
class SpanData:
    """One span as built, before any encoding: what the OTLP request (:mod:`exporter.sinks.otel.otlp`) and the
    SDK's ``ReadableSpan`` (:func:`readable`) are both made from. Ids are ints (128-bit trace, 64-bit span),
    times epoch nanoseconds; every span is sampled, and no context is remote."""

    name: str
    trace_id: int
    span_id: int
    parent_span_id: int | None
    kind: SpanKind
    attributes: Attributes
    start_ns: int
    end_ns: int
    scope: InstrumentationScope
    status: StatusCode = StatusCode.UNSET
    status_message: str | None = None
    link_span_ids: tuple[int, ...] = ()  # spans of the same trace this one links to (a tool -> its chat call)


def readable(span: SpanData, resource: Resource) -> ReadableSpan:
    """``span`` as the SDK's ``ReadableSpan`` (for an SDK ``SpanExporter``, and what the tests inspect)."""
    trace_id = span.trace_id
    return ReadableSpan(
        name=span.name,
        context=span_context(trace_id, span.span_id),
        parent=span_context(trace_id, span.parent_span_id) if span.parent_span_id is not None else None,
        resource=resource,
        attributes=span.attributes,
        links=[Link(span_context(trace_id, s)) for s in span.link_span_ids],
        kind=span.kind,
        status=Status(span.status, span.status_message),
        start_time=span.start_ns,
        end_time=span.end_ns,
        instrumentation_scope=span.scope,
    )

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
    created = Resource.create({**defaults, **env, **dict(attributes or {})})
    return HashedResource(created.attributes, created.schema_url)


class HashedResource(Resource):
    """A :class:`Resource` whose hash is computed once.

    The OTLP encoder groups an export's spans by resource in a dict (``_encode_resource_spans`` in
    opentelemetry-exporter-otlp-proto-common), so it hashes the resource once per span, and the SDK's
    ``Resource.__hash__`` serialises every attribute to JSON each time: the largest cost of encoding a
    batch of small spans. Every span shares this one immutable resource, so its hash cannot change;
    equality is the SDK's (equal to a plain Resource with the same attributes).
    """

    def __init__(self, attributes: Mapping[str, AttributeValue], schema_url: str | None = None) -> None:
        super().__init__(dict(attributes), schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


def span_context(trace_id: int, span_id: int) -> SpanContext:
    return SpanContext(trace_id, span_id, is_remote=False, trace_flags=_SAMPLED)


def json_attribute(value: Any) -> str:
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
    return json_attribute([{"role": "assistant", "parts": parts, "finish_reason": reason}])


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
    """:func:`span_data` as SDK ``ReadableSpan`` objects with ``resource``."""
    return [readable(span, resource) for span in span_data(
        record, root_run_id=root_run_id, parent_run_id=parent_run_id, capture_content=capture_content,
        parent_tool=parent_tool, nested=nested)]


def span_data(
    record: RunRecord,
    *,
    root_run_id: str,
    parent_run_id: str | None = None,
    capture_content: bool = False,
    parent_tool: ToolCall | None = None,
    nested: Mapping[str, Sequence[RunRecord]] | None = None,
) -> list[SpanData]:
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
    run_span = span_id_for(run_id)
    parent = None
    if parent_run_id and root != run_id:
        parent = span_id_for(parent_run_id, "tool", parent_tool.call_id) if parent_tool else span_id_for(
            parent_run_id)
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
    status, message = StatusCode.UNSET, None
    if record.error_type:
        attrs["error.type"] = record.error_type
        status, message = StatusCode.ERROR, record.error_message or record.error_type
    if capture_content:
        if record.input_content:
            attrs["gen_ai.input.messages"] = json_attribute(
                [{"role": "user", "parts": [{"type": "text", "content": record.input_content}]}]
            )
        if record.output_content:
            attrs["gen_ai.output.messages"] = json_attribute(
                [
                    {
                        "role": "assistant",
                        "parts": [{"type": "text", "content": record.output_content}],
                        "finish_reason": "stop",
                    }
                ]
            )

    spans = [
        SpanData(
            name=f"{operation} {record.name}",
            trace_id=trace_id,
            span_id=run_span,
            parent_span_id=parent,
            kind=SpanKind.INTERNAL,  # agno runs agents in-process: the "internal" invoke_agent span
            attributes=attrs,
            start_ns=layout.run.start_ns,
            end_ns=layout.run.end_ns,
            scope=SCOPE,
            status=status,
            status_message=message,
        )
    ]

    tool_names = {t.call_id: t.name for t in record.tool_calls}
    chat_span: dict[str, int] = {}
    for call, times in zip(record.model_calls, layout.chats, strict=True):
        chat = span_id_for(run_id, "chat", str(call.index))
        for call_id in call.tool_call_ids:
            chat_span.setdefault(call_id, chat)
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
        spans.append(SpanData(
            name=f"chat {call.model}", trace_id=trace_id, span_id=chat, parent_span_id=run_span,
            kind=SpanKind.CLIENT, attributes=c_attrs, start_ns=times.start_ns, end_ns=times.end_ns, scope=SCOPE))

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
        t_status, t_message = StatusCode.UNSET, None
        if tool.error:
            t_attrs["error.type"] = TOOL_ERROR_TYPE
            t_status, t_message = StatusCode.ERROR, f"tool call {tool.name} failed"
        requester = chat_span.get(tool.call_id)
        spans.append(SpanData(
            name=f"execute_tool {tool.name}", trace_id=trace_id, span_id=span_id_for(run_id, "tool", tool.call_id),
            parent_span_id=run_span, kind=SpanKind.INTERNAL, attributes=t_attrs, start_ns=times.start_ns,
            end_ns=times.end_ns, scope=SCOPE, status=t_status, status_message=t_message,
            link_span_ids=(requester,) if requester is not None else ()))
    return spans


def expected_span_count(record: RunRecord) -> int:
    """How many spans :func:`build_spans` makes for a record (used to count dropped spans)."""
    try:
        return 1 + len(record.model_calls) + len(record.tool_calls)
    except TypeError:
        return 1
