"""A simulated, OpenAI-compatible chat-completions server.

Why it exists: the exporter's tests and ``agno-exporter demo`` drive *real* agno
agents and teams (and the real ``openai`` client) on machines that have no
internet access and no API key.  They need model calls whose token usage,
latency, tool calls and failures are predictable enough to assert on and to make
dashboards interesting.  This module serves ``/v1/chat/completions`` (streamed
and non-streamed), ``/v1/models`` and ``/healthz`` with:

* deterministic token accounting (the same request always reports the same usage),
* configurable latency: time to first token plus a per-token delay,
* schema-driven tool calls, including valid agno team delegations,
* injectable failures: HTTP 429/500, stalls (client timeouts) and malformed bodies, and OpenAI's
  other error answers (HTTP 400 context length exceeded, 401, 403, 404, 503), each with the status,
  body and wording OpenAI uses.

Per-request directives may appear anywhere in the last user message:

* ``[sim:fail=429]``, ``[sim:fail=500]``, ``[sim:fail=timeout]``, ``[sim:fail=malformed]``,
  ``[sim:fail=context]``, ``[sim:fail=401]``, ``[sim:fail=403]``, ``[sim:fail=404]``, ``[sim:fail=503]``
* ``[sim:ttft=0.5]`` -- time to first token for this request, in seconds, without jitter
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import random
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

__all__ = [
    "FAILURE_KINDS",
    "SETTINGS_KEY",
    "STATS_KEY",
    "SimServer",
    "SimSettings",
    "SimStats",
    "Usage",
    "build_app",
    "count_prompt_tokens",
    "run_server",
    "start_server",
]

log = logging.getLogger("exporter.simllm")  # the name it had before the package had subpackages

FAILURE_KINDS: Final = frozenset({"429", "500", "timeout", "malformed", "context", "401", "403", "404", "503"})
# OpenAI's answers for the other error kinds: status, message, type, code (OpenAI's wording).
_OPENAI_ERRORS: Final = {
    "context": (400, "This model's maximum context length is 128000 tokens. However, your messages resulted in "
                "150012 tokens. Please reduce the length of the messages.", "invalid_request_error",
                "context_length_exceeded"),
    "401": (401, "Incorrect API key provided: sk-sim. You can find your API key at "
            "https://platform.openai.com/account/api-keys.", "invalid_request_error", "invalid_api_key"),
    "403": (403, "Project `proj_sim` does not have access to model `{model}`", "invalid_request_error",
            "model_not_found"),
    "404": (404, "The model `{model}` does not exist or you do not have access to it.", "invalid_request_error",
            "model_not_found"),
    "503": (503, "The engine is currently overloaded, please try again later.", "server_error", None),
}
# A stalled request sleeps this long unless the client disconnects or the server shuts down first.
STALL_SECONDS: Final = 600.0
RETRY_AFTER_SECONDS: Final = 1
# Backstop for runner.cleanup(); stalled handlers are woken explicitly on shutdown anyway.
SHUTDOWN_TIMEOUT: Final = 2.0
# Good stream chunks sent before the broken one, so clients fail mid-stream rather than up front.
MALFORMED_AFTER_CHUNKS: Final = 2
ARGUMENT_PIECE_CHARS: Final = 4

_DIRECTIVE_RE: Final = re.compile(r"\[sim:([a-z_]+)=([^\]\s]+)\]", re.IGNORECASE)
_TICKER_RE: Final = re.compile(r"\b[A-Z]{2,5}(?:\.[A-Z])?\b")
_NOT_TICKERS: Final = frozenset({"AI", "API", "CEO", "JSON", "LLM", "OK", "SQL", "TTFT", "USD"})
# How agno's team leader prompt lists its members: agno 2.5 and later (agno/team/_messages.py), and
# agno 2.1-2.4 (Team.get_members_system_message_content: " - Agent 1:\n   - ID: x\n   - Name: X").
_MEMBER_RE: Final = re.compile(r'<member id="([^"]+)" name="([^"]*)"')
_MEMBER_RE_2_1: Final = re.compile(r"^\s*- ID: (\S+)\n(?:\s*- Name: ([^\n]*))?", re.MULTILINE)
_FREE_TEXT_NAMES: Final = frozenset(
    {"task", "query", "question", "prompt", "input", "request", "message", "text", "instructions", "topic"}
)
# Filler for text answers; market-flavoured to match the demo's stock agents.
_VOCABULARY: Final = (
    "the", "market", "data", "shows", "steady", "volume", "while", "analysts", "expect", "moderate",
    "growth", "across", "sectors", "and", "outlook", "remains", "balanced", "with", "some", "risk",
    "from", "rates", "earnings", "supply", "chains", "so", "a", "diversified", "view", "still",
    "looks", "reasonable", "for", "now",
)  # fmt: skip


@dataclass(frozen=True)
class SimSettings:
    """Behaviour of the simulated model; one instance per server."""

    ttft: float = 0.25
    ttft_jitter: float = 0.1
    per_token: float = 0.004
    output_tokens: int = 24
    cached_fraction: float = 0.0
    reasoning_tokens: int = 0
    failure_rate: float = 0.0
    failure_kinds: tuple[str, ...] = ("429", "500")
    seed: int | None = None
    model_ids: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "sim-small")

    def __post_init__(self) -> None:
        # Fail at construction (i.e. at CLI parse time) rather than on the first request.
        if self.ttft < 0 or self.per_token < 0:
            raise ValueError("ttft and per_token must be >= 0")
        if not 0.0 <= self.ttft_jitter <= 1.0:
            raise ValueError("ttft_jitter must be within [0, 1]")
        if self.output_tokens < 1:
            raise ValueError("output_tokens must be >= 1")
        if not 0.0 <= self.cached_fraction <= 1.0:
            raise ValueError("cached_fraction must be within [0, 1]")
        if self.reasoning_tokens < 0:
            raise ValueError("reasoning_tokens must be >= 0")
        if not 0.0 <= self.failure_rate <= 1.0:
            raise ValueError("failure_rate must be within [0, 1]")
        unknown = set(self.failure_kinds) - FAILURE_KINDS
        if unknown or (self.failure_rate > 0 and not self.failure_kinds):
            raise ValueError(f"failure_kinds must be non-empty and within {sorted(FAILURE_KINDS)}")


@dataclass(frozen=True)
class Usage:
    """Token usage reported for one successful completion."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": self.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }


