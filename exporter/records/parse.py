"""agno's ``run_data`` -> :class:`~exporter.records.runs.RunRecord`: tokens by meaning, model calls, tool calls,
identity.

Pure: takes what was read, returns a record or raises :class:`~exporter.records.runs.BadRow`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from exporter.records import usage
from exporter.records.runs import (
    KNOWN_STATUSES,
    MAX_ERROR_CHARS,
    RUN_TYPES,
    TOKEN_FIELDS,
    TOKEN_TYPES,
    BadRow,
    ModelCall,
    ModelCost,
    RunRecord,
    TokenAnomaly,
    TokenUsage,
    ToolCall,
)
from exporter.records.values import (
    MAX_RUN_TOKENS,
    classify_error,
    clean_label,
    provider_name,
    read_epoch,
    read_list,
    read_object,
    read_seconds,
    read_str,
    read_timestamp,
    read_tokens,
    read_usd,
    run_label,
)

# ---------------------------------------------------------------------------------------------
# runs


@dataclass(slots=True)
class _Entry:
    """One element of ``metrics.details[role]``: what one model used in one role during the run."""

    role: str
    model: str
    provider: str
    counts: dict[str, int]  # token_type -> n, every type
    total: int | None  # its stored total_tokens


def _details(
    metrics: Mapping[str, Any], model: str, provider: str, sanitized: list[str]
) -> tuple[list[_Entry], list[ModelCost]]:
    """``metrics.details`` (agno/metrics.py ``RunMetrics.details``: role -> one entry per (provider, id))."""
    entries: list[_Entry] = []
    costs: list[ModelCost] = []
    details = read_object(metrics.get("details"), "metrics.details")
    for role, items in details.items():
        role = str(role)
        for i, entry in enumerate(read_list(items, "metrics.details.", role)):
            entry = read_object(entry, "metrics.details.", role, "[", i, "]")
            m_id = clean_label(read_str(entry.get("id")), model, sanitized)
            m_provider = provider_name(read_str(entry.get("provider"))) if entry.get("provider") else provider
            counts = _counts(entry, "metrics.details.", role, "[", i, "].")
            total = entry.get("total_tokens")
            entries.append(_Entry(role, m_id, m_provider, counts, total if type(total) is int else None))
            cost = read_usd(entry.get("cost"), "metrics.details.", role, "[", i, "].cost")
            if cost:
                costs.append(ModelCost(role, m_id, m_provider, cost))
    return entries, costs


def _token_split(
    entries: list[_Entry], costs: list[ModelCost], metrics: Mapping[str, Any], totals: dict[str, int],
    model: str, provider: str,
) -> tuple[tuple[TokenUsage, ...], tuple[ModelCost, ...], list[TokenAnomaly]]:
    """Split the run totals by (model role, model, provider) using ``metrics.details``.

    agno accumulates details and totals together, so they agree; where they do not (old versions,
    provider bugs) the run totals are the truth and the remainder is attributed to the run's model.
    """
    usages: dict[tuple[str, str, str, str], int] = {}
    anomalies: list[TokenAnomaly] = []
    attributed = dict.fromkeys(TOKEN_TYPES, 0)
    for e in entries:
        for ttype, n in e.counts.items():
            if n:
                key = (e.role, e.model, e.provider, ttype)
                usages[key] = usages.get(key, 0) + n
                attributed[ttype] += n
    for ttype, total in totals.items():
        rest = total - attributed[ttype]
        if rest > 0:
            if attributed[ttype]:
                anomalies.append(TokenAnomaly("details_below_total", model, provider))
            key = ("model", model, provider, ttype)
            usages[key] = usages.get(key, 0) + rest
        elif rest < 0:
            # details claim more than the run total: keep the run total (agno's number) exact by
            # scaling nothing and dropping the excess; flag it so users can see the provider bug.
            anomalies.append(TokenAnomaly("details_above_total", model, provider))
            excess = -rest
            for key in sorted(k for k in usages if k[3] == ttype):
                take = min(excess, usages[key])
                usages[key] -= take
                excess -= take
                if not excess:
                    break
    run_cost = read_usd(metrics.get("cost"), "metrics.cost")
    if run_cost and not costs:
        costs = [ModelCost("model", model, provider, run_cost)]
    tokens = tuple(TokenUsage(k[0], k[1], k[2], k[3], n) for k, n in usages.items() if n)
    return tokens, tuple(costs), list(dict.fromkeys(anomalies))


def _token_anomalies(
    entries: list[_Entry], metrics: Mapping[str, Any], totals: Mapping[str, int], model: str, provider: str
) -> list[TokenAnomaly]:
    """Checks that can be stated exactly, per model under its provider's meaning (exporter/records/usage.py).

    Each details entry is one model's own numbers, so a run whose models come from providers with
    different meanings (a Gemini model with an OpenAI output model) is checked model by model; a
    run without details is checked on its totals, with the run's model.
    """
    if not entries:
        total = metrics.get("total_tokens")
        kinds = usage.anomalies(provider, totals, total if type(total) is int else None)
        return [TokenAnomaly(k, model, provider) for k in kinds]
    found: dict[TokenAnomaly, None] = {}
    for e in entries:
        for kind in usage.anomalies(e.provider, e.counts, e.total):
            found[TokenAnomaly(kind, e.model, e.provider)] = None
    return list(found)


# Roles whose call agno keeps as the run's last assistant message (checked from the end, in this
# order): the parser model's answer is appended after everything (agno/agent/_response.py
# process_parser_response), the output model's answer takes the place of the model's final one
# (generate_response_with_output_model*). The model role's own calls, the primary's and its
# fallbacks' (agno/models/fallback.py gives fallbacks the role "model"), are the other messages, in
# the order the models were first used, which is the order of their details entries. Every other
# role (memory, session summary, reasoning_*, compression, learning, followup, eval_*, ...) keeps
# its messages to itself: its calls exist only in details.
_TAIL_ROLES = ("parser_model", "output_model")


def _counts(metrics: Mapping[str, Any], *where: Any) -> dict[str, int]:
    """token_type -> count of one metrics object (agno stores only non-zero fields)."""
    counts = {}
    get = metrics.get
    for f, t in TOKEN_FIELDS:
        v = get(f)
        # the common cases inline: a run has a dozen of these objects
        if v is None:
            counts[t] = 0
        elif type(v) is int and 0 <= v <= MAX_RUN_TOKENS:
            counts[t] = v
        else:
            counts[t] = read_tokens(v, *where, f)
    return counts


def _fits(counts: Mapping[str, int], budget: Mapping[str, int]) -> bool:
    return all(n <= budget.get(t, 0) for t, n in counts.items())


def _model_calls(
    messages: list[Any], entries: list[_Entry], model: str, provider: str, with_content: bool
) -> tuple[ModelCall, ...]:
    """The run's model calls, each with the model, provider and role that made it.

    A call agno kept as a message is an assistant message of this run (not replayed from history)
    that has metrics: agno inserts metric-less assistant messages itself (a reasoning model's
    result, wrapped in ``<thinking>``), and those are no calls. agno does not store which model
    wrote a message, so messages are matched to ``metrics.details`` entries by their tokens (see
    ``_TAIL_ROLES``); a run without details (agno before per-model details) has the run's model.
    What an entry's tokens leave after its messages is one more call with ``source="details"``.
    """
    found: list[tuple[int, Mapping[str, Any], Mapping[str, Any], dict[str, int]]] = []
    for i, msg in enumerate(messages):
        if type(msg) is not dict:
            msg = read_object(msg, "messages[", i, "]")
        if msg.get("role") != "assistant" or msg.get("from_history") is True:
            continue
        metrics = msg.get("metrics")
        if type(metrics) is not dict:
            metrics = read_object(metrics, "messages[", i, "].metrics")
        if metrics:
            found.append((i, msg, metrics, _counts(metrics, "messages[", i, "].metrics.")))

    budget = [dict(e.counts) for e in entries]
    if len(entries) == 1 and entries[0].role == "model":  # one model, no other role: the common run
        owner: list[int | None] = [0] * len(found)
        b = budget[0]
        for *_, counts in found:
            for t, n in counts.items():
                if n:
                    b[t] = max(0, b[t] - n)
    else:
        owner = [None] * len(found)
        end = len(found)
        for role in _TAIL_ROLES:
            for ei, e in enumerate(entries):
                if e.role == role and end and found[end - 1][3] == budget[ei]:
                    end -= 1
                    owner[end] = ei
                    budget[ei] = dict.fromkeys(budget[ei], 0)
        primary = [ei for ei, e in enumerate(entries) if e.role == "model" and any(e.counts.values())]
        k = 0
        for j in range(end if primary else 0):
            # each model takes the messages that fit what it used, then the next one (its fallback) does
            while k < len(primary) - 1 and not _fits(found[j][3], budget[primary[k]]):
                k += 1
            owner[j] = primary[k]
            b = budget[primary[k]]
            for t, n in found[j][3].items():
                b[t] = max(0, b[t] - n)

    calls: list[ModelCall] = []
    for j, (i, msg, metrics, counts) in enumerate(found):
        who = owner[j]
        ent = entries[who] if who is not None else None
        requested = msg.get("tool_calls")
        tool_ids: tuple[str, ...] = ()
        if requested is not None:
            ids = []
            for tc in read_list(requested, "messages[", i, "].tool_calls"):
                if type(tc) is not dict:
                    tc = read_object(tc, "messages[", i, "].tool_calls[]")
                tc_id = tc.get("id")
                ids.append(tc_id if type(tc_id) is str else read_str(tc_id) or "")
            tool_ids = tuple(ids)
        content = msg.get("content") if with_content else None
        duration = read_seconds(metrics.get("duration"), "messages[", i, "].metrics.duration")
        calls.append(
            ModelCall(
                index=len(calls),
                message_id=read_str(msg.get("id")) or "",
                model=ent.model if ent else model,
                provider=ent.provider if ent else provider,
                input_tokens=counts["input"],
                output_tokens=counts["output"],
                duration=duration,
                time_to_first_token=read_seconds(metrics.get("time_to_first_token"), "messages[", i,
                                             "].metrics.time_to_first_token"),
                created_at=read_epoch(msg.get("created_at"), "messages[", i, "].created_at") or None,
                tool_call_ids=tool_ids,
                content=content if isinstance(content, str) else None,
                model_role=ent.role if ent else "model",
                streamed=duration is None,
                usage=counts,
            )
        )
    for ei, e in enumerate(entries):
        rest = {t: n for t, n in budget[ei].items() if n}
        if rest:
            calls.append(
                ModelCall(
                    index=len(calls), message_id="", model=e.model, provider=e.provider,
                    input_tokens=rest.get("input", 0), output_tokens=rest.get("output", 0),
                    duration=None, time_to_first_token=None, created_at=None,
                    model_role=e.role, source="details", usage=rest,
                )
            )
    return tuple(calls)


def _tool_calls(tools: list[Any], sanitized: list[str]) -> tuple[ToolCall, ...]:
    calls: list[ToolCall] = []
    for i, tool in enumerate(tools):
        tool = read_object(tool, "tools[", i, "]")
        metrics = read_object(tool.get("metrics"), "tools[", i, "].metrics")
        start = read_timestamp(metrics.get("start_time"), "tools[", i, "].metrics.start_time")
        end = read_timestamp(metrics.get("end_time"), "tools[", i, "].metrics.end_time")
        duration = read_seconds(metrics.get("duration"), "tools[", i, "].metrics.duration")
        if duration is None and start is not None and end is not None and end >= start:
            duration = end - start
        calls.append(
            ToolCall(
                index=i,
                name=clean_label(read_str(tool.get("tool_name")), "unknown", sanitized),
                call_id=read_str(tool.get("tool_call_id")) or f"tool-{i}",
                error=tool.get("tool_call_error") is True,
                duration=duration,
                start_time=start,
                end_time=end,
                child_run_id=read_str(tool.get("child_run_id")),
                member_id=delegated_to(tool.get("tool_args")),
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


# The parts of a run :func:`run_identity` reads, in the run's JSON (also on agno 3.x's columns).
IDENTITY_KEYS = ("agent_name", "team_name", "workflow_name", "agent_id", "team_id", "workflow_id")


def run_identity(row: Mapping[str, Any], run_data: Mapping[str, Any],
                 sanitized: list[str] | None = None) -> tuple[str, str, str]:
    """(run_type, entity id, ``name`` label) of a run from its columns (agno 3.x; ``{}`` for an agno 2.x
    array element) and the :data:`IDENTITY_KEYS` of its JSON. A run type agno did not store is
    inferred from which ids the JSON holds."""
    run_type = (read_str(row.get("run_type")) or "").lower()
    if run_type not in RUN_TYPES:
        if run_data.get("workflow_id") or run_data.get("workflow_name"):
            run_type = "workflow"
        elif run_data.get("team_id") or run_data.get("team_name"):
            run_type = "team"
        else:
            run_type = "agent"
    id_col = f"{run_type}_id"
    entity_id = read_str(row.get(id_col)) or read_str(run_data.get(id_col)) or ""
    return run_type, entity_id, run_label(read_str(run_data.get(f"{run_type}_name")), entity_id, sanitized)


def row_run_id(row: Mapping[str, Any]) -> str | None:
    """The run id of a fetched row: its column (agno 3.x) or its JSON (an agno 2.x array element)."""
    data = row.get("run_data")
    return read_str(row.get("run_id")) or (read_str(data.get("run_id")) if isinstance(data, Mapping) else None)


def row_parent_ref(row: Mapping[str, Any]) -> tuple[str, str] | None:
    """(run id, session id) of a fetched row's own run when it names a parent run, read as
    :func:`build_run_record` reads them; None otherwise (or when the row is malformed)."""
    data = row.get("run_data")
    if not isinstance(data, Mapping) or not (read_str(row.get("parent_run_id")) or read_str(data.get("parent_run_id"))):
        return None
    run_id = read_str(row.get("run_id")) or read_str(data.get("run_id"))
    return (run_id, read_str(row.get("session_id")) or read_str(data.get("session_id")) or "") if run_id else None


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
    run_id = read_str(row.get("run_id")) or read_str(run_data.get("run_id"))
    if not run_id:
        raise BadRow("missing_run_id", "no run_id in the row or in run_data")
    status = read_str(row.get("status")) or read_str(run_data.get("status")) or ""
    status = status.upper()
    if status not in KNOWN_STATUSES:
        raise BadRow("unknown_status", f"status {status!r}")

    sanitized: list[str] = []
    run_type, entity_id, name = run_identity(row, run_data, sanitized)

    metrics = read_object(run_data.get("metrics"), "metrics")
    model = clean_label(read_str(run_data.get("model")), "unknown", sanitized)
    provider = provider_name(read_str(run_data.get("model_provider")))

    if run_type == "workflow":
        # A workflow run has no model calls of its own: its steps' runs carry them, nested in this
        # row (build_row_runs) or, for an agent that persisted its run itself, rows of their own.
        totals = dict.fromkeys(TOKEN_TYPES, 0)
        tokens: tuple[TokenUsage, ...] = ()
        costs: tuple[ModelCost, ...] = ()
        anomalies: list[TokenAnomaly] = []
        steps = read_object(metrics.get("steps"), "metrics.steps")
        step_names = tuple(str(k) for k in steps)
        model_calls: tuple[ModelCall, ...] = ()
    else:
        totals = _counts(metrics, "metrics.")
        entries, entry_costs = _details(metrics, model, provider, sanitized)
        tokens, costs, split_anomalies = _token_split(entries, entry_costs, metrics, totals, model, provider)
        anomalies = [*split_anomalies, *_token_anomalies(entries, metrics, totals, model, provider)]
        step_names = ()
        messages = read_list(run_data.get("messages"), "messages")
        model_calls = _model_calls(messages, entries, model, provider, with_content)
    tool_calls = _tool_calls(read_list(run_data.get("tools"), "tools"), sanitized)

    error_message = None
    if status in ("ERROR", "CANCELLED"):
        content = run_data.get("content")
        error_message = content[:MAX_ERROR_CHARS] if isinstance(content, str) else None

    return RunRecord(
        run_id=run_id,
        session_id=read_str(row.get("session_id")) or read_str(run_data.get("session_id")) or "",
        run_type=run_type,
        status=status,
        name=name,
        entity_id=entity_id,
        user_id=read_str(row.get("user_id")) or read_str(run_data.get("user_id")),
        parent_run_id=read_str(row.get("parent_run_id")) or read_str(run_data.get("parent_run_id")),
        created_at=read_epoch(row.get("created_at", run_data.get("created_at")), "created_at"),
        updated_at=read_epoch(row.get("updated_at", run_data.get("updated_at")), "updated_at"),
        model=model,
        provider=provider,
        duration=read_seconds(metrics.get("duration"), "metrics.duration"),
        time_to_first_token=read_seconds(metrics.get("time_to_first_token"), "metrics.time_to_first_token"),
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
        streamed=any(c.streamed for c in model_calls),
        session_tokens=session_tokens_of(run_type, metrics, totals),
    )


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
    steps = read_object(metrics.get("steps"), "metrics.steps")
    total = 0
    for name, step in steps.items():
        step_metrics = read_object(read_object(step, "metrics.steps.", name).get("metrics"),
                                   "metrics.steps.", name, ".metrics")
        for field_name in ("input_tokens", "output_tokens"):
            total += read_tokens(step_metrics.get(field_name), "metrics.steps.", name, ".metrics.", field_name)
    return total


def delegated_to(tool_args: Any) -> str | None:
    """The member a delegation tool call names (``member_id``); anything else about the call is
    not needed, and arguments of another shape just leave it unknown."""
    if type(tool_args) is dict or isinstance(tool_args, Mapping):  # dict first: what the JSON parser makes
        return read_str(tool_args.get("member_id"))
    return None
