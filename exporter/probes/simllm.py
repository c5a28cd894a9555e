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
import json
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from exporter.probes.simplan import (
    FAILURE_KINDS,
    SimPlan,
    SimSettings,
    Usage,
    count_prompt_tokens,
    last_user_index,
    make_plan,
    message_text,
    parse_directives,
)

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

# --------------------------------------------------------------------------- responses


def _error_response(status: int, message: str, err_type: str, code: str | None) -> web.Response:
    headers = {"retry-after": str(RETRY_AFTER_SECONDS)} if status == 429 else None
    payload = {"error": {"message": message, "type": err_type, "param": None, "code": code}}
    return web.json_response(payload, status=status, headers=headers)


def _completion_json(plan: SimPlan, created: int) -> dict[str, Any]:
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


def _chunk_deltas(plan: SimPlan) -> list[dict[str, Any]]:
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
    request: web.Request, plan: SimPlan, ttft: float, include_usage: bool, malformed: bool
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


def _record_success(stats: SimStats, plan: SimPlan) -> None:
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
    user_index = last_user_index(messages)
    directives = parse_directives(message_text(messages[user_index].get("content")) if user_index >= 0 else "")

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

    plan = make_plan(body, settings)
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