@dataclass
class SimStats:
    """What the server did, for tests and the demo's sanity checks."""

    requests: int = 0  # chat-completion requests received
    succeeded: int = 0  # completions delivered in full (usage recorded)
    failed: dict[str, int] = field(default_factory=dict)  # by kind: 429, 500, timeout, malformed, ...
    tool_calls: dict[str, int] = field(default_factory=dict)  # tool-call answers by tool name
    usages: list[Usage] = field(default_factory=list)  # one per succeeded completion, in order

    @property
    def prompt_tokens(self) -> int:
        return sum(u.prompt_tokens for u in self.usages)

    @property
    def completion_tokens(self) -> int:
        return sum(u.completion_tokens for u in self.usages)

    def record_failure(self, kind: str) -> None:
        self.failed[kind] = self.failed.get(kind, 0) + 1


@dataclass
class _State:
    """Per-app mutable state; kept per app so several servers can share a process."""

    rng: random.Random
    closing: asyncio.Event


SETTINGS_KEY: Final = web.AppKey("simllm_settings", SimSettings)
STATS_KEY: Final = web.AppKey("simllm_stats", SimStats)
_STATE_KEY: Final = web.AppKey("simllm_state", _State)


# --------------------------------------------------------------------------- request analysis


def _content_text(content: Any) -> str:
    """Text of a message's content: a string, a list of content parts, or None."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, Mapping):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return str(content)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _text_tokens(text: str) -> int:
    # ~4 characters per token, like OpenAI's rule of thumb.
    return math.ceil(len(text) / 4)


def count_prompt_tokens(messages: Sequence[Any], tools: Sequence[Any] | None = None) -> int:
    """Deterministic prompt size: per message 3 tokens of framing plus ~chars/4 of its text."""
    total = 0
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        text = str(message.get("role", "")) + " " + _content_text(message.get("content"))
        if isinstance(message.get("name"), str):
            text += " " + message["name"]
        for call in message.get("tool_calls") or ():
            function = call.get("function", {}) if isinstance(call, Mapping) else {}
            text += " " + str(function.get("name", "")) + " " + str(function.get("arguments", ""))
        total += 3 + _text_tokens(text)
    if tools:
        total += _text_tokens(_canonical(list(tools)))
    return max(1, total)


def _last_user_index(messages: Sequence[Any]) -> int:
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, Mapping) and message.get("role") == "user":
            return index
    return -1


def _directives(text: str) -> dict[str, str]:
    return {key.lower(): value for key, value in _DIRECTIVE_RE.findall(text)}


def _strip_directives(text: str) -> str:
    return " ".join(_DIRECTIVE_RE.sub(" ", text).split())


def _find_ticker(text: str) -> str | None:
    for match in _TICKER_RE.finditer(text):
        if match.group(0) not in _NOT_TICKERS:
            return match.group(0)
    return None


@dataclass(frozen=True)
class _Context:
    """What argument generation may draw on."""

    user_text: str
    members: tuple[tuple[str, str], ...]  # (id, name) pairs from an agno team leader prompt

    def member_id(self) -> str:
        # Prefer a member the user named, so multi-member demo teams can be steered from the prompt.
        lowered = self.user_text.lower()
        for member_id, name in self.members:
            if member_id.lower() in lowered or (name and name.lower() in lowered):
                return member_id
        return self.members[0][0] if self.members else "member"


def _example_value(schema: Any, name: str, ctx: _Context, defs: Mapping[str, Any], all_props: bool) -> Any:
    """A plausible value for a JSON schema; ``all_props`` fills optional properties too."""
    if not isinstance(schema, Mapping):
        return _example_string(name, ctx)
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.rsplit("/", 1)[-1] in defs:
        return _example_value(defs[ref.rsplit("/", 1)[-1]], name, ctx, defs, all_props)
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    if "default" in schema and schema["default"] is not None:
        return schema["default"]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            non_null = [o for o in options if not (isinstance(o, Mapping) and o.get("type") == "null")]
            return _example_value((non_null or options)[0], name, ctx, defs, all_props)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties") or {}
        wanted = list(properties) if all_props else list(schema.get("required") or [])
        return {
            prop: _example_value(properties.get(prop, {}), prop, ctx, defs, all_props)
            for prop in wanted
            if isinstance(prop, str)
        }
    if kind == "array":
        return [_example_value(schema.get("items", {}), name, ctx, defs, all_props)]
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _example_string(name, ctx)


def _example_string(name: str, ctx: _Context) -> str:
    lowered = name.lower()
    if "symbol" in lowered or "ticker" in lowered:
        return _find_ticker(ctx.user_text) or "AAPL"
    if "member" in lowered or lowered in {"agent_id", "team_id"}:
        return ctx.member_id()
    if lowered in _FREE_TEXT_NAMES:
        # Keep directives: a delegated task then carries e.g. [sim:ttft=...] on to the member.
        return ctx.user_text[:500] or "Summarise the latest information."
    if "date" in lowered:
        return "2024-01-02"
    return f"sample {lowered.replace('_', ' ')}".strip()


@dataclass(frozen=True)
class _ToolCall:
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class _Plan:
    """The complete answer to one request, decided before any latency is simulated."""

    request_id: str
    model: str
    text_pieces: tuple[str, ...]
    tool_call: _ToolCall | None
    finish_reason: str
    usage: Usage


def _pick_tool(tools: Sequence[Any], tool_choice: Any, user_text: str) -> Mapping[str, Any] | None:
    functions: list[Mapping[str, Any]] = [
        t["function"]
        for t in tools
        if isinstance(t, Mapping) and isinstance(t.get("function"), Mapping) and t["function"].get("name")
    ]
    if not functions or tool_choice == "none":
        return None
    if isinstance(tool_choice, Mapping):
        forced = (tool_choice.get("function") or {}).get("name")
        for function in functions:
            if function["name"] == forced:
                return function
    lowered = user_text.lower()
    for function in functions:
        if str(function["name"]).lower() in lowered:
            return function
    return functions[0]


def _tool_result_summary(messages: Sequence[Any], since: int) -> tuple[str, str] | None:
    """(tool name, result text) of the last tool result after index ``since``, if any."""
    names: dict[str, str] = {}
    found: tuple[str, str] | None = None
    for message in messages[since + 1 :]:
        if not isinstance(message, Mapping):
            continue
        for call in message.get("tool_calls") or ():
            if isinstance(call, Mapping) and isinstance(call.get("function"), Mapping):
                names[str(call.get("id"))] = str(call["function"].get("name", "tool"))
        if message.get("role") == "tool":
            name = names.get(str(message.get("tool_call_id")), str(message.get("name") or "tool"))
            found = (name, _content_text(message.get("content")))
    return found


def _plan(body: Mapping[str, Any], settings: SimSettings) -> _Plan:
    messages: list[Any] = list(body.get("messages") or [])
    tools: list[Any] = list(body.get("tools") or [])
    model = str(body.get("model") or settings.model_ids[0])
    digest = hashlib.sha256(_canonical({"m": model, "msgs": messages, "tools": tools}).encode()).hexdigest()
    # Seeded from the request itself so identical requests produce identical answers and usage.
    text_rng = random.Random(int(digest[:16], 16))

    user_index = _last_user_index(messages)
    user_text = _content_text(messages[user_index].get("content")) if user_index >= 0 else ""
    system_text = "\n".join(
        _content_text(m.get("content"))
        for m in messages
        if isinstance(m, Mapping) and m.get("role") in {"system", "developer"}
    )
    members = _MEMBER_RE.findall(system_text) or _MEMBER_RE_2_1.findall(system_text)
    ctx = _Context(user_text=user_text, members=tuple(members))
    tool_result = _tool_result_summary(messages, user_index)

    tool_call: _ToolCall | None = None
    pieces: list[str]
    function = None if tool_result else _pick_tool(tools, body.get("tool_choice"), user_text)
    if function is not None:
        params = function.get("parameters")
        params = params if isinstance(params, Mapping) else {}
        defs = params.get("$defs") or params.get("definitions") or {}
        arguments = json.dumps(_example_value(params, "", ctx, defs, all_props=False))
        if not arguments.startswith("{"):
            arguments = "{}"
        tool_call = _ToolCall(call_id=f"call_{digest[:24]}", name=str(function["name"]), arguments=arguments)
        pieces = [
            arguments[i : i + ARGUMENT_PIECE_CHARS] for i in range(0, len(arguments), ARGUMENT_PIECE_CHARS)
        ]
    else:
        pieces = _answer_pieces(body, settings, ctx, tool_result, text_rng)

    finish_reason = "tool_calls" if tool_call else "stop"
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if tool_call is None and isinstance(limit, int) and 0 < limit < len(pieces):
        pieces, finish_reason = pieces[:limit], "length"

    prompt_tokens = count_prompt_tokens(messages, tools)
    usage = Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=len(pieces) + settings.reasoning_tokens,
        cached_tokens=math.floor(prompt_tokens * settings.cached_fraction),
        reasoning_tokens=settings.reasoning_tokens,
    )
    return _Plan(
        request_id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
        model=model,
        text_pieces=tuple(pieces),
        tool_call=tool_call,
        finish_reason=finish_reason,
        usage=usage,
    )


def _answer_pieces(
    body: Mapping[str, Any],
    settings: SimSettings,
    ctx: _Context,
    tool_result: tuple[str, str] | None,
    text_rng: random.Random,
) -> list[str]:
    """Pieces of a text answer; each piece is one completion token."""
    response_format = body.get("response_format")
    if isinstance(response_format, Mapping) and response_format.get("type") in {"json_object", "json_schema"}:
        # Structured output: a JSON document that satisfies the requested schema.
        json_schema = response_format.get("json_schema") or {}
        schema = json_schema.get("schema") if isinstance(json_schema, Mapping) else None
        schema = schema if isinstance(schema, Mapping) else {}
        defs = schema.get("$defs") or {}
        document = json.dumps(_example_value(schema, "", ctx, defs, all_props=True) if schema else {})
        return [document[i : i + ARGUMENT_PIECE_CHARS] for i in range(0, len(document), ARGUMENT_PIECE_CHARS)]

    if tool_result is not None:
        name, result = tool_result
        lead = f"Based on {name}: {' '.join(result.split())[:60]}".split()
    else:
        topic = _strip_directives(ctx.user_text).split()[:12]
        lead = ["Simulated", "answer", "to:", *topic] if topic else ["Simulated", "answer."]
    filler = [text_rng.choice(_VOCABULARY) for _ in range(max(0, settings.output_tokens - len(lead)))]
    words = [*lead, *filler]
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


# --------------------------------------------------------------------------- responses


def _error_response(status: int, message: str, err_type: str, code: str | None) -> web.Response:
    headers = {"retry-after": str(RETRY_AFTER_SECONDS)} if status == 429 else None
    payload = {"error": {"message": message, "type": err_type, "param": None, "code": code}}
    return web.json_response(payload, status=status, headers=headers)


def _completion_json(plan: _Plan, created: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
    if plan.tool_call is not None:
        message["tool_calls"] = [
            {
                "id": plan.tool_call.call_id,
                "type": "function",
                "function": {"name": plan.tool_call.name, "arguments": plan.tool_call.arguments},
            }
        ]
    else:
        message["content"] = "".join(plan.text_pieces)
    return {
        "id": plan.request_id,
        "object": "chat.completion",
        "created": created,
        "model": plan.model,
        "system_fingerprint": "fp_simllm",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": plan.finish_reason}],
        "usage": plan.usage.to_json(),
    }


def _chunk_deltas(plan: _Plan) -> list[dict[str, Any]]:
    """The stream's choice deltas in order: role first, then one delta per token."""
    if plan.tool_call is None:
        return [{"role": "assistant", "content": ""}] + [{"content": piece} for piece in plan.text_pieces]
    call = plan.tool_call
    header = {
        "index": 0,
        "id": call.call_id,
        "type": "function",
        "function": {"name": call.name, "arguments": ""},
    }
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": None, "tool_calls": [header]}]
    deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} for piece in plan.text_pieces]
    return deltas


