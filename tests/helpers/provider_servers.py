"""Small scripted servers shaped like the Gemini and Anthropic APIs, for agno's own model classes.

agno's ``Gemini`` (google-genai) and ``Claude`` (anthropic) clients talk to these exactly as to the
real services: the request paths, the JSON and server-sent-event shapes of the replies, the usage
blocks (Gemini's ``usageMetadata`` with ``thoughtsTokenCount``/``cachedContentTokenCount``,
Anthropic's ``usage`` with ``cache_read_input_tokens``/``cache_creation_input_tokens``) and the error
bodies each API answers with. Each request takes the next scripted :class:`Reply` (the last one
repeats), so a test decides what the "provider" said and compares what agno stored with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Reply:
    """One answer: text with a usage block, or an HTTP error with the provider's error body."""

    text: str = "Scripted answer."
    usage: Mapping[str, int] = field(default_factory=dict)  # in the provider's own field names
    status: int = 200
    error: Mapping[str, Any] | None = None  # the provider's error JSON (status != 200)


class ScriptedServer:
    """Serves ``replies`` in order on 127.0.0.1; ``url`` is the base URL for the client."""

    def __init__(self, replies: Sequence[Reply]) -> None:
        self.replies = list(replies)
        self.requests: list[tuple[str, dict[str, Any]]] = []  # (path, body)
        self._runner: web.AppRunner | None = None
        self.url = ""

    def _next(self) -> Reply:
        return self.replies[min(len(self.requests) - 1, len(self.replies) - 1)]

    async def start(self) -> ScriptedServer:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append((request.path, body))
        reply = self._next()
        if reply.status != 200:
            return web.json_response(reply.error or {}, status=reply.status)
        if self._streamed(request, body):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for event in self._events(reply):
                await response.write(event)
            await response.write_eof()
            return response
        return web.json_response(self._whole(reply))

    def _streamed(self, request: web.Request, body: Mapping[str, Any]) -> bool:
        raise NotImplementedError

    def _whole(self, reply: Reply) -> dict[str, Any]:
        raise NotImplementedError

    def _events(self, reply: Reply) -> list[bytes]:
        raise NotImplementedError


class GeminiServer(ScriptedServer):
    """``POST /{version}/models/{model}:generateContent`` and ``:streamGenerateContent?alt=sse``.

    ``Reply.usage`` holds ``usageMetadata`` fields (promptTokenCount, candidatesTokenCount,
    thoughtsTokenCount, cachedContentTokenCount, totalTokenCount). Errors are Google's
    ``{"error": {"code", "message", "status"}}``.
    """

    model = "gemini-2.5-flash"

    def _streamed(self, request: web.Request, body: Mapping[str, Any]) -> bool:
        return request.path.endswith(":streamGenerateContent")

    def _candidate(self, text: str, finish: str | None) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        return candidate

    def _whole(self, reply: Reply) -> dict[str, Any]:
        return {"candidates": [self._candidate(reply.text, "STOP")], "usageMetadata": dict(reply.usage),
                "modelVersion": self.model, "responseId": f"resp-{len(self.requests)}"}

    def _events(self, reply: Reply) -> list[bytes]:
        # As Google streams: every chunk carries the usage so far, the last one the final usage.
        head, tail = reply.text[: len(reply.text) // 2], reply.text[len(reply.text) // 2:]
        prompt = {k: v for k, v in reply.usage.items() if k in ("promptTokenCount", "cachedContentTokenCount")}
        chunks = [
            {"candidates": [self._candidate(head, None)], "usageMetadata": prompt, "modelVersion": self.model},
            {"candidates": [self._candidate(tail, "STOP")], "usageMetadata": dict(reply.usage),
             "modelVersion": self.model},
        ]
        return [b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks]


def gemini_model(server: GeminiServer, model_id: str = GeminiServer.model) -> Any:
    """agno's own Gemini class, pointed at ``server``."""
    from agno.models.google import Gemini

    return Gemini(id=model_id, api_key="k", client_params={"http_options": {"base_url": server.url}})


def gemini_error(code: int, status: str, message: str) -> Reply:
    return Reply(status=code, error={"error": {"code": code, "message": message, "status": status}})


class AnthropicServer(ScriptedServer):
    """``POST /v1/messages``, whole or streamed (message_start ... message_stop events).

    ``Reply.usage`` holds Anthropic's usage fields (input_tokens, output_tokens,
    cache_read_input_tokens, cache_creation_input_tokens). Errors are Anthropic's
    ``{"type": "error", "error": {"type", "message"}}``.
    """

    model = "claude-sonnet-4-6"

    def _streamed(self, request: web.Request, body: Mapping[str, Any]) -> bool:
        return bool(body.get("stream"))

    def _whole(self, reply: Reply) -> dict[str, Any]:
        return {"id": f"msg_{len(self.requests)}", "type": "message", "role": "assistant", "model": self.model,
                "content": [{"type": "text", "text": reply.text}], "stop_reason": "end_turn",
                "stop_sequence": None, "usage": dict(reply.usage)}

    def _events(self, reply: Reply) -> list[bytes]:
        # As Anthropic streams: the input side of the usage in message_start, output in message_delta.
        start_usage = {**reply.usage, "output_tokens": 1}
        message = {**self._whole(reply), "content": [], "stop_reason": None, "usage": start_usage}
        events = [
            ("message_start", {"type": "message_start", "message": message}),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": reply.text}}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                               "usage": {"output_tokens": reply.usage.get("output_tokens", 0)}}),
            ("message_stop", {"type": "message_stop"}),
        ]
        return [f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events]


def claude_model(server: AnthropicServer, model_id: str = AnthropicServer.model) -> Any:
    """agno's own Claude class, pointed at ``server`` (no client retries: a test decides every answer)."""
    from agno.models.anthropic import Claude

    return Claude(id=model_id, api_key="k", client_params={"base_url": server.url, "max_retries": 0})


def anthropic_error(code: int, kind: str, message: str) -> Reply:
    return Reply(status=code, error={"type": "error", "error": {"type": kind, "message": message}})
