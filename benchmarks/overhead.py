"""Overhead on the agent app: agent run latency with in-process instrumentation against without.

The sidecar adds nothing to the app's process: its runs cost what uninstrumented runs cost. The
alternative is in-process instrumentation, here OpenInference's agno instrumentor exporting to an
OTLP/HTTP backend through the usual batch span processor. The same agent (a tool call and two
model calls, agno persisting to Postgres, the simulated model answering without delay, so agno's
own work dominates) runs in alternating blocks with the instrumentation on and off, in one
process, so both see the same machine state. Run as ``python -m benchmarks.overhead DB_URL SINK_URL``
(needs the ``bench`` extra); JSON on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from exporter.config import AgentSpec, ModelSpec
from exporter.probes.agents import LlmTarget, agno_db, build_agent, close_models, quiet_agno_logs, runner_models
from exporter.probes.simllm import start_server
from exporter.probes.simplan import SimSettings

from .harness import median

PROMPT = "Add up the prices of NVDA and AMD."


class _Counter(SpanProcessor):
    """Proves the instrumentation is really on: counts the spans it ends."""

    def __init__(self) -> None:
        self.ended = 0

    def on_end(self, span: ReadableSpan) -> None:
        self.ended += 1


async def measure(db_url: str, sink_url: str, runs: int, rounds: int) -> dict[str, Any]:
    from openinference.instrumentation.agno import AgnoInstrumentor
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    quiet_agno_logs(logging.CRITICAL)
    sim = await start_server(SimSettings(ttft=0.0, ttft_jitter=0.0, per_token=0.0, seed=5))
    db = agno_db(db_url)
    agent = build_agent(AgentSpec(name="OverheadAgent", model=ModelSpec(id="gpt-4o-mini"), tools=("calculator",)),
                        db, LlmTarget.simulated(sim.url))
    provider = TracerProvider()
    counter = _Counter()
    provider.add_span_processor(counter)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=sink_url + "/v1/traces")))
    instrumentor = AgnoInstrumentor()
    times: dict[str, list[float]] = {"off": [], "on": []}
    spans_on = 0

    async def block(mode: str, n: int, keep: bool) -> None:
        nonlocal spans_on
        if mode == "on":
            instrumentor.instrument(tracer_provider=provider)
        before = counter.ended
        for _ in range(n):
            t0 = time.perf_counter()
            out = await agent.arun(PROMPT)
            dt = time.perf_counter() - t0
            if out.status.value != "COMPLETED":
                raise AssertionError(f"agent run ended {out.status}: {out.content}")
            if keep:
                times[mode].append(dt)
        if mode == "on":
            provider.force_flush()
            if keep:
                spans_on += counter.ended - before
            instrumentor.uninstrument()
        elif counter.ended != before:
            raise AssertionError("spans were produced with the instrumentation off")

    try:
        for mode in ("off", "on"):
            await block(mode, max(3, runs // 4), keep=False)  # warm: imports, connections, caches
        for r in range(rounds):
            for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
                await block(mode, runs, keep=True)
    finally:
        provider.shutdown()
        await close_models(runner_models(agent))
        db.db_engine.dispose()
        await sim.close()
    if not spans_on:
        raise AssertionError("the instrumentation produced no spans: it measured nothing")
    return {"off": median(times["off"]), "on": median(times["on"]), "runs": len(times["on"]),
            "spans_per_run": spans_on / len(times["on"])}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("db_url")
    p.add_argument("sink_url")
    p.add_argument("--runs", type=int, default=20, help="runs per block")
    p.add_argument("--rounds", type=int, default=4, help="pairs of blocks (on/off, alternating order)")
    args = p.parse_args(argv)
    json.dump(asyncio.run(measure(args.db_url, args.sink_url, args.runs, args.rounds)), sys.stdout)


if __name__ == "__main__":
    main()