async def _stream(
    request: web.Request, plan: _Plan, ttft: float, include_usage: bool, malformed: bool
) -> web.StreamResponse:
    settings = request.app[SETTINGS_KEY]
    stats = request.app[STATS_KEY]
    created = int(time.time())
    base: dict[str, Any] = {
        "id": plan.request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": plan.model,
        "system_fingerprint": "fp_simllm",
    }
    if include_usage:
        base["usage"] = None  # as OpenAI does: null on every chunk but the last

    def event(payload: Mapping[str, Any]) -> bytes:
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

    def choice_chunk(delta: Mapping[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return event({**base, "choices": [choice]})

    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    # Headers go out at once, as with OpenAI; the first data chunk waits for the simulated TTFT.
    await response.prepare(request)
    try:
        for index, delta in enumerate(_chunk_deltas(plan)):
            await asyncio.sleep(ttft if index == 0 else settings.per_token)
            if malformed and index == MALFORMED_AFTER_CHUNKS:
                await response.write(b'data: {"id": "' + plan.request_id.encode() + b'", "choices": [\n\n')
                await response.write_eof()
                stats.record_failure("malformed")
                return response
            await response.write(choice_chunk(delta))
        if malformed:  # answer too short to break mid-way: break at the end instead
            await response.write(b"data: {not json\n\n")
            await response.write_eof()
            stats.record_failure("malformed")
            return response
        await response.write(choice_chunk({}, plan.finish_reason))
        if include_usage:
            await response.write(event({**base, "choices": [], "usage": plan.usage.to_json()}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionResetError:
        stats.record_failure("client_disconnected")
        return response
    _record_success(stats, plan)
    return response


def _record_success(stats: SimStats, plan: _Plan) -> None:
    stats.succeeded += 1
    stats.usages.append(plan.usage)
    if plan.tool_call is not None:
        stats.tool_calls[plan.tool_call.name] = stats.tool_calls.get(plan.tool_call.name, 0) + 1


# --------------------------------------------------------------------------- handlers


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS_KEY]
    stats = request.app[STATS_KEY]
    state = request.app[_STATE_KEY]
    stats.requests += 1
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        stats.record_failure("bad_request")
        return _error_response(400, "Request body is not valid JSON.", "invalid_request_error", None)
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
        stats.record_failure("bad_request")
        return _error_response(400, "'messages' must be a non-empty array.", "invalid_request_error", None)

    messages = body["messages"]
    user_index = _last_user_index(messages)
    directives = _directives(_content_text(messages[user_index].get("content")) if user_index >= 0 else "")

    # Always draw both numbers so the seeded sequence does not depend on earlier outcomes.
    failure_draw, jitter = state.rng.random(), state.rng.uniform(-settings.ttft_jitter, settings.ttft_jitter)
    failure = directives.get("fail")
    if failure not in FAILURE_KINDS:
        failure = None
        if failure_draw < settings.failure_rate:
            failure = state.rng.choice(settings.failure_kinds)
    ttft = settings.ttft * (1.0 + jitter)
    with contextlib.suppress(ValueError):
        ttft = max(0.0, float(directives.get("ttft", "")))

    if failure == "429":
        stats.record_failure("429")
        return _error_response(
            429, "Rate limit reached for requests (simulated).", "requests", "rate_limit_exceeded"
        )
    if failure == "500":
        stats.record_failure("500")
        return _error_response(
            500, "The server had an error while processing your request (simulated).", "server_error", None
        )
    if failure in _OPENAI_ERRORS:
        stats.record_failure(failure)
        status, message, err_type, code = _OPENAI_ERRORS[failure]
        return _error_response(status, message.format(model=body.get("model", "")), err_type, code)
    if failure == "timeout":
        stats.record_failure("timeout")
        # Stall until the client gives up (handler cancellation) or the server shuts down.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.closing.wait(), timeout=STALL_SECONDS)
        return _error_response(503, "Simulated server is shutting down.", "server_error", None)

    plan = _plan(body, settings)
    if body.get("stream"):
        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))
        return await _stream(request, plan, ttft, include_usage, malformed=failure == "malformed")

    await asyncio.sleep(ttft + settings.per_token * len(plan.text_pieces))
    if failure == "malformed":
        stats.record_failure("malformed")
        # Declared as JSON so clients try, and fail, to parse it.
        return web.Response(
            status=200, body=b'{"id": "chatcmpl-broken", "choices": [', content_type="application/json"
        )
    _record_success(stats, plan)
    return web.json_response(_completion_json(plan, int(time.time())))


def _model_json(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 1_700_000_000, "owned_by": "agno-exporter-simllm"}


async def _list_models(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    return web.json_response({"object": "list", "data": [_model_json(m) for m in settings.model_ids]})


async def _get_model(request: web.Request) -> web.Response:
    # Any id is accepted for completions, so any id "exists".
    return web.json_response(_model_json(request.match_info["model"]))


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _wake_stalled(app: web.Application) -> None:
    app[_STATE_KEY].closing.set()


def build_app(settings: SimSettings) -> web.Application:
    """The aiohttp application; its stats are at ``app[STATS_KEY]``."""
    app = web.Application()
    app[SETTINGS_KEY] = settings
    app[STATS_KEY] = SimStats()
    app[_STATE_KEY] = _State(rng=random.Random(settings.seed), closing=asyncio.Event())
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/chat/completions", _chat_completions)
        app.router.add_get(f"{prefix}/models", _list_models)
        app.router.add_get(f"{prefix}/models/{{model}}", _get_model)
    app.router.add_get("/healthz", _healthz)
    app.on_shutdown.append(_wake_stalled)
    return app


# --------------------------------------------------------------------------- running


class SimServer:
    """A running simulated server; ``url`` is the base URL for OpenAI clients."""

    def __init__(self, runner: web.AppRunner, app: web.Application, url: str) -> None:
        self._runner = runner
        self.app = app
        self.url = url
        self._closed = False

    @property
    def stats(self) -> SimStats:
        return self.app[STATS_KEY]

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._runner.cleanup()

    async def __aenter__(self) -> SimServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def start_server(settings: SimSettings, host: str = "127.0.0.1", port: int = 0) -> SimServer:
    """Start serving in the running event loop; ``port=0`` picks a free port (see ``.url``)."""
    app = build_app(settings)
    # handler_cancellation: a client that times out and disconnects ends its stalled handler.
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = int(runner.addresses[0][1])
    except BaseException:
        await runner.cleanup()
        raise
    url_host = "127.0.0.1" if host in {"", "0.0.0.0"} else "[::1]" if host == "::" else host
    if ":" in url_host and not url_host.startswith("["):
        url_host = f"[{url_host}]"
    return SimServer(runner, app, f"http://{url_host}:{bound_port}/v1")


async def run_server(settings: SimSettings, host: str, port: int) -> None:
    """Serve until cancelled (``agno-exporter simulate-llm``)."""
    server = await start_server(settings, host, port)
    log.info("simulated OpenAI API listening on %s", server.url)
    try:
        await asyncio.Event().wait()
    finally:
        await server.close()
