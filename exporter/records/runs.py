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
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from exporter.records import usage

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

# The `name` label of agents, teams and workflows agno stored no name for.
UNNAMED = "unnamed"
# Ids agno makes up for an agent, team or workflow created without a name, new for every instance
# (``set_id``): ``str(uuid4())`` in agno 2.0-2.3 (agno/utils/string.py ``generate_id_from_name(None)``),
# "adjective-scientist-" plus 8 hex digits of a uuid4 in 2.9 and 3.1.10 (``generate_human_readable_id``
# in agno/utils/names.py, e.g. "plucky-galileo-630cc2d0").
_GENERATED_ID = re.compile(
    r"(?i:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})|[a-z]+-[a-z]+-[0-9a-f]{8}")


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


@dataclass(frozen=True, slots=True)
class TokenAnomaly:
    """A stored token number that contradicts another, under the model's provider's meaning (usage.py)."""

    kind: str
    model: str
    provider: str


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
    # What the totals add up, by the shape of the release that saved them last (see TEAM_TOTALS).
    team_totals: str = "members"

    @property
    def claimed_tokens(self) -> int:
        """Input plus output tokens: what the disagreement check compares."""
        return self.totals["input"] + self.totals["output"]


@dataclass(frozen=True, slots=True)
class SessionRun:
    """One run of a session as agno's stored session totals count it (see :func:`session_claim_tokens`)."""

    run_id: str
    parent_run_id: str | None
    tokens: int  # input + output of the run's own totals
    # A team run saved by agno 2.3.5-2.5.3, which added only the team leader's own metrics to the
    # session totals: the runs under it (members, nested teams) are not in them.
    leaves_out_members: bool = False
    final: bool = True  # only finished runs are in agno's session totals


# ---------------------------------------------------------------------------------------------
# small validators


# ``where`` names the field in an error; it comes in parts, joined only when there is an error
# (a run has dozens of fields: formatting each path up front was a tenth of the parsing time).

# Every number read from agno's rows goes through the validator of its unit (_tokens, _seconds,
# _usd, _timestamp, _epoch), each with a bound on what one run can plausibly claim. A value beyond
# its bound is broken (an overflow, a unit error, a provider integration's bug): counting it would
# make every sum it joins useless forever after, and a value beyond what the state's SQL types
# hold (bigint, double precision) would make the state refuse the whole page. So the run is a
# counted skip instead, with the reason naming the unit. The bounds are far beyond any real run;
# they are constants, not settings, because a lower bound would turn real outliers into skips and
# a higher one would let broken values through (README, "Bad rows and bounds").

# tokens of one type in one run (and so in one model call or one metrics.details entry): a
# thousand model calls filling a ten-million-token context window (the largest offered) is 10^10.
# Far below bigint (9.2e18, the state's session sums) and float64's exact integers (2^53, the
# counters), so no sum of plausible runs loses a token.
MAX_RUN_TOKENS = 10**10
# tokens a session's stored session_metrics may claim: only compared with the runs' sum, never
# stored; bounded by float64's exact integers so the comparison is exact.
MAX_SESSION_TOKENS = 2**53
# a run's duration, TTFT, a model call's or a tool call's duration: agno times them with
# perf_counter in the process running the run (agno/utils/timer.py; the timer is not stored, so a
# paused run continued later is timed afresh), so a month is beyond any real run; a larger value
# is a clock or unit error (e.g. milliseconds stored as seconds).
MAX_RUN_SECONDS = 30 * 86400.0
# dollars one run (or one model in it) may cost: a billion tokens at the highest list prices
# (USD 150 in / 600 out per million tokens) stays below it.
MAX_RUN_USD = 1e6
# epoch seconds (agno stamps created_at/updated_at with int(time.time()), tool times with
# time.time()): before 2100-01-01 UTC. A stamp in milliseconds or microseconds (>= 10^12) is a
# unit error; the bound also keeps times well inside OpenTelemetry's int64 nanoseconds (year 2262).
MAX_TIMESTAMP = 4_102_444_800

# the BadRow reason of each bound: bounded label values of agno_exporter_rows_skipped_total
TOKENS_OUT_OF_RANGE = "tokens_out_of_range"
SECONDS_OUT_OF_RANGE = "seconds_out_of_range"
COST_OUT_OF_RANGE = "cost_out_of_range"
TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"


