"""Turn agno's stored rows into typed records.

This is the only module that knows the shape of agno's JSON (``run_data`` of ``agno_runs`` in 3.x,
the elements of ``agno_sessions.runs`` in 2.x, ``session_data.session_metrics``). Everything
downstream consumes :class:`RunRecord` / :class:`SessionRecord`, never raw dicts.

The functions are pure: they take what was read and return a record or raise :class:`BadRow`
with a short machine-readable reason, which the collector counts and logs, so a malformed row
never stops the cursor. agno stores only non-zero metric fields, so an absent field means zero.
"""

from __future__ import annotations

import math
import sys
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

# Statuses after which agno never changes a run's metrics again. PAUSED is not final: a paused run
# is continued under the same run id. REGENERATED marks a run that was replaced; it did spend tokens.
FINAL_STATUSES = frozenset({"COMPLETED", "ERROR", "CANCELLED", "REGENERATED"})
OPEN_STATUSES = frozenset({"PENDING", "RUNNING", "PAUSED"})
KNOWN_STATUSES = FINAL_STATUSES | OPEN_STATUSES
RUN_TYPES = frozenset({"agent", "team", "workflow"})

# agno's metric field -> the token_type label value.
TOKEN_FIELDS: tuple[tuple[str, str], ...] = (
    ("input_tokens", "input"),
    ("output_tokens", "output"),
    ("cache_read_tokens", "cache_read"),
    ("cache_write_tokens", "cache_write"),
    ("reasoning_tokens", "reasoning"),
    ("audio_input_tokens", "audio_input"),
    ("audio_output_tokens", "audio_output"),
)
TOKEN_TYPES: tuple[str, ...] = tuple(t for _, t in TOKEN_FIELDS)

# agno's provider strings (Model.get_provider() and Model.provider) -> the OpenTelemetry GenAI
# `gen_ai.provider.name` well-known values, so GenAI dashboards group them the same way.
_PROVIDERS = {
    "openai": "openai",
    "openai chat": "openai",
    "openai responses": "openai",
    "azure": "azure.ai.openai",
    "azure openai": "azure.ai.openai",
    "azureopenai": "azure.ai.openai",
    "azure ai foundry": "azure.ai.inference",
    "anthropic": "anthropic",
    "claude": "anthropic",
    "aws bedrock": "aws.bedrock",
    "awsbedrock": "aws.bedrock",
    "bedrock": "aws.bedrock",
    "google": "gcp.gemini",
    "gemini": "gcp.gemini",
    "vertexai": "gcp.vertex_ai",
    "groq": "groq",
    "mistral": "mistral_ai",
    "mistralai": "mistral_ai",
    "deepseek": "deepseek",
    "xai": "x_ai",
    "perplexity": "perplexity",
    "cohere": "cohere",
    "ibm": "ibm.watsonx.ai",
}

MAX_LABEL_CHARS = 128
MAX_ERROR_CHARS = 512


class BadRow(ValueError):
    """A stored row that cannot be turned into a record; ``reason`` is a bounded label value."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens of one type used by one model in one role (agno's ``metrics.details``) in a run."""

    model_role: str
    model: str
    provider: str
    token_type: str
    count: int


@dataclass(frozen=True, slots=True)
class ModelCost:
    """Cost as reported by the provider and stored by agno (absent unless the provider reports it)."""

    model_role: str
    model: str
    provider: str
    usd: float


