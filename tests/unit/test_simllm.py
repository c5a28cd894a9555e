"""Tests for exporter.probes.simllm, driven by the real openai client and real agno agents and teams."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest
from agno.agent import Agent
from agno.models.openai import OpenAIChat
from agno.run.agent import RunOutput
from agno.run.base import RunStatus
from agno.run.team import TeamRunOutput
from agno.team import Team
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageFunctionToolCall

from exporter.probes.simllm import STATS_KEY, SimServer, start_server
from exporter.probes.simplan import SimSettings, count_prompt_tokens

BASE = SimSettings(ttft=0.02, per_token=0.001, seed=1)
STOCK_TOOL: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_stock_price",
        "description": "Get the current stock price for a ticker symbol.",
        "parameters": {
            "type": "object",
            "properties": {"symbol": {"type": "string"}},
            "required": ["symbol"],
        },
    },
}
QUESTION = "What is the stock price of AAPL?"


def serve(body: Callable[[SimServer], Awaitable[None]], settings: SimSettings = BASE) -> None:
    """Run ``body`` against a fresh server on an ephemeral port, always closing it."""

    async def main() -> None:
        server = await start_server(settings, port=0)
        try:
            await body(server)
        finally:
            await server.close()

    asyncio.run(main())


def client(server: SimServer, **kwargs: Any) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=server.url, api_key="sim", max_retries=0, **kwargs)


def get_stock_price(symbol: str) -> str:
    """Get the current stock price for a ticker symbol."""
    return f"{symbol} is trading at 187.42 USD, up 1.3% today"


def sim_model(server: SimServer) -> OpenAIChat:
    return OpenAIChat(id="gpt-4o-mini", base_url=server.url, api_key="sim")


async def close_models(*models: OpenAIChat) -> None:
    # agno caches one AsyncOpenAI client per model and never closes it itself.
    for model in models:
        if model.async_client is not None:
            await model.async_client.close()


# --------------------------------------------------------------------------- openai client


def test_non_streamed_completion_reports_consistent_usage() -> None:
    settings = dataclasses.replace(BASE, cached_fraction=0.5, reasoning_tokens=3, output_tokens=10)
    messages: list[Any] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Tell me about the market today, please."},
    ]

    async def body(server: SimServer) -> None:
        async with client(server) as oai:
            response = await oai.chat.completions.create(model="gpt-4o-mini", messages=messages)
        assert response.object == "chat.completion"
        assert response.model == "gpt-4o-mini"
        choice = response.choices[0]
        assert choice.finish_reason == "stop"
        content = choice.message.content or ""
        assert content.startswith("Simulated answer to: Tell me about the market")
        usage = response.usage
        assert usage is not None
        assert usage.prompt_tokens == count_prompt_tokens(messages)
        assert usage.completion_tokens == len(content.split()) + 3 == 13
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        assert usage.prompt_tokens_details is not None
        assert usage.prompt_tokens_details.cached_tokens == math.floor(usage.prompt_tokens * 0.5) > 0
        assert usage.completion_tokens_details is not None
        assert usage.completion_tokens_details.reasoning_tokens == 3
        stats = server.stats
        assert (stats.requests, stats.succeeded, stats.failed) == (1, 1, {})
        assert stats.usages[0].total_tokens == usage.total_tokens

    serve(body, settings)


def test_streamed_completion_sends_usage_chunk_after_ttft() -> None:
    settings = dataclasses.replace(BASE, ttft=0.1, ttft_jitter=0.0)

    async def body(server: SimServer) -> None:
        async with client(server) as oai:
            started = time.perf_counter()
            stream = await oai.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "Summarise the outlook."}],
                stream=True,
                stream_options={"include_usage": True},
            )
            first_chunk_at: float | None = None
            pieces: list[str] = []
            roles: list[str] = []
            finish_reasons: list[str] = []
            usage_chunks = []
            async for chunk in stream:
                first_chunk_at = first_chunk_at or time.perf_counter() - started
                assert chunk.object == "chat.completion.chunk"
                if chunk.usage is not None:
                    assert chunk.choices == []
                    usage_chunks.append(chunk.usage)
                for choice in chunk.choices:
                    roles += [choice.delta.role] if choice.delta.role else []
                    pieces += [choice.delta.content] if choice.delta.content else []
                    finish_reasons += [choice.finish_reason] if choice.finish_reason else []
        assert first_chunk_at is not None and first_chunk_at >= 0.1
        assert roles == ["assistant"]
        assert finish_reasons == ["stop"]
        content = "".join(pieces)
        assert content.startswith("Simulated answer to: Summarise the outlook.")
        assert len(usage_chunks) == 1
        usage = usage_chunks[0]
        assert usage.completion_tokens == len(pieces) == len(content.split()) == settings.output_tokens
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        assert server.stats.succeeded == 1

    serve(body, settings)


def test_stream_without_include_usage_has_no_usage_chunk() -> None:
    async def body(server: SimServer) -> None:
        async with client(server) as oai:
            stream = await oai.chat.completions.create(
                model="sim-small", messages=[{"role": "user", "content": "hello"}], stream=True
            )
            chunks = [chunk async for chunk in stream]
        assert all(chunk.usage is None for chunk in chunks)
        assert all(chunk.choices for chunk in chunks)

    serve(body)


def test_tool_call_round_trip() -> None:
    async def body(server: SimServer) -> None:
        messages: list[Any] = [{"role": "user", "content": QUESTION}]
        async with client(server) as oai:
            first = await oai.chat.completions.create(model="gpt-4o", messages=messages, tools=[STOCK_TOOL])
            assert first.choices[0].finish_reason == "tool_calls"
            calls = first.choices[0].message.tool_calls or []
            assert len(calls) == 1
            call = calls[0]
            assert isinstance(call, ChatCompletionMessageFunctionToolCall)
            assert call.id.startswith("call_")
            assert call.type == "function"
            assert call.function.name == "get_stock_price"
            arguments = json.loads(call.function.arguments)
            assert arguments == {"symbol": "AAPL"}
            assert first.usage is not None
            assert first.usage.completion_tokens == math.ceil(len(call.function.arguments) / 4)

            # The same call, streamed, arrives as id/name first and then argument pieces.
            stream = await oai.chat.completions.create(
                model="gpt-4o", messages=messages, tools=[STOCK_TOOL], stream=True
            )
            streamed_args = ""
            async for chunk in stream:
                for choice in chunk.choices:
                    for tool_delta in choice.delta.tool_calls or []:
                        assert tool_delta.index == 0
                        if tool_delta.id:
                            assert tool_delta.id == call.id
                            assert tool_delta.function is not None
                            assert tool_delta.function.name == "get_stock_price"
                        if tool_delta.function and tool_delta.function.arguments:
                            streamed_args += tool_delta.function.arguments
            assert json.loads(streamed_args) == arguments

            messages.append(first.choices[0].message.model_dump(exclude_none=True))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": get_stock_price("AAPL")})
            second = await oai.chat.completions.create(model="gpt-4o", messages=messages, tools=[STOCK_TOOL])
        assert second.choices[0].finish_reason == "stop"
        assert not second.choices[0].message.tool_calls
        content = second.choices[0].message.content or ""
        assert content.startswith("Based on get_stock_price: AAPL is trading at 187.42 USD")
        assert server.stats.tool_calls == {"get_stock_price": 2}

    serve(body)


def test_tool_arguments_follow_schema() -> None:
    tool: ChatCompletionFunctionToolParam = {
        "type": "function",
        "function": {
            "name": "place_order",
            "parameters": {
                "type": "object",
                "properties": {
                    "ticker": {"type": "string"},
                    "side": {"type": "string", "enum": ["sell", "buy"]},
                    "quantity": {"type": "integer"},
                    "limit": {"type": "number"},
                    "dry_run": {"type": "boolean"},
                    "note": {"type": "string"},
                    "optional": {"type": "string"},
                },
                "required": ["ticker", "side", "quantity", "limit", "dry_run", "note"],
            },
        },
    }

    async def body(server: SimServer) -> None:
        async with client(server) as oai:
            response = await oai.chat.completions.create(
                model="gpt-4o",
                # The tool named in the message wins over the first offered one.
                messages=[{"role": "user", "content": "Use place_order for MSFT now"}],
                tools=[STOCK_TOOL, tool],
            )
        call = (response.choices[0].message.tool_calls or [])[0]
        assert isinstance(call, ChatCompletionMessageFunctionToolCall)
        assert call.function.name == "place_order"
        args = json.loads(call.function.arguments)
        assert args["ticker"] == "MSFT"
        assert args["side"] == "sell"
        assert (args["quantity"], args["limit"], args["dry_run"]) == (1, 1.0, True)
        assert isinstance(args["note"], str) and args["note"]
        assert "optional" not in args

    serve(body)


def test_same_request_reports_same_usage_and_content() -> None:
    messages: list[Any] = [{"role": "user", "content": "Compare AAPL and MSFT."}]

    async def body(server: SimServer) -> None:
        async with client(server) as oai:
            first = await oai.chat.completions.create(model="gpt-4o-mini", messages=messages)
            second = await oai.chat.completions.create(model="gpt-4o-mini", messages=messages)
            other = await oai.chat.completions.create(
                model="gpt-4o-mini", messages=[*messages, {"role": "user", "content": "And GOOG?"}]
            )
        assert first.usage == second.usage
        assert first.choices[0].message.content == second.choices[0].message.content
        assert first.id != second.id
        assert other.usage is not None and first.usage is not None
        assert other.usage.prompt_tokens > first.usage.prompt_tokens

    serve(body)


def test_seeded_random_failures_are_reproducible() -> None:
    settings = dataclasses.replace(BASE, ttft=0.0, per_token=0.0, failure_rate=0.5, seed=7)
    outcomes: list[list[int]] = []

    async def body(server: SimServer) -> None:
        statuses: list[int] = []
        async with client(server) as oai:
            for _ in range(12):
                try:
                    await oai.chat.completions.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
                    )
                    statuses.append(200)
                except openai.APIStatusError as exc:
                    statuses.append(exc.status_code)
        outcomes.append(statuses)
        stats = server.stats
        assert stats.requests == 12
        assert stats.succeeded + sum(stats.failed.values()) == 12

    serve(body, settings)
    serve(body, settings)
    assert outcomes[0] == outcomes[1]
    assert {200, 429, 500} <= set(outcomes[0])


def test_injected_http_failures() -> None:
    async def body(server: SimServer) -> None:
        async with client(server) as oai:
            with pytest.raises(openai.RateLimitError) as rate_limited:
                await oai.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi [sim:fail=429]"}]
                )
            assert rate_limited.value.response.headers["retry-after"] == "1"
            assert rate_limited.value.code == "rate_limit_exceeded"
            with pytest.raises(openai.InternalServerError) as server_error:
                await oai.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": "hi [sim:fail=500]"}],
                    stream=True,
                )
            assert server_error.value.status_code == 500
        assert server.stats.failed == {"429": 1, "500": 1}
        assert server.stats.succeeded == 0

    serve(body)


STALL = 30.0  # what a stalled request would hold things up for: the client timeout below


def test_injected_timeout_and_shutdown_does_not_hang() -> None:
    async def body(server: SimServer) -> None:
        async with client(server, timeout=0.3) as oai:
            with pytest.raises(openai.APITimeoutError):
                # the client's 0.3 s timeout ends the stalled request; were it broken, wait_for would end it
                # after 15 s with another error
                await asyncio.wait_for(oai.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi [sim:fail=timeout]"}]
                ), STALL / 2)

        # A request still stalled when the server closes must not hold the shutdown up.
        async with client(server, timeout=30.0) as oai:
            pending = asyncio.create_task(
                oai.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "[sim:fail=timeout] hi"}]
                )
            )
            await asyncio.sleep(0.2)
            # closing does not wait for the stalled request (the client would wait 30 s, aiohttp's
            # shutdown 60 s): a close that hung would be cut by wait_for and fail the test
            await asyncio.wait_for(server.close(), STALL / 2)
            with pytest.raises(openai.APIError):
                await pending
        assert server.stats.failed == {"timeout": 2}

    serve(body)


def test_injected_malformed_responses() -> None:
    async def body(server: SimServer) -> None:
        async with client(server) as oai:
            stream = await oai.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "Explain rates [sim:fail=malformed]"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            good: list[str] = []
            with pytest.raises(json.JSONDecodeError):
                async for chunk in stream:
                    good += [c.delta.content or "" for c in chunk.choices]
            assert len(good) == 2  # the role chunk and one content piece arrive intact
            with pytest.raises(json.JSONDecodeError):
                await oai.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "[sim:fail=malformed]"}]
                )
        assert server.stats.failed == {"malformed": 2}

    serve(body)


def test_ttft_directive_overrides_settings() -> None:
    async def body(server: SimServer) -> None:
        async with client(server) as oai:
            started = time.perf_counter()
            await oai.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "slow one [sim:ttft=0.3]"}]
            )
            assert time.perf_counter() - started >= 0.3

    serve(body)


def test_sync_client_and_plain_http_endpoints() -> None:
    def sync_calls(url: str) -> tuple[str, int]:
        with OpenAI(base_url=url, api_key="sim", max_retries=0) as oai:
            response = oai.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
            )
            with oai.chat.completions.create(
                model="gpt-4o",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            ) as stream:
                usage = [chunk.usage for chunk in stream if chunk.usage is not None]
            assert response.usage == usage[0]
            return response.choices[0].message.content or "", len(oai.models.list().data)

    async def body(server: SimServer) -> None:
        content, model_count = await asyncio.to_thread(sync_calls, server.url)
        assert content.startswith("Simulated answer to: hi")
        assert model_count == len(BASE.model_ids)
        root = server.url.removesuffix("/v1")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{root}/healthz") as resp:
                assert resp.status == 200
                assert await resp.json() == {"status": "ok"}
            async with http.get(f"{root}/models") as resp:  # the /v1 prefix is optional
                assert [m["id"] for m in (await resp.json())["data"]] == list(BASE.model_ids)
            async with http.post(f"{root}/chat/completions", data=b"not json") as resp:
                assert resp.status == 400
                assert "error" in await resp.json()
        assert server.app[STATS_KEY].failed == {"bad_request": 1}

    serve(body)


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        SimSettings(failure_kinds=("418",))
    with pytest.raises(ValueError):
        SimSettings(cached_fraction=1.5)


# --------------------------------------------------------------------------- real agno


def test_agno_agent_tool_run_metrics_match_server_usage() -> None:
    settings = dataclasses.replace(BASE, cached_fraction=0.25, reasoning_tokens=2)

    async def body(server: SimServer) -> None:
        model = sim_model(server)
        agent = Agent(model=model, tools=[get_stock_price])
        try:
            run_output = await agent.arun(QUESTION)
        finally:
            await close_models(model)
        assert run_output.status == RunStatus.completed
        assert [(t.tool_name, t.tool_args) for t in run_output.tools or []] == [
            ("get_stock_price", {"symbol": "AAPL"})
        ]
        assert str(run_output.content).startswith("Based on get_stock_price: AAPL is trading at 187.42")
        stats = server.stats
        assert stats.succeeded == 2  # tool call, then the answer
        metrics = run_output.metrics
        assert metrics is not None
        assert metrics.input_tokens == stats.prompt_tokens
        assert metrics.output_tokens == stats.completion_tokens
        assert metrics.total_tokens == stats.prompt_tokens + stats.completion_tokens
        assert metrics.cache_read_tokens == sum(u.cached_tokens for u in stats.usages) > 0
        assert metrics.reasoning_tokens == 4

    serve(body, settings)


def test_agno_agent_streamed_run_has_ttft() -> None:
    settings = dataclasses.replace(BASE, ttft=0.05, ttft_jitter=0.0)

    async def body(server: SimServer) -> None:
        model = sim_model(server)
        agent = Agent(model=model, tools=[get_stock_price])
        last: Any = None
        try:
            async for event in agent.arun(QUESTION, stream=True, yield_run_output=True):
                last = event
        finally:
            await close_models(model)
        assert isinstance(last, RunOutput)
        assert last.status == RunStatus.completed
        assert [t.tool_name for t in last.tools or []] == ["get_stock_price"]
        metrics = last.metrics
        assert metrics is not None
        assert metrics.time_to_first_token is not None
        assert metrics.time_to_first_token >= 0.05
        assert metrics.input_tokens == server.stats.prompt_tokens
        assert metrics.output_tokens == server.stats.completion_tokens

    serve(body, settings)


def test_agno_team_delegates_to_its_member() -> None:
    async def body(server: SimServer) -> None:
        member_model, leader_model = sim_model(server), sim_model(server)
        analyst = Agent(name="Stock Analyst", model=member_model, tools=[get_stock_price])
        team = Team(name="Trading Desk", members=[analyst], model=leader_model)
        try:
            run_output = await team.arun(QUESTION)
        finally:
            await close_models(member_model, leader_model)
        assert isinstance(run_output, TeamRunOutput)
        assert run_output.status == RunStatus.completed
        delegations = [t for t in run_output.tools or [] if t.tool_name == "delegate_task_to_member"]
        assert len(delegations) == 1
        assert delegations[0].tool_args == {"member_id": "stock-analyst", "task": QUESTION}
        assert len(run_output.member_responses) == 1
        member_run = run_output.member_responses[0]
        assert isinstance(member_run, RunOutput)
        assert [(t.tool_name, t.tool_args) for t in member_run.tools or []] == [
            ("get_stock_price", {"symbol": "AAPL"})
        ]
        assert "187.42" in str(member_run.content)
        assert server.stats.tool_calls == {"delegate_task_to_member": 1, "get_stock_price": 1}
        # The team's metrics cover the leader's own model calls; the member's are on its run.
        assert member_run.metrics is not None and run_output.metrics is not None
        total = member_run.metrics.input_tokens + run_output.metrics.input_tokens
        assert total == server.stats.prompt_tokens

    serve(body)