def _path(where: tuple[Any, ...]) -> str:
    return "".join(map(str, where))


def _show(value: int | float) -> str:
    """A number for an error message, short even when it has hundreds of digits."""
    if isinstance(value, int) and abs(value) >= 10**21:
        return f"a {len(str(abs(value)))}-digit number"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _bounded(value: Any, limit: float, reason: str, unit: str, *where: Any) -> float | None:
    """A non-negative finite number up to ``limit``, or None when absent. bool is not a number here.

    Raises BadRow: wrong_type, not_finite, negative, or ``reason`` when above ``limit``.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRow("wrong_type", f"{_path(where)} is {type(value).__name__}, expected a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRow("not_finite", f"{_path(where)} is {value}")
    if value < 0:
        raise BadRow("negative", f"{_path(where)} is {_show(value)}")
    if value > limit:
        raise BadRow(reason, f"{_path(where)} is {_show(value)}, more than {limit:,.0f} {unit}")
    return float(value)


def _seconds(value: Any, *where: Any) -> float | None:
    """A duration in seconds (at most MAX_RUN_SECONDS), or None when absent."""
    if type(value) is float and 0.0 <= value <= MAX_RUN_SECONDS:  # the common case first (NaN fails it)
        return value
    return _bounded(value, MAX_RUN_SECONDS, SECONDS_OUT_OF_RANGE, "seconds in one run", *where)


def _usd(value: Any, *where: Any) -> float | None:
    """US dollars (at most MAX_RUN_USD), or None when absent."""
    if type(value) is float and 0.0 <= value <= MAX_RUN_USD:
        return value
    return _bounded(value, MAX_RUN_USD, COST_OUT_OF_RANGE, "USD in one run", *where)


def _timestamp(value: Any, *where: Any) -> float | None:
    """Epoch seconds (before MAX_TIMESTAMP), or None when absent."""
    if type(value) is float and 0.0 <= value <= MAX_TIMESTAMP:
        return value
    return _bounded(value, MAX_TIMESTAMP, TIMESTAMP_OUT_OF_RANGE, "epoch seconds (2100-01-01; milliseconds?)",
                    *where)


def _count(value: Any, limit: int, unit: str, *where: Any) -> int:
    """A whole number of tokens up to ``limit``; absent is 0. A float that is whole is accepted (JSON
    has one number type; orjson reads integers beyond 64 bits as floats)."""
    if value is None:
        return 0
    if isinstance(value, float) and math.isfinite(value) and not value.is_integer():
        raise BadRow("wrong_type", f"{_path(where)} is {_show(value)}, expected a whole number")
    num = _bounded(value, limit, TOKENS_OUT_OF_RANGE, unit, *where)
    return 0 if num is None else int(value)


def _tokens(value: Any, *where: Any) -> int:
    """Tokens of one type in one run, one model call or one metrics.details entry (<= MAX_RUN_TOKENS)."""
    if type(value) is int and 0 <= value <= MAX_RUN_TOKENS:  # the common case first
        return value
    return _count(value, MAX_RUN_TOKENS, "tokens in one run", *where)


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
    """Whole epoch seconds (before MAX_TIMESTAMP); absent is 0."""
    if type(value) is int and 0 <= value <= MAX_TIMESTAMP:  # agno's BIGINT columns: the common case
        return value
    num = _timestamp(value, *where)
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


def run_label(stored_name: str | None, entity_id: str | None, sanitized: list[str] | None = None) -> str:
    """The ``name`` label of a run (or session): the agent's/team's/workflow's name as agno stored it.

    Without a stored name (agno stores ``agent_name`` etc. only when the object has one) the id is
    used when someone chose it (``Agent(id="support")``), never an id agno generated: those are new
    for every ``Agent(...)`` instance, so a new-agent-per-request app would make a label value per run
    and crowd every other name out of the label cap. Such runs share :data:`UNNAMED`. The one rule
    for run records, session records and the in-progress gauges of both layouts.
    """
    out = sanitized if sanitized is not None else []
    if stored_name:
        return clean_label(stored_name, UNNAMED, out)
    if entity_id and not _GENERATED_ID.fullmatch(entity_id):
        return clean_label(entity_id, UNNAMED, out)
    return UNNAMED


def provider_name(raw: str | None) -> str:
    """agno's provider string -> OpenTelemetry GenAI provider name (lower-case, stable)."""
    if not raw:
        return "unknown"
    key = raw.strip().lower()
    return _PROVIDERS.get(key) or key.replace(" ", "_")