@dataclass(frozen=True, slots=True)
class ModelCall:
    """One assistant message produced in the run (not replayed from history) = one model call."""

    index: int
    message_id: str
    model: str
    provider: str
    input_tokens: int
    output_tokens: int
    duration: float | None
    time_to_first_token: float | None
    created_at: int | None
    tool_call_ids: tuple[str, ...] = ()
    content: str | None = None  # only when content capture is enabled


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool execution, with the exact start/end times agno measured."""

    index: int
    name: str
    call_id: str
    error: bool
    duration: float | None
    start_time: float | None
    end_time: float | None
    child_run_id: str | None = None
    # the ``member_id`` argument of a team's delegation tool call: the member it hands the task to
    member_id: str | None = None


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One finished (or still open) agno run, validated and typed."""

    run_id: str
    session_id: str
    run_type: str
    status: str
    name: str
    entity_id: str  # agent_id / team_id / workflow_id
    user_id: str | None
    parent_run_id: str | None
    created_at: int
    updated_at: int
    model: str
    provider: str
    duration: float | None
    time_to_first_token: float | None
    totals: Mapping[str, int]  # token_type -> count, agno's run-level totals
    tokens: tuple[TokenUsage, ...]
    costs: tuple[ModelCost, ...]
    model_calls: tuple[ModelCall, ...]
    tool_calls: tuple[ToolCall, ...]
    error_type: str | None = None
    error_message: str | None = None
    workflow_step_names: tuple[str, ...] = ()
    input_content: str | None = None
    output_content: str | None = None
    # what had to be cleaned to make label values of this row (e.g. "control_chars"), for counting
    sanitized: tuple[str, ...] = ()
    anomalies: tuple[str, ...] = field(default=())
    # Set when this run has no row of its own in this copy: agno nested it inside the run whose row
    # holds it (a workflow's step run, a member run of a team step); see build_row_runs.
    host_run_id: str | None = None
    # Tokens (input + output) agno adds to the session's stored ``session_metrics`` for this run when
    # it is a row of its own (see session_tokens_of); a nested copy adds nothing: agno counts a step
    # through its workflow. Lets the disagreement check compare like with like.
    session_tokens: int = 0

    @property
    def cost_usd(self) -> float:
        return sum(c.usd for c in self.costs)

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """agno's stored view of a session: its claimed totals (``session_metrics``), to check against runs."""

    session_id: str
    session_type: str
    name: str
    entity_id: str
    user_id: str | None
    created_at: int
    updated_at: int
    totals: Mapping[str, int]
    cost_usd: float | None


# ---------------------------------------------------------------------------------------------
# small validators


# ``where`` names the field in an error; it comes in parts, joined only when there is an error
# (a run has dozens of fields: formatting each path up front was a tenth of the parsing time).


_MAX_FLOAT = sys.float_info.max


def _path(where: tuple[Any, ...]) -> str:
    return "".join(map(str, where))


def _num(value: Any, *where: Any) -> float | None:
    """A non-negative finite number, or None when absent. bool is not a number here."""
    if value is None:
        return None
    if type(value) is float and 0.0 <= value <= _MAX_FLOAT:  # the common case first (NaN fails it)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRow("wrong_type", f"{_path(where)} is {type(value).__name__}, expected a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRow("not_finite", f"{_path(where)} is {value}")
    if value < 0:
        raise BadRow("negative", f"{_path(where)} is {value}")
    return float(value)


def _tokens(value: Any, *where: Any) -> int:
    if type(value) is int and value >= 0:  # the common case first
        return value
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise BadRow("negative", f"{_path(where)} is {value}")
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    num = _num(value, *where)  # raises with the precise reason
    raise BadRow("wrong_type", f"{_path(where)} is {num}, expected a whole number")


def _obj(value: Any, *where: Any) -> Mapping[str, Any]:
    if type(value) is dict:  # what the JSON parser makes; isinstance on Mapping is ten times slower
        return value
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise BadRow("wrong_type", f"{_path(where)} is {type(value).__name__}, expected an object")
    return value


