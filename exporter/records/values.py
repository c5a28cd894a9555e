"""Every value read from agno's rows, validated by its unit (tokens, seconds, US dollars, timestamps)
against a bound on what one run can plausibly claim; labels cleaned; provider names and error types classified.

A value out of bounds raises :class:`~exporter.records.runs.BadRow` with a machine-readable reason.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from exporter.records.runs import MAX_LABEL_CHARS, UNNAMED, BadRow

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

# Ids agno makes up for an agent, team or workflow created without a name, new for every instance
# (``set_id``): ``str(uuid4())`` in agno 2.0-2.3 (agno/utils/string.py ``generate_id_from_name(None)``),
# "adjective-scientist-" plus 8 hex digits of a uuid4 in 2.9 and 3.1.10 (``generate_human_readable_id``
# in agno/utils/names.py, e.g. "plucky-galileo-630cc2d0").
_GENERATED_ID = re.compile(
    r"(?i:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})|[a-z]+-[a-z]+-[0-9a-f]{8}")

# ---------------------------------------------------------------------------------------------
# small validators


# ``where`` names the field in an error; it comes in parts, joined only when there is an error
# (a run has dozens of fields: formatting each path up front was a tenth of the parsing time).

# Every number read from agno's rows goes through the validator of its unit (read_tokens, read_seconds,
# read_usd, read_timestamp, read_epoch), each with a bound on what one run can plausibly claim. A value beyond
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


def read_bounded(value: Any, limit: float, reason: str, unit: str, *where: Any) -> float | None:
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


def read_seconds(value: Any, *where: Any) -> float | None:
    """A duration in seconds (at most MAX_RUN_SECONDS), or None when absent."""
    if type(value) is float and 0.0 <= value <= MAX_RUN_SECONDS:  # the common case first (NaN fails it)
        return value
    return read_bounded(value, MAX_RUN_SECONDS, SECONDS_OUT_OF_RANGE, "seconds in one run", *where)


def read_usd(value: Any, *where: Any) -> float | None:
    """US dollars (at most MAX_RUN_USD), or None when absent."""
    if type(value) is float and 0.0 <= value <= MAX_RUN_USD:
        return value
    return read_bounded(value, MAX_RUN_USD, COST_OUT_OF_RANGE, "USD in one run", *where)


def read_timestamp(value: Any, *where: Any) -> float | None:
    """Epoch seconds (before MAX_TIMESTAMP), or None when absent."""
    if type(value) is float and 0.0 <= value <= MAX_TIMESTAMP:
        return value
    return read_bounded(value, MAX_TIMESTAMP, TIMESTAMP_OUT_OF_RANGE, "epoch seconds (2100-01-01; milliseconds?)",
                    *where)


def read_count(value: Any, limit: int, unit: str, *where: Any) -> int:
    """A whole number of tokens up to ``limit``; absent is 0. A float that is whole is accepted (JSON
    has one number type; orjson reads integers beyond 64 bits as floats)."""
    if value is None:
        return 0
    if isinstance(value, float) and math.isfinite(value) and not value.is_integer():
        raise BadRow("wrong_type", f"{_path(where)} is {_show(value)}, expected a whole number")
    num = read_bounded(value, limit, TOKENS_OUT_OF_RANGE, unit, *where)
    return 0 if num is None else int(value)


def read_tokens(value: Any, *where: Any) -> int:
    """Tokens of one type in one run, one model call or one metrics.details entry (<= MAX_RUN_TOKENS)."""
    if type(value) is int and 0 <= value <= MAX_RUN_TOKENS:  # the common case first
        return value
    return read_count(value, MAX_RUN_TOKENS, "tokens in one run", *where)


def read_object(value: Any, *where: Any) -> Mapping[str, Any]:
    if type(value) is dict:  # what the JSON parser makes; isinstance on Mapping is ten times slower
        return value
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise BadRow("wrong_type", f"{_path(where)} is {type(value).__name__}, expected an object")
    return value


def read_list(value: Any, *where: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRow("wrong_type", f"{_path(where)} is {type(value).__name__}, expected a list")
    return value


def read_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def read_epoch(value: Any, *where: Any) -> int:
    """Whole epoch seconds (before MAX_TIMESTAMP); absent is 0."""
    if type(value) is int and 0 <= value <= MAX_TIMESTAMP:  # agno's BIGINT columns: the common case
        return value
    num = read_timestamp(value, *where)
    return int(num) if num is not None else 0


# label value -> itself made safe, for the values that needed no cleaning (so a hit has no effect
# on ``sanitized``): names of models, tools and agents repeat on every run; normalising each again
# was a tenth of building a record. Bounded: beyond it values are cleaned each time.
_CLEAN: dict[str, str] = {}
_CLEAN_MAX = 1 << 14


def clean_label(value: str | None, fallback: str, sanitized: list[str]) -> str:
    """Make a value safe for a Prometheus label: no control characters, bounded length."""
    if not value:
        return fallback
    hit = _CLEAN.get(value)
    if hit is not None:
        return hit
    if value.isprintable() and len(value) <= MAX_LABEL_CHARS:
        out = unicodedata.normalize("NFC", value)
        if len(_CLEAN) < _CLEAN_MAX:
            _CLEAN[value] = out
        return out
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
    name = _PROVIDER_NAMES.get(raw)
    if name is None:
        key = raw.strip().lower()
        name = _PROVIDERS.get(key) or key.replace(" ", "_")
        if len(_PROVIDER_NAMES) < _CLEAN_MAX:
            _PROVIDER_NAMES[raw] = name
    return name


_PROVIDER_NAMES: dict[str, str] = {}  # agno's provider string -> provider_name's answer (they are few)


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