# error.type (OpenTelemetry: a low-cardinality class of the error) from what agno stores of a failed
# run: ``str(exception)`` as the run's content (agno/agent/_run.py). For a provider error that is
# ModelProviderError's message, which each agno model class fills differently:
# * Anthropic (agno/models/anthropic/claude.py): the SDK's message, "Error code: 429 - {body}";
# * Gemini (agno/models/google/gemini.py): the response body, {"error": {"code", "status", ...}},
#   google-genai's own "429 RESOURCE_EXHAUSTED. {...}", or (async, aiohttp) a response's repr;
# * OpenAI and compatible (agno/models/openai/chat.py): only the body's message, no status code,
#   so the provider's own wording is recognised ("Rate limit reached for ...").
# A status code is read only where the format puts one, never found inside other numbers ("150012
# tokens" is no HTTP 500). Names follow the provider SDKs' exception classes (anthropic/_exceptions.py)
# and agno's ContextWindowExceededError.
_STATUS_TYPES = {
    400: "BadRequestError", 401: "AuthenticationError", 402: "PaymentRequiredError",
    403: "PermissionDeniedError", 404: "NotFoundError", 408: "RequestTimeoutError", 409: "ConflictError",
    413: "ContentTooLargeError", 422: "UnprocessableEntityError", 429: "RateLimitError",
    500: "InternalServerError", 503: "ServiceUnavailableError", 504: "GatewayTimeoutError", 529: "OverloadedError",
}
# google.rpc.Code names (the "status" of a Google API error) -> HTTP status, as Google maps them.
_GOOGLE_STATUS = {
    "INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400, "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403, "NOT_FOUND": 404, "ABORTED": 409, "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429, "CANCELLED": 499, "INTERNAL": 500, "UNKNOWN": 500, "DATA_LOSS": 500,
    "UNIMPLEMENTED": 501, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
}
_STAINLESS_STATUS = re.compile(r"^Error code: (\d{3})\b")  # anthropic/openai SDKs' APIStatusError message
_GOOGLE_PREFIX = re.compile(r"^(\d{3}) ([A-Z_]+)\. ")  # google-genai APIError.__str__
# agno's Gemini on google-genai's aiohttp transport stores the repr of the response's ``text``
# method instead of the body (gemini.py takes ``e.response.text`` for an attribute): its status is
# in the repr, "<bound method ClientResponse.text of <ClientResponse(url) [429 Too Many Requests]>".
_AIOHTTP_RESPONSE = re.compile(r"^<bound method ClientResponse\.text of <ClientResponse\([^)]*\) \[(\d{3})\b")
_GOOGLE_BODY_CODE = re.compile(r'^\s*[\[{].*?"code":\s*(\d{3})\b', re.DOTALL)
_GOOGLE_BODY_STATUS = re.compile(r'"status":\s*"([A-Z_]+)"')
_CONTEXT = re.compile(
    r"\bcontext_length_exceeded\b|\bmaximum context length is \d+ tokens\b|^prompt is too long\b"
    r"|\bprompt is too long: \d+ tokens > \d+ maximum\b|\binput token count\b.{0,40}\bexceeds the maximum\b"
    r"|\bexceeds the maximum number of tokens allowed\b|\bexceeds the context window\b",
    re.IGNORECASE | re.DOTALL,
)
_OVERLOADED = re.compile(r"\boverloaded_error\b|\b(?:model|engine|server) is (?:currently )?overloaded\b",
                         re.IGNORECASE)
