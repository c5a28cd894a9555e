"""Turn agno's stored rows into typed records.

This is the only module that knows the shape of agno's JSON (``run_data`` of ``agno_runs`` in 3.x,
the elements of ``agno_sessions.runs`` in 2.x, ``session_data.session_metrics``). Everything
downstream consumes :class:`RunRecord` / :class:`SessionRecord`, never raw dicts.

The functions are pure: they take what was read and return a record or raise :class:`BadRow`
with a short machine-readable reason, which the collector counts and logs, so a malformed row
never stops the cursor. agno stores only non-zero metric fields, so an absent field means zero.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar, dataclass_transform

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

MAX_LABEL_CHARS = 128
MAX_ERROR_CHARS = 512

# The `name` label of agents, teams and workflows agno stored no name for.
UNNAMED = "unnamed"
_T = TypeVar("_T")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[_T]) -> type[_T]:
    """A frozen, slotted dataclass for the records built per run (a page builds thousands of them).

    Frozen for the type checker (mypy refuses an assignment to a field), with the hash of a frozen
    dataclass, but built by a plain ``__init__``: a frozen dataclass's ``__init__`` sets each field
    through ``object.__setattr__``, which made building a record six times slower (2.5 us for a
    five-field TokenUsage against 0.4 us, Python 3.11) and was a third of turning a run's JSON into
    records. Nothing assigns to a record after it is built.
    """
    made: Callable[[type[_T]], type[_T]] = dataclass(slots=True, unsafe_hash=True)
    return made(cls)


class BadRow(ValueError):
    """A stored row that cannot be turned into a record; ``reason`` is a bounded label value."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@record
class TokenUsage:
    """Tokens of one type used by one model in one role (agno's ``metrics.details``) in a run."""

    model_role: str
    model: str
    provider: str
    token_type: str
    count: int


@record
class ModelCost:
    """Cost as reported by the provider and stored by agno (absent unless the provider reports it)."""

    model_role: str
    model: str
    provider: str
    usd: float


@record
class ModelCall:
    """One model call of the run, by the model and in the role that made it (see :func:`_model_calls`).

    ``source`` says what agno kept of it: ``"message"``, an assistant message of the run (tokens,
    duration, time to first token, created_at); ``"details"``, the part of a model's
    ``metrics.details`` entry that no message accounts for (calls agno kept only as a sum: memory,
    session summary, reasoning, ... models), one call per entry, tokens only.
    ``streamed`` is true for a message whose call was streamed: agno stores a message's
    ``duration`` only for non-streamed calls (the provider class stops the message timer; a
    streamed message gets the stream's metrics, whose timer is never stopped).
    """

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
    model_role: str = "model"
    streamed: bool = False
    source: str = "message"
    usage: Mapping[str, int] = field(default_factory=dict)  # token_type -> count


@record
class TokenAnomaly:
    """A stored token number that contradicts another, under the model's provider's meaning (usage.py)."""

    kind: str
    model: str
    provider: str


@record
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


@record
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
    anomalies: tuple[TokenAnomaly, ...] = field(default=())
    streamed: bool = False  # its model calls were streamed (see ModelCall.streamed)
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
    def anomaly_kinds(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a.kind for a in self.anomalies))

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


@record
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
    # What the totals add up, by the shape of the release that saved them last (see TEAM_TOTALS).
    team_totals: str = "members"

    @property
    def claimed_tokens(self) -> int:
        """Input plus output tokens: what the disagreement check compares."""
        return self.totals["input"] + self.totals["output"]


@record
class SessionRun:
    """One run of a session as agno's stored session totals count it (see
    :func:`exporter.records.sessions.session_claim_tokens`)."""

    run_id: str
    parent_run_id: str | None
    tokens: int  # input + output of the run's own totals
    # A team run saved by agno 2.3.5-2.5.3, which added only the team leader's own metrics to the
    # session totals: the runs under it (members, nested teams) are not in them.
    leaves_out_members: bool = False
    final: bool = True  # only finished runs are in agno's session totals
