"""error.type of failed runs, from what real agno stores for each provider's errors.

agno keeps only ``str(exception)`` of a failed run (its content): for OpenAI the body's message, for
Anthropic the SDK's "Error code: N - {body}", for Gemini the body or a response's repr. Each provider
endpoint below answers with that provider's real error shape (the simulated OpenAI server, scripted
Anthropic and Gemini servers), real agno stores the run, and the exporter's parser reads it back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from agno.agent import Agent
from agno.db.postgres import PostgresDb
from agno.models.openai import OpenAIChat

from exporter.records.parse import build_run_record
from exporter.records.runs import RunRecord
from tests.helpers.provider_servers import (
    AnthropicServer,
    GeminiServer,
    ScriptedServer,
    anthropic_error,
    claude_model,
    gemini_error,
    gemini_model,
)
from tests.helpers.support import ThreadLoop, close_clients, sqlalchemy_url


@pytest.fixture(scope="module")
def loop() -> Iterator[ThreadLoop]:
    """Servers run on a loop of their own, so agno's sync and async clients both reach them."""
    tl = ThreadLoop()
    yield tl
    tl.close()


def stored(db_url: str, run_id: str) -> RunRecord:
    with psycopg.connect(db_url, row_factory=psycopg.rows.dict_row) as conn:
        row = conn.execute("SELECT * FROM ai.agno_runs WHERE run_id = %s", (run_id,)).fetchone()
    assert row is not None
    return build_run_record(row, row["run_data"])


def run_and_read(db_url: str, model: Any, prompt: str = "hi", sync: bool = False) -> tuple[RunRecord, Any]:
    db = PostgresDb(db_url=sqlalchemy_url(db_url))
    agent = Agent(name="Failing", model=model, db=db, telemetry=False)

    async def go() -> Any:
        try:
            return agent.run(prompt) if sync else await agent.arun(prompt)
        finally:
            await close_clients(model)

    try:
        out = asyncio.run(go())
        return stored(db_url, out.run_id), out
    finally:
        db.db_engine.dispose()


def with_server(loop: ThreadLoop, server: ScriptedServer) -> ScriptedServer:
    return loop.run(server.start())


# OpenAI: agno keeps the body's message only (agno/models/openai/chat.py), so the wording decides.
OPENAI_CASES = [
    ("429", "RateLimitError"),
    ("500", "InternalServerError"),
    ("503", "OverloadedError"),
    ("context", "ContextWindowExceededError"),  # "... resulted in 150012 tokens": no HTTP 500 in it
    ("401", "AuthenticationError"),
    ("403", "PermissionDeniedError"),
    ("404", "NotFoundError"),
    ("malformed", "JSONDecodeError"),
    ("timeout", "APITimeoutError"),
]


def test_openai_errors(db_url: str, sim_url: str) -> None:
    for kind, expected in OPENAI_CASES:
        model = OpenAIChat(id="gpt-4o", base_url=sim_url, api_key="sim", max_retries=0, timeout=0.5)
        record, out = run_and_read(db_url, model, f"Say hi [sim:fail={kind}]")
        assert record.status == "ERROR" and record.error_message == out.content, kind
        assert record.error_type == expected, (kind, record.error_message)
    refused = OpenAIChat(id="gpt-4o", base_url="http://127.0.0.1:9/v1", api_key="sim", max_retries=0)
    record, _ = run_and_read(db_url, refused)
    assert record.error_type == "APIConnectionError", record.error_message


ANTHROPIC_CASES = [
    (anthropic_error(400, "invalid_request_error", "prompt is too long: 215000 tokens > 200000 maximum"),
     "ContextWindowExceededError"),
    (anthropic_error(400, "invalid_request_error", "messages: roles must alternate"), "BadRequestError"),
    (anthropic_error(401, "authentication_error", "invalid x-api-key"), "AuthenticationError"),
    (anthropic_error(403, "permission_error", "Your API key does not have permission to use the specified resource."),
     "PermissionDeniedError"),
    (anthropic_error(404, "not_found_error", "model: claude-sonnet-9"), "NotFoundError"),
    (anthropic_error(413, "request_too_large", "Request exceeds the maximum allowed number of bytes."),
     "ContentTooLargeError"),
    (anthropic_error(429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
     "RateLimitError"),
    (anthropic_error(500, "api_error", "Internal server error"), "InternalServerError"),
    (anthropic_error(529, "overloaded_error", "Overloaded"), "OverloadedError"),
]


def test_anthropic_errors(db_url: str, loop: ThreadLoop) -> None:
    for reply, expected in ANTHROPIC_CASES:
        server = with_server(loop, AnthropicServer([reply]))
        try:
            record, out = run_and_read(db_url, claude_model(server))
        finally:
            loop.run(server.close())
        assert record.status == "ERROR" and record.error_message == out.content
        assert record.error_message.startswith(f"Error code: {reply.status} - ")  # what agno keeps
        assert record.error_type == expected, (reply.error, record.error_message)


GEMINI_CASES = [
    (gemini_error(400, "INVALID_ARGUMENT", "The input token count (1050000) exceeds the maximum number of tokens "
                  "allowed (1048576)."), "ContextWindowExceededError", "BadRequestError"),
    (gemini_error(403, "PERMISSION_DENIED", "Permission denied on resource project sim."), "PermissionDeniedError",
     "PermissionDeniedError"),
    (gemini_error(404, "NOT_FOUND", "models/gemini-9 is not found for API version v1beta."), "NotFoundError",
     "NotFoundError"),
    (gemini_error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."), "RateLimitError",
     "RateLimitError"),
    (gemini_error(500, "INTERNAL", "An internal error has occurred."), "InternalServerError", "InternalServerError"),
    (gemini_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."), "OverloadedError",
     "ServiceUnavailableError"),
]


def test_gemini_errors(db_url: str, loop: ThreadLoop) -> None:
    """Sync (httpx: agno keeps the error body) and async (aiohttp: agno keeps the response's repr,
    where only the status survives, so a context overflow reads as the 400 it was)."""
    for reply, when_sync, when_async in GEMINI_CASES:
        for sync, expected in ((True, when_sync), (False, when_async)):
            server: Any = with_server(loop, GeminiServer([reply]))
            try:
                record, out = run_and_read(db_url, gemini_model(server), sync=sync)
            finally:
                loop.run(server.close())
            assert record.status == "ERROR" and record.error_message == (out.content or "")[:512]
            assert record.error_type == expected, (sync, reply.error, record.error_message)


def test_status_codes_are_read_only_where_a_format_puts_them() -> None:
    from exporter.records.values import classify_error

    assert classify_error("COMPLETED", "Error code: 500") is None
    assert classify_error("CANCELLED", "anything") == "Cancelled"
    for text in ("Tool failed: order 429 was not found", "Price 500 of AAPL", "Retry after 503 ms"):
        assert classify_error("ERROR", text) == "AgnoRunError", text

