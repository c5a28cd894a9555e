"""Model calls by the model, provider and role that made them; each provider's token meanings; TTFT.

Real agno writes every run (its OpenAI, Gemini and Claude classes against the simulated OpenAI
server and scripted Gemini/Anthropic servers), the exporter reads them from Postgres, and the
exported figures are compared with agno's own API (``aget_run_output``: ``metrics.details`` per
model and role, each message's metrics).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from agno.agent import Agent
from agno.db.postgres import PostgresDb
from agno.memory import MemoryManager
from agno.models.openai import OpenAIChat
from agno.session.summary import SessionSummaryManager
from pydantic import BaseModel

from exporter.probes.simllm import start_server
from exporter.probes.simplan import SimSettings
from exporter.records.parse import build_run_record
from exporter.records.runs import TOKEN_FIELDS, RunRecord
from exporter.records.values import provider_name
from exporter.sinks.prometheus.prices import PriceTable
from tests.helpers.provider_servers import AnthropicServer, GeminiServer, Reply, claude_model, gemini_model
from tests.helpers.scrape import Samples, scrape_text
from tests.helpers.support import ThreadLoop, close_all_model_clients, sqlalchemy_url
from tests.pg.test_collect_e2e import make_service, wait_counted


@pytest.fixture(scope="module")
def loop() -> Iterator[ThreadLoop]:
    tl = ThreadLoop()
    yield tl
    tl.close()


def get_price(symbol: str) -> str:
    """Get the current stock price for a ticker symbol."""
    return f"{symbol}: 123.45"


class Quote(BaseModel):
    symbol: str
    price: float


def records(db_url: str) -> dict[str, RunRecord]:
    with psycopg.connect(db_url, row_factory=psycopg.rows.dict_row) as conn:
        rows = conn.execute("SELECT * FROM ai.agno_runs").fetchall()
    return {r["run_id"]: build_run_record(r, r["run_data"]) for r in rows}


def details_of(out: Any) -> dict[tuple[str, str, str], dict[str, int]]:
    """agno's API: (role, model, provider) -> token_type -> n."""
    got: dict[tuple[str, str, str], dict[str, int]] = {}
    for role, entries in (out.metrics.details or {}).items():
        for d in entries:
            got[(role, d.id, provider_name(d.provider))] = {t: getattr(d, f) or 0 for f, t in TOKEN_FIELDS}
    return got


def calls_by_entry(record: RunRecord) -> dict[tuple[str, str, str], dict[str, int]]:
    got: dict[tuple[str, str, str], dict[str, int]] = {}
    for c in record.model_calls:
        sums = got.setdefault((c.model_role, c.model, c.provider), dict.fromkeys(t for _, t in TOKEN_FIELDS))
        for t in sums:
            sums[t] = (sums[t] or 0) + c.usage.get(t, 0)
    return got


async def run(agent: Agent, prompt: str, stream: bool = False) -> Any:
    if stream:
        last: Any = None
        async for event in agent.arun(prompt, stream=True, yield_run_output=True):
            last = event
        run_id, session_id = last.run_id, last.session_id
    else:
        out = await agent.arun(prompt)
        run_id, session_id = out.run_id, out.session_id
    return await agent.aget_run_output(run_id=run_id, session_id=session_id)