# Messages that carry no status code, most specific first; each anchored on the provider's wording.
_MESSAGE_TYPES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, re.IGNORECASE), kind)
    for p, kind in (
        (r"^Rate limit (?:reached|exceeded)\b|^You exceeded your current quota\b|\brate_limit_(?:exceeded|error)\b"
         r"|^Request too large for \S+ in organization\b", "RateLimitError"),
        (r"^(?:Incorrect|Invalid) API key provided\b|^You didn't provide an API key\b|\binvalid x-api-key\b"
         r"|^API key not valid\b|\bauthentication_error\b", "AuthenticationError"),
        (r"\bdoes not have access to model\b|^You are not allowed to sample from this model\b|\bpermission_error\b",
         "PermissionDeniedError"),
        (r"^The model `[^`]+` does not exist\b|^Invalid URL \(|\bnot_found_error\b", "NotFoundError"),
        (r"^The server had an error (?:while )?processing your request\b|\bapi_error\b", "InternalServerError"),
        (r"^Request timed out\.?$|^(?:ReadTimeout|WriteTimeout|ConnectTimeout|PoolTimeout|TimeoutException"
         r"|TimeoutError)$|^timed out$", "APITimeoutError"),
        (r"^Connection error\.?$|^All connection attempts failed$|^Cannot connect to host \S+"
         r"|^(?:ConnectError|RemoteProtocolError|ReadError|ClientConnectorError|ServerDisconnectedError)$"
         r"|\[Errno 111\] Connection refused", "APIConnectionError"),
        (r"^(?:Expecting value|Expecting property name enclosed in double quotes|Expecting '[,:]' delimiter"
         r"|Unterminated string starting at|Extra data|Invalid control character at)"
         r": line \d+ column \d+ \(char \d+\)$",
         "JSONDecodeError"),
    )
)


def _status_of(text: str) -> int | None:
    """The HTTP status a provider error message states, where its format puts one."""
    if m := _STAINLESS_STATUS.match(text):
        return int(m.group(1))
    if m := _GOOGLE_PREFIX.match(text):
        return int(m.group(1))
    if m := _AIOHTTP_RESPONSE.match(text):
        return int(m.group(1))
    if m := _GOOGLE_BODY_CODE.match(text):
        return int(m.group(1))
    if (m := _GOOGLE_BODY_STATUS.search(text)) and text.lstrip()[:1] in "{[":
        return _GOOGLE_STATUS.get(m.group(1))
    return None