def _list(value: Any, *where: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRow("wrong_type", f"{_path(where)} is {type(value).__name__}, expected a list")
    return value


def _str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _epoch(value: Any, *where: Any) -> int:
    num = _num(value, *where)
    return int(num) if num is not None else 0


def clean_label(value: str | None, fallback: str, sanitized: list[str]) -> str:
    """Make a value safe for a Prometheus label: no control characters, bounded length."""
    if not value:
        return fallback
    if not value.isprintable():
        sanitized.append("control_chars")
        value = "".join(ch if ch.isprintable() else " " for ch in value).strip() or fallback
    if len(value) > MAX_LABEL_CHARS:
        sanitized.append("too_long")
        value = value[:MAX_LABEL_CHARS]
    return unicodedata.normalize("NFC", value)


def provider_name(raw: str | None) -> str:
    """agno's provider string -> OpenTelemetry GenAI provider name (lower-case, stable)."""
    if not raw:
        return "unknown"
    key = raw.strip().lower()
    return _PROVIDERS.get(key) or key.replace(" ", "_")


# agno stores the exception text as the run's content; map the common client errors to a stable
# error.type (OpenTelemetry: low-cardinality class of the error).
_ERROR_TYPES = (
    ("connection error", "APIConnectionError"),
    ("timed out", "APITimeoutError"),
    ("timeout", "APITimeoutError"),
    ("rate limit", "RateLimitError"),
    ("429", "RateLimitError"),
    ("500", "InternalServerError"),
    ("internal server error", "InternalServerError"),
    ("authentication", "AuthenticationError"),
    ("401", "AuthenticationError"),
    ("context length", "ContextLengthExceeded"),
    ("cancelled", "Cancelled"),
)


def classify_error(status: str, message: str | None) -> str | None:
    if status not in ("ERROR", "CANCELLED"):
        return None
    if status == "CANCELLED":
        return "Cancelled"
    text = (message or "").lower()
    for needle, kind in _ERROR_TYPES:
        if needle in text:
            return kind
    return "AgnoRunError"


# ---------------------------------------------------------------------------------------------
# runs


def _token_split(
    metrics: Mapping[str, Any], totals: dict[str, int], model: str, provider: str
) -> tuple[tuple[TokenUsage, ...], tuple[ModelCost, ...], tuple[str, ...]]:
    """Split the run totals by (model role, model, provider) using ``metrics.details``.

    agno accumulates details and totals together, so they agree; where they do not (old versions,
    provider bugs) the run totals are the truth and the remainder is attributed to the run's model.
    """
    usages: dict[tuple[str, str, str, str], int] = {}
    costs: list[ModelCost] = []
    anomalies: list[str] = []
    details = _obj(metrics.get("details"), "metrics.details")
    attributed = dict.fromkeys(TOKEN_TYPES, 0)
    for role, entries in details.items():
        for i, entry in enumerate(_list(entries, "metrics.details.", role)):
            entry = _obj(entry, "metrics.details.", role, "[", i, "]")
            m_id = _str(entry.get("id")) or model
            m_provider = provider_name(_str(entry.get("provider")) or provider)
            for fname, ttype in TOKEN_FIELDS:
                n = _tokens(entry.get(fname), "metrics.details.", role, "[", i, "].", fname)
                if n:
                    key = (str(role), m_id, m_provider, ttype)
                    usages[key] = usages.get(key, 0) + n
                    attributed[ttype] += n
            cost = _num(entry.get("cost"), "metrics.details.", role, "[", i, "].cost")
            if cost:
                costs.append(ModelCost(str(role), m_id, m_provider, cost))
    for ttype, total in totals.items():
        rest = total - attributed[ttype]
        if rest > 0:
            if attributed[ttype]:
                anomalies.append("details_below_total")
            key = ("model", model, provider, ttype)
            usages[key] = usages.get(key, 0) + rest
        elif rest < 0:
            # details claim more than the run total: keep the run total (agno's number) exact by
            # scaling nothing and dropping the excess; flag it so users can see the provider bug.
            anomalies.append("details_above_total")
            excess = -rest
            for key in sorted(k for k in usages if k[3] == ttype):
                take = min(excess, usages[key])
                usages[key] -= take
                excess -= take
                if not excess:
                    break
    run_cost = _num(metrics.get("cost"), "metrics.cost")
    if run_cost and not costs:
        costs.append(ModelCost("model", model, provider, run_cost))
    tokens = tuple(TokenUsage(k[0], k[1], k[2], k[3], n) for k, n in usages.items() if n)
    return tokens, tuple(costs), tuple(anomalies)


def _token_anomalies(where: Mapping[str, Any], totals: Mapping[str, int]) -> list[str]:
    """Checks that can be stated exactly (see the [signals] docs)."""
    found = []
    total = where.get("total_tokens")
    if isinstance(total, int) and totals["input"] and totals["output"] and total != totals["input"] + totals["output"]:
        found.append("total_mismatch")
    if totals["cache_read"] > totals["input"] > 0:
        found.append("cache_exceeds_input")
    if totals["reasoning"] > totals["output"] > 0:
        found.append("reasoning_exceeds_output")
    return found


def _model_calls(
    messages: list[Any], model: str, provider: str, with_content: bool
) -> tuple[ModelCall, ...]:
    calls: list[ModelCall] = []
    for i, msg in enumerate(messages):
        msg = _obj(msg, "messages[", i, "]")
        if msg.get("role") != "assistant" or msg.get("from_history") is True:
            continue
        metrics = _obj(msg.get("metrics"), "messages[", i, "].metrics")
        tool_ids = tuple(
            _str(_obj(tc, "messages[", i, "].tool_calls[]").get("id")) or ""
            for tc in _list(msg.get("tool_calls"), "messages[", i, "].tool_calls")
        )
        content = msg.get("content") if with_content else None
        calls.append(
            ModelCall(
                index=len(calls),
                message_id=_str(msg.get("id")) or "",
                model=model,
                provider=provider,
                input_tokens=_tokens(metrics.get("input_tokens"), "messages[", i, "].metrics.input_tokens"),
                output_tokens=_tokens(metrics.get("output_tokens"), "messages[", i, "].metrics.output_tokens"),
                duration=_num(metrics.get("duration"), "messages[", i, "].metrics.duration"),
                time_to_first_token=_num(metrics.get("time_to_first_token"), "messages[", i,
                                         "].metrics.time_to_first_token"),
                created_at=_epoch(msg.get("created_at"), "messages[", i, "].created_at") or None,
                tool_call_ids=tool_ids,
                content=content if isinstance(content, str) else None,
            )
        )
    return tuple(calls)


def _tool_calls(tools: list[Any], sanitized: list[str]) -> tuple[ToolCall, ...]:
    calls: list[ToolCall] = []
    for i, tool in enumerate(tools):
        tool = _obj(tool, "tools[", i, "]")
        metrics = _obj(tool.get("metrics"), "tools[", i, "].metrics")
        start = _num(metrics.get("start_time"), "tools[", i, "].metrics.start_time")
        end = _num(metrics.get("end_time"), "tools[", i, "].metrics.end_time")
        duration = _num(metrics.get("duration"), "tools[", i, "].metrics.duration")
        if duration is None and start is not None and end is not None and end >= start:
            duration = end - start
        calls.append(
            ToolCall(
                index=i,
                name=clean_label(_str(tool.get("tool_name")), "unknown", sanitized),
                call_id=_str(tool.get("tool_call_id")) or f"tool-{i}",
                error=tool.get("tool_call_error") is True,
                duration=duration,
                start_time=start,
                end_time=end,
                child_run_id=_str(tool.get("child_run_id")),
                member_id=_delegated_to(tool.get("tool_args")),
            )
        )
    return tuple(calls)


def _content_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        inner = value.get("input_content")
        return inner if isinstance(inner, str) else None
    return None


def row_run_id(row: Mapping[str, Any]) -> str | None:
    """The run id of a fetched row: its column (agno 3.x) or its JSON (an agno 2.x array element)."""
    data = row.get("run_data")
    return _str(row.get("run_id")) or (_str(data.get("run_id")) if isinstance(data, Mapping) else None)


def build_run_record(
    row: Mapping[str, Any],
    run_data: Any,
    *,
    with_content: bool = False,
) -> RunRecord:
    """Build a record from a row of ``agno_runs`` (columns) and its ``run_data`` JSON.

    For agno 2.x, the legacy reader passes the session's columns as ``row`` and one element of
    ``agno_sessions.runs`` as ``run_data``; the JSON of a run is the same shape in both versions.
    """
    if not isinstance(run_data, Mapping):
        raise BadRow("run_data_not_object", f"run_data is {type(run_data).__name__}")
    run_id = _str(row.get("run_id")) or _str(run_data.get("run_id"))
    if not run_id:
        raise BadRow("missing_run_id", "no run_id in the row or in run_data")
    status = _str(row.get("status")) or _str(run_data.get("status")) or ""
    status = status.upper()
    if status not in KNOWN_STATUSES:
        raise BadRow("unknown_status", f"status {status!r}")

    sanitized: list[str] = []
    run_type = (_str(row.get("run_type")) or "").lower()
    if run_type not in RUN_TYPES:
        if run_data.get("workflow_id") or run_data.get("workflow_name"):
            run_type = "workflow"
        elif run_data.get("team_id") or run_data.get("team_name"):
            run_type = "team"
        else:
            run_type = "agent"
    id_col = {"agent": "agent_id", "team": "team_id", "workflow": "workflow_id"}[run_type]
    entity_id = _str(row.get(id_col)) or _str(run_data.get(id_col)) or ""
    raw_name = _str(run_data.get(f"{run_type}_name")) or entity_id
    name = clean_label(raw_name, "unnamed", sanitized)

    metrics = _obj(run_data.get("metrics"), "metrics")
    model = clean_label(_str(run_data.get("model")), "unknown", sanitized)
    provider = provider_name(_str(run_data.get("model_provider")))

    if run_type == "workflow":
        # A workflow run has no model calls of its own: its steps' runs carry them, nested in this
        # row (build_row_runs) or, for an agent that persisted its run itself, rows of their own.
        totals = dict.fromkeys(TOKEN_TYPES, 0)
        tokens: tuple[TokenUsage, ...] = ()
        costs: tuple[ModelCost, ...] = ()
        anomalies: list[str] = []
        steps = _obj(metrics.get("steps"), "metrics.steps")
        step_names = tuple(str(k) for k in steps)
    else:
        totals = {t: _tokens(metrics.get(f), "metrics.", f) for f, t in TOKEN_FIELDS}
        tokens, costs, split_anomalies = _token_split(metrics, totals, model, provider)
        anomalies = [*split_anomalies, *_token_anomalies(metrics, totals)]
        step_names = ()

    messages = _list(run_data.get("messages"), "messages")
    model_calls = _model_calls(messages, model, provider, with_content) if run_type != "workflow" else ()
    tool_calls = _tool_calls(_list(run_data.get("tools"), "tools"), sanitized)

    error_message = None
    if status in ("ERROR", "CANCELLED"):
        content = run_data.get("content")
        error_message = content[:MAX_ERROR_CHARS] if isinstance(content, str) else None

    return RunRecord(
        run_id=run_id,
        session_id=_str(row.get("session_id")) or _str(run_data.get("session_id")) or "",
        run_type=run_type,
        status=status,
        name=name,
        entity_id=entity_id,
        user_id=_str(row.get("user_id")) or _str(run_data.get("user_id")),
        parent_run_id=_str(row.get("parent_run_id")) or _str(run_data.get("parent_run_id")),
        created_at=_epoch(row.get("created_at", run_data.get("created_at")), "created_at"),
        updated_at=_epoch(row.get("updated_at", run_data.get("updated_at")), "updated_at"),
        model=model,
        provider=provider,
        duration=_num(metrics.get("duration"), "metrics.duration"),
        time_to_first_token=_num(metrics.get("time_to_first_token"), "metrics.time_to_first_token"),
        totals=totals,
        tokens=tokens,
        costs=costs,
        model_calls=model_calls,
        tool_calls=tool_calls,
        error_type=classify_error(status, error_message),
        error_message=error_message,
        workflow_step_names=step_names,
        input_content=_content_text(run_data.get("input")) if with_content else None,
        output_content=(
            run_data.get("content")
            if with_content and isinstance(run_data.get("content"), str) and status == "COMPLETED"
            else None
        ),
        sanitized=tuple(sanitized),
        anomalies=tuple(anomalies),
        session_tokens=session_tokens_of(run_type, metrics, totals),
    )


# ---------------------------------------------------------------------------------------------
# sessions


def build_session_record(row: Mapping[str, Any]) -> SessionRecord:
    """Build a record of agno's stored session totals from a row of ``agno_sessions``."""
    session_id = _str(row.get("session_id"))
    if not session_id:
        raise BadRow("missing_session_id", "no session_id")
    sanitized: list[str] = []
    session_type = (_str(row.get("session_type")) or "agent").lower()
    data = _obj(row.get(f"{session_type}_data"), f"{session_type}_data")
    entity_id = _str(row.get(f"{session_type}_id")) or ""
    name = clean_label(_str(data.get("name")) or entity_id, "unnamed", sanitized)
    session_data = _obj(row.get("session_data"), "session_data")
    sm = _obj(session_data.get("session_metrics"), "session_data.session_metrics")
    totals = {t: _tokens(sm.get(f), f"session_metrics.{f}") for f, t in TOKEN_FIELDS}
    return SessionRecord(
        session_id=session_id,
        session_type=session_type,
        name=name,
        entity_id=entity_id,
        user_id=_str(row.get("user_id")),
        created_at=_epoch(row.get("created_at"), "created_at"),
        updated_at=_epoch(row.get("updated_at"), "updated_at"),
        totals=totals,
        cost_usd=_num(sm.get("cost"), "session_metrics.cost"),
    )


# ---------------------------------------------------------------------------------------------
# runs nested inside a row: a workflow's step runs, the member runs of a team step

# agno stops reading nested workflow runs this deep (WorkflowRunOutput._MAX_NESTED_DEPTH, agno/run/workflow.py)
MAX_NESTING = 10
# The tools a team leader hands a task to its members with (agno/team/_default_tools.py, _task_tools.py).
DELEGATION_TOOLS = frozenset(
    {"delegate_task_to_member", "delegate_task_to_members", "execute_task", "execute_tasks_parallel"})


@dataclass(frozen=True, slots=True)
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
            skipped.append((_str(element.get("run_id")) or key, "nested_too_deep"))
            continue
        try:
            record = _nested_record(element, run_type or _nested_type(element), container, host, with_content)
        except BadRow as exc:
            skipped.append((_str(element.get("run_id")) or key, exc.reason))
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
        "session_id": _str(element.get("session_id")) or host.session_id,
        "user_id": _str(element.get("user_id")) or host.user_id,
        "parent_run_id": _str(element.get("parent_run_id")) or container.run_id,
        "updated_at": host.updated_at,
    }
    return replace(build_run_record(columns, element, with_content=with_content), host_run_id=host.run_id)