# agno's memory and reasoning managers call throw-away copies of their model; a copy dropped while
# the run goes on leaves its HTTP connection to the garbage collector, out of the test's reach.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_every_call_carries_the_model_and_role_that_made_it(db_url: str, sim_url: str, loop: ThreadLoop) -> None:
    failing = loop.run(start_server(SimSettings(ttft=0.01, per_token=0.001, seed=3, failure_rate=1.0,
                                                failure_kinds=("500",))))
    db = PostgresDb(db_url=sqlalchemy_url(db_url))
    models: list[Any] = []

    def m(model_id: str, url: str = sim_url) -> OpenAIChat:
        model = OpenAIChat(id=model_id, base_url=url, api_key="sim", max_retries=0)
        models.append(model)
        return model

    def agent(name: str, **kw: Any) -> Agent:
        return Agent(name=name, db=db, telemetry=False, tools=[get_price], user_id="u1", **kw)

    async def scenario() -> dict[str, Any]:
        outs: dict[str, Any] = {}
        try:
            # the example: gpt-4o answers HTTP 500, its fallback gpt-4o-mini answers
            fallback = agent("Fallback", model=m("gpt-4o", failing.url), fallback_models=[m("gpt-4o-mini")])
            outs["fallback"] = await run(fallback, "Price of AAPL?")
            outs["fallback_stream"] = await run(fallback, "Price of MSFT?", stream=True)
            outs["output"] = await run(agent("Output", model=m("gpt-4o"), output_model=m("gpt-4.1-nano")),
                                       "Price of AAPL?")
            outs["parser"] = await run(agent("Parser", model=m("gpt-4o"), parser_model=m("gpt-4.1-nano"),
                                             output_schema=Quote), "Price of AAPL?", stream=True)
            memory = MemoryManager(model=m("gpt-4.1-mini"), db=db)
            outs["memory"] = await run(agent("Memory", model=m("gpt-4o"), memory_manager=memory,
                                             update_memory_on_run=True), "I hold AAPL. Price of AAPL?")
            summary = SessionSummaryManager(model=m("gpt-4.1-mini"))
            outs["summary"] = await run(agent("Summary", model=m("gpt-4o"), session_summary_manager=summary),
                                        "Price of AAPL?")
            outs["reasoning"] = await run(agent("Reasoning", model=m("gpt-4o"), reasoning_model=m("o3-mini")),
                                          "Price of AAPL?")
        finally:
            await close_all_model_clients()
        return outs

    try:
        outs = asyncio.run(scenario())
        recs = records(db_url)
        for key, out in outs.items():
            record = recs[out.run_id]
            # every role agno recorded, and no other, with exactly agno's tokens per (role, model, provider)
            assert calls_by_entry(record) == {k: v for k, v in details_of(out).items() if any(v.values())}, key
            # the calls agno kept as messages are exactly the assistant messages with metrics
            messages = [msg for msg in out.messages or [] if msg.role == "assistant" and not msg.from_history
                        and (msg.metrics.input_tokens or msg.metrics.output_tokens)]
            assert [c.input_tokens for c in record.model_calls if c.source == "message"] == [
                msg.metrics.input_tokens for msg in messages], key

        by = {k: recs[o.run_id] for k, o in outs.items()}
        for key in ("fallback", "fallback_stream"):
            assert {(c.model, c.provider, c.model_role) for c in by[key].model_calls} == {
                ("gpt-4o-mini", "openai", "model")}, key
            assert by[key].model == "gpt-4o"  # agno's run model stays the primary
        assert by["fallback_stream"].streamed and not by["fallback"].streamed
        # the output model's answer replaced the model's final one: that call of gpt-4o is a details call
        assert [(c.model, c.model_role, c.source) for c in by["output"].model_calls] == [
            ("gpt-4o", "model", "message"), ("gpt-4.1-nano", "output_model", "message"),
            ("gpt-4o", "model", "details")]
        assert [(c.model, c.model_role, c.source) for c in by["parser"].model_calls][-1] == (
            "gpt-4.1-nano", "parser_model", "message")
        for key, role in (("memory", "memory_model"), ("summary", "session_summary_model"),
                          ("reasoning", "reasoning_model")):
            (call,) = [c for c in by[key].model_calls if c.model_role == role]
            assert (call.source, call.duration, call.time_to_first_token) == ("details", None, None), key
        # agno's "<thinking>" wrapper of the reasoning model's answer is a message, not a call
        assert [c.model_role for c in by["reasoning"].model_calls].count("model") == 2

        # exported: calls and per-call tokens on the model that made them, sums equal agno's details
        async def exported() -> Samples:
            service = make_service(db_url)
            await service.start()
            try:
                await wait_counted(service, len(recs))
                return Samples(await scrape_text(service.port))
            finally:
                await service.stop()

        s = asyncio.run(exported())
        assert s.sum("agno_model_calls_total", name="Fallback", model="gpt-4o") == 0
        assert s.sum("agno_model_calls_total", name="Fallback", model="gpt-4o-mini") == sum(
            len(by[k].model_calls) for k in ("fallback", "fallback_stream"))
        details: dict[tuple[str, str], int] = defaultdict(int)
        for out in outs.values():
            for (_, model, _), counts in details_of(out).items():
                for ttype in ("input", "output"):
                    details[(model, ttype)] += counts[ttype]
        members = [r for r in recs.values() if r.run_id not in {o.run_id for o in outs.values()}]
        assert not members  # no other runs: the sums below are the runs above
        assert s.group("gen_ai_client_token_usage_sum", "gen_ai_request_model", "gen_ai_token_type") == {
            k: float(v) for k, v in details.items() if v}
        assert s.group("agno_model_calls_total", "model_role") == {
            (role,): float(sum(1 for r in recs.values() for c in r.model_calls if c.model_role == role))
            for role in {c.model_role for r in recs.values() for c in r.model_calls}}
    finally:
        db.db_engine.dispose()
        loop.run(failing.close())