def classify_error(status: str, message: str | None) -> str | None:
    """error.type of a run: None unless ERROR or CANCELLED; ``AgnoRunError`` when nothing is recognised."""
    if status not in ("ERROR", "CANCELLED"):
        return None
    if status == "CANCELLED":
        return "Cancelled"
    text = (message or "").strip()
    if _CONTEXT.search(text):
        return "ContextWindowExceededError"
    if _OVERLOADED.search(text):
        return "OverloadedError"
    code = _status_of(text)
    if code is not None:
        return _STATUS_TYPES.get(code) or ("InternalServerError" if code >= 500 else "BadRequestError")
    for pattern, kind in _MESSAGE_TYPES:
        if pattern.search(text):
            return kind
    return "AgnoRunError"


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
    details = _obj(metrics.get("details"), "metrics.details")
    for role, items in details.items():
        role = str(role)
        for i, entry in enumerate(_list(items, "metrics.details.", role)):
            entry = _obj(entry, "metrics.details.", role, "[", i, "]")
            m_id = clean_label(_str(entry.get("id")), model, sanitized)
            m_provider = provider_name(_str(entry.get("provider"))) if entry.get("provider") else provider
            counts = _counts(entry, "metrics.details.", role, "[", i, "].")
            total = entry.get("total_tokens")
            entries.append(_Entry(role, m_id, m_provider, counts, total if type(total) is int else None))
            cost = _usd(entry.get("cost"), "metrics.details.", role, "[", i, "].cost")
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
    run_cost = _usd(metrics.get("cost"), "metrics.cost")
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
    for f, t in TOKEN_FIELDS:
        v = metrics.get(f)
        # the common cases inline: a run has a dozen of these objects
        counts[t] = v if type(v) is int and 0 <= v <= MAX_RUN_TOKENS else 0 if v is None else _tokens(v, *where, f)
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
            msg = _obj(msg, "messages[", i, "]")
        if msg.get("role") != "assistant" or msg.get("from_history") is True:
            continue
        metrics = msg.get("metrics")
        if type(metrics) is not dict:
            metrics = _obj(metrics, "messages[", i, "].metrics")
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
        tool_ids = tuple(
            _str(_obj(tc, "messages[", i, "].tool_calls[]").get("id")) or ""
            for tc in _list(requested, "messages[", i, "].tool_calls")
        ) if requested is not None else ()
        content = msg.get("content") if with_content else None
        duration = _seconds(metrics.get("duration"), "messages[", i, "].metrics.duration")
        calls.append(
            ModelCall(
                index=len(calls),
                message_id=_str(msg.get("id")) or "",
                model=ent.model if ent else model,
                provider=ent.provider if ent else provider,
                input_tokens=counts["input"],
                output_tokens=counts["output"],
                duration=duration,
                time_to_first_token=_seconds(metrics.get("time_to_first_token"), "messages[", i,
                                             "].metrics.time_to_first_token"),
                created_at=_epoch(msg.get("created_at"), "messages[", i, "].created_at") or None,
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
        tool = _obj(tool, "tools[", i, "]")
        metrics = _obj(tool.get("metrics"), "tools[", i, "].metrics")
        start = _timestamp(metrics.get("start_time"), "tools[", i, "].metrics.start_time")
        end = _timestamp(metrics.get("end_time"), "tools[", i, "].metrics.end_time")
        duration = _seconds(metrics.get("duration"), "tools[", i, "].metrics.duration")
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


# The parts of a run :func:`run_identity` reads, in the run's JSON (also on agno 3.x's columns).
IDENTITY_KEYS = ("agent_name", "team_name", "workflow_name", "agent_id", "team_id", "workflow_id")


def run_identity(row: Mapping[str, Any], run_data: Mapping[str, Any],
                 sanitized: list[str] | None = None) -> tuple[str, str, str]:
    """(run_type, entity id, ``name`` label) of a run from its columns (agno 3.x; ``{}`` for an agno 2.x
    array element) and the :data:`IDENTITY_KEYS` of its JSON. A run type agno did not store is
    inferred from which ids the JSON holds."""
    run_type = (_str(row.get("run_type")) or "").lower()
    if run_type not in RUN_TYPES:
        if run_data.get("workflow_id") or run_data.get("workflow_name"):
            run_type = "workflow"
        elif run_data.get("team_id") or run_data.get("team_name"):
            run_type = "team"
        else:
            run_type = "agent"
    id_col = f"{run_type}_id"
    entity_id = _str(row.get(id_col)) or _str(run_data.get(id_col)) or ""
    return run_type, entity_id, run_label(_str(run_data.get(f"{run_type}_name")), entity_id, sanitized)


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
    run_type, entity_id, name = run_identity(row, run_data, sanitized)

    metrics = _obj(run_data.get("metrics"), "metrics")
    model = clean_label(_str(run_data.get("model")), "unknown", sanitized)
    provider = provider_name(_str(run_data.get("model_provider")))

    if run_type == "workflow":
        # A workflow run has no model calls of its own: its steps' runs carry them, nested in this
        # row (build_row_runs) or, for an agent that persisted its run itself, rows of their own.
        totals = dict.fromkeys(TOKEN_TYPES, 0)
        tokens: tuple[TokenUsage, ...] = ()
        costs: tuple[ModelCost, ...] = ()
        anomalies: list[TokenAnomaly] = []
        steps = _obj(metrics.get("steps"), "metrics.steps")
        step_names = tuple(str(k) for k in steps)
        model_calls: tuple[ModelCall, ...] = ()
    else:
        totals = {t: _tokens(metrics.get(f), "metrics.", f) for f, t in TOKEN_FIELDS}
        entries, entry_costs = _details(metrics, model, provider, sanitized)
        tokens, costs, split_anomalies = _token_split(entries, entry_costs, metrics, totals, model, provider)
        anomalies = [*split_anomalies, *_token_anomalies(entries, metrics, totals, model, provider)]
        step_names = ()
        messages = _list(run_data.get("messages"), "messages")
        model_calls = _model_calls(messages, entries, model, provider, with_content)
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
        duration=_seconds(metrics.get("duration"), "metrics.duration"),
        time_to_first_token=_seconds(metrics.get("time_to_first_token"), "metrics.time_to_first_token"),
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
    run_id = _str(row.get("run_id")) or _str(run_data.get("run_id"))
    if not run_id:
        raise BadRow("missing_run_id", "no run_id in the row or in run_data")
    metrics = _obj(run_data.get("metrics"), "metrics")
    totals = {"input": _tokens(metrics.get("input_tokens"), "metrics.input_tokens"),
              "output": _tokens(metrics.get("output_tokens"), "metrics.output_tokens")}
    run_type = (_str(row.get("run_type")) or "").lower()
    is_team = run_type == "team" or (not run_type and not run_data.get("agent_id") and not (
        run_data.get("workflow_id") or run_data.get("workflow_name")) and bool(
        run_data.get("team_id") or run_data.get("team_name")))
    # a workflow run adds its steps' metrics (session_tokens_of), an agent or team run its own totals
    is_workflow = run_type == "workflow" or (not run_type and bool(run_data.get("workflow_name")) and not (
        run_data.get("agent_id") or run_data.get("team_id")))
    tokens = session_tokens_of("workflow" if is_workflow else "agent", metrics, totals)
    status = (_str(row.get("status")) or _str(run_data.get("status")) or "").upper()
    return SessionRun(
        run_id=run_id,
        parent_run_id=_str(row.get("parent_run_id")) or _str(run_data.get("parent_run_id")),
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
    session_id = _str(row.get("session_id"))
    if not session_id:
        raise BadRow("missing_session_id", "no session_id")
    sanitized: list[str] = []
    session_type = (_str(row.get("session_type")) or "agent").lower()
    data = _obj(row.get(f"{session_type}_data"), f"{session_type}_data")
    entity_id = _str(row.get(f"{session_type}_id")) or ""
    name = run_label(_str(data.get("name")), entity_id, sanitized)
    session_data = _obj(row.get("session_data"), "session_data")
    sm = _obj(session_data.get("session_metrics"), "session_data.session_metrics")
    totals = {t: _count(sm.get(f), MAX_SESSION_TOKENS, "tokens in one session", f"session_metrics.{f}")
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
        user_id=_str(row.get("user_id")),
        created_at=_epoch(row.get("created_at"), "created_at"),
        updated_at=_epoch(row.get("updated_at"), "updated_at"),
        totals=totals,
        cost_usd=_bounded(sm.get("cost"), math.inf, COST_OUT_OF_RANGE, "USD", "session_metrics.cost"),
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
    m = _obj(metrics, where)
    details: list[StoredModelMetrics] = []
    for role, entries in _obj(m.get("details"), where, ".details").items():
        for i, entry in enumerate(_list(entries, where, ".details.", role)):
            entry = _obj(entry, where, ".details.", role, "[", i, "]")
            details.append(StoredModelMetrics(
                model_role=str(role), id=_str(entry.get("id")) or "", provider=_str(entry.get("provider")) or "",
                tokens={f: _tokens(entry.get(f), where, ".details.", role, "[", i, "].", f) for f in AGNO_TOKEN_FIELDS},
                cost=_usd(entry.get("cost"), where, ".details.", role, "[", i, "].cost")))
    return StoredMetrics(
        tokens={f: _count(m.get(f), MAX_SESSION_TOKENS, "tokens", where, ".", f) for f in AGNO_TOKEN_FIELDS},
        cost=_bounded(m.get("cost"), math.inf, COST_OUT_OF_RANGE, "USD", where, ".cost"),
        duration=_seconds(m.get("duration"), where, ".duration"),
        time_to_first_token=_seconds(m.get("time_to_first_token"), where, ".time_to_first_token"),
        details=tuple(details),
    )


def run_stored_metrics(run_data: Any) -> StoredMetrics:
    """A run's ``metrics`` (``run_data.metrics`` in agno 3.x, the array element's in 2.x)."""
    return stored_metrics(_obj(run_data, "run_data").get("metrics"))


def session_stored_metrics(row: Mapping[str, Any]) -> StoredMetrics:
    """A session row's ``session_data.session_metrics``: agno's own running total of the session's runs."""
    data = _obj(row.get("session_data"), "session_data")
    return stored_metrics(data.get("session_metrics"), "session_data.session_metrics")


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