def session_tokens_of(run_type: str, metrics: Mapping[str, Any], totals: Mapping[str, int]) -> int:
    """Input + output tokens agno adds to the session's ``session_metrics`` for a run of its own row.

    An agent or team run adds its own totals (agno/agent/_session.py, agno/team/_session.py). A
    workflow run adds the sum of ``metrics.steps`` (``_calculate_session_metrics_from_workflow_metrics``,
    agno/workflow/workflow.py): one entry per step *name* of an agent or team step, so a Loop's
    steps count once (the last iteration), a team step counts its leader only, and function steps
    count nothing. A run counted from a nested copy adds nothing by itself (the state's rule).
    """
    if run_type != "workflow":
        return totals["input"] + totals["output"]
    steps = _obj(metrics.get("steps"), "metrics.steps")
    total = 0
    for name, step in steps.items():
        step_metrics = _obj(_obj(step, "metrics.steps.", name).get("metrics"), "metrics.steps.", name, ".metrics")
        for field_name in ("input_tokens", "output_tokens"):
            total += _tokens(step_metrics.get(field_name), "metrics.steps.", name, ".metrics.", field_name)
    return total


def _delegated_to(tool_args: Any) -> str | None:
    """The member a delegation tool call names (``member_id``); anything else about the call is
    not needed, and arguments of another shape just leave it unknown."""
    return _str(tool_args.get("member_id")) if isinstance(tool_args, Mapping) else None


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