# What each provider says per call, in its own field names (the Gemini example first).
GEMINI_THINKING = {"promptTokenCount": 1000, "candidatesTokenCount": 6, "thoughtsTokenCount": 1900,
                   "totalTokenCount": 2906}
GEMINI_CACHED = {"promptTokenCount": 3000, "cachedContentTokenCount": 2000, "candidatesTokenCount": 40,
                 "thoughtsTokenCount": 300, "totalTokenCount": 3340}
CLAUDE_CACHED = {"input_tokens": 50, "output_tokens": 120, "cache_read_input_tokens": 4000,
                 "cache_creation_input_tokens": 1000}


def test_each_providers_token_meaning(db_url: str, loop: ThreadLoop) -> None:
    gemini = loop.run(GeminiServer([Reply(usage=GEMINI_THINKING), Reply(usage=GEMINI_CACHED)]).start())
    claude = loop.run(AnthropicServer([Reply(usage=CLAUDE_CACHED)]).start())
    openai = loop.run(start_server(SimSettings(ttft=0.01, per_token=0.001, seed=5, cached_fraction=0.5,
                                               reasoning_tokens=64)))
    db = PostgresDb(db_url=sqlalchemy_url(db_url))
    g_model, c_model = gemini_model(gemini), claude_model(claude)
    o_model = OpenAIChat(id="gpt-4.1-mini", base_url=openai.url, api_key="sim", max_retries=0)

    async def scenario() -> dict[str, Any]:
        try:
            def a(name: str, model: Any) -> Agent:
                return Agent(name=name, model=model, db=db, telemetry=False)

            return {
                "gemini": await run(a("GeminiAgent", g_model), "Think about AAPL."),
                "gemini_stream": await run(a("GeminiAgent", g_model), "Think about MSFT.", stream=True),
                "claude": await run(a("ClaudeAgent", c_model), "Summarise the filing.", stream=True),
                "openai": await run(a("OpenAIAgent", o_model), "Think about NVDA."),
            }
        finally:
            await close_all_model_clients()

    async def exported() -> Samples:
        service = make_service(db_url)
        await service.start()
        try:
            await wait_counted(service, 4)
            return Samples(await scrape_text(service.port))
        finally:
            await service.stop()

    try:
        outs = asyncio.run(scenario())
        s = asyncio.run(exported())
    finally:
        db.db_engine.dispose()
        loop.run(gemini.close())
        loop.run(claude.close())
        loop.run(openai.close())

    # agno stored each provider's own numbers (Gemini: thinking outside output and total) ...
    g = outs["gemini"].metrics
    assert (g.input_tokens, g.output_tokens, g.reasoning_tokens, g.total_tokens) == (1000, 6, 1900, 1006)
    c = outs["claude"].metrics
    assert (c.input_tokens, c.cache_read_tokens, c.cache_write_tokens) == (50, 4000, 1000)
    # ... which the exporter keeps exactly, per model
    expected_tokens: dict[tuple[str, str], int] = defaultdict(int)
    for out in outs.values():
        for (_, model, _), counts in details_of(out).items():
            for ttype, n in counts.items():
                expected_tokens[(model, ttype)] += n
    assert s.group("agno_tokens_total", "model", "token_type") == {
        k: float(v) for k, v in expected_tokens.items() if v}
    # thinking above the output, cache reads above Anthropic's input: each provider's meaning, no anomaly
    assert s.sum("agno_token_anomalies_total") == 0

    # cost: each provider's numbers billed its way (per million tokens, the price table's rates)
    prices = PriceTable()
    gp, cp, op = (prices.lookup(m) for m in ("gemini-2.5-flash", "claude-sonnet-4-6", "gpt-4.1-mini"))
    assert gp and cp and op and gp.cached_input and cp.cached_input and cp.cache_write and op.cached_input

    def gemini_usd(m: Any) -> float:  # Google bills thinking as output; cached tokens are part of the prompt
        fresh = m.input_tokens - m.cache_read_tokens
        return (fresh * gp.input + m.cache_read_tokens * gp.cached_input
                + (m.output_tokens + m.reasoning_tokens) * gp.output) / 1e6

    assert gemini_usd(g) == pytest.approx((1000 * 0.30 + 1906 * 2.50) / 1e6)  # the issue's $0.005065
    claude_usd = (c.input_tokens * cp.input + c.cache_read_tokens * cp.cached_input
                  + c.cache_write_tokens * cp.cache_write + c.output_tokens * cp.output) / 1e6
    o = outs["openai"].metrics
    assert o.cache_read_tokens and o.reasoning_tokens and o.reasoning_tokens <= o.output_tokens
    openai_usd = ((o.input_tokens - o.cache_read_tokens) * op.input + o.cache_read_tokens * op.cached_input
                  + o.output_tokens * op.output) / 1e6  # cached inside input, reasoning inside output
    estimated = s.group("agno_cost_usd_total", "name", source="estimated")
    assert estimated[("GeminiAgent",)] == pytest.approx(gemini_usd(g) + gemini_usd(outs["gemini_stream"].metrics),
                                                        rel=1e-12)
    assert estimated[("ClaudeAgent",)] == pytest.approx(claude_usd, rel=1e-12)
    assert estimated[("OpenAIAgent",)] == pytest.approx(openai_usd, rel=1e-12)

    # TTFT: one observation per streamed call, as agno measured it; run TTFT by stream
    streamed = [msg.metrics.time_to_first_token for out in outs.values() for msg in out.messages or []
                if msg.role == "assistant" and msg.metrics.duration is None and msg.metrics.time_to_first_token]
    assert len(streamed) == 2  # gemini_stream and claude
    assert s.sum("gen_ai_server_time_to_first_token_seconds_count") == len(streamed)
    assert s.sum("gen_ai_server_time_to_first_token_seconds_sum") == pytest.approx(sum(streamed), rel=1e-12)
    assert s.sum("agno_run_time_to_first_token_seconds_count", stream="true") == 2
    assert s.sum("agno_run_time_to_first_token_seconds_count", stream="false") == 2
    # non-streamed calls: their whole-response latency is the operation duration, as agno stored it
    durations = [msg.metrics.duration for out in outs.values() for msg in out.messages or []
                 if msg.role == "assistant" and msg.metrics.duration is not None]
    assert s.sum("gen_ai_client_operation_duration_seconds_count") == len(durations) == 2
