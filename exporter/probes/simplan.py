"""What the simulated model answers a request with, by its settings (:class:`SimSettings`): prompt tokens counted, a
tool picked and its arguments made up from the tool's JSON schema, or an answer in pieces. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

FAILURE_KINDS: Final = frozenset({"429", "500", "timeout", "malformed", "context", "401", "403", "404", "503"})
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

# --------------------------------------------------------------------------- request analysis


def message_text(content: Any) -> str:
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
        text = str(message.get("role", "")) + " " + message_text(message.get("content"))
        if isinstance(message.get("name"), str):
            text += " " + message["name"]
        for call in message.get("tool_calls") or ():
            function = call.get("function", {}) if isinstance(call, Mapping) else {}
            text += " " + str(function.get("name", "")) + " " + str(function.get("arguments", ""))
        total += 3 + _text_tokens(text)
    if tools:
        total += _text_tokens(_canonical(list(tools)))
    return max(1, total)


def last_user_index(messages: Sequence[Any]) -> int:
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, Mapping) and message.get("role") == "user":
            return index
    return -1


def parse_directives(text: str) -> dict[str, str]:
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
class SimPlan:
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
            found = (name, message_text(message.get("content")))
    return found


def make_plan(body: Mapping[str, Any], settings: SimSettings) -> SimPlan:
    messages: list[Any] = list(body.get("messages") or [])
    tools: list[Any] = list(body.get("tools") or [])
    model = str(body.get("model") or settings.model_ids[0])
    digest = hashlib.sha256(_canonical({"m": model, "msgs": messages, "tools": tools}).encode()).hexdigest()
    # Seeded from the request itself so identical requests produce identical answers and usage.
    text_rng = random.Random(int(digest[:16], 16))

    user_index = last_user_index(messages)
    user_text = message_text(messages[user_index].get("content")) if user_index >= 0 else ""
    system_text = "\n".join(
        message_text(m.get("content"))
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
    return SimPlan(
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
