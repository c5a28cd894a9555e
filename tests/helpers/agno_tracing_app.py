"""A real agno app with agno's own tracing on, run as a subprocess by the tests.

``agno.tracing.setup_tracing`` installs a *global* OpenTelemetry tracer provider and instruments
agno through OpenInference (monkeypatching its classes), so it must not run inside the pytest
process: the exporter's own spans and the other tests would be traced too. agno then writes every
span it records to ``<schema>.agno_spans`` (and one row per trace to ``agno_traces``) through its
``DatabaseSpanExporter`` — the tables the exporter's forwarder reads.

Usage: ``python agno_tracing_app.py DB_URL LLM_URL RUNS [--batch]`` (``--batch``: agno's
BatchSpanProcessor, which writes many spans per transaction, instead of one span at a time). Each
of the RUNS rounds fires one agent run (with a tool call) and one team run, as background runs.
"""

from __future__ import annotations

import argparse
import asyncio

from agno.tracing import setup_tracing
from opentelemetry import trace

from tests.helpers.agno_app import AgnoApp


async def main(db_url: str, llm_url: str, runs: int, batch: bool) -> None:
    app = AgnoApp(db_url, llm_url)
    setup_tracing(db=app.db, batch_processing=batch, schedule_delay_millis=200)
    try:
        agent = app.agent()
        team = app.team()
        for _ in range(runs):
            await app.run(agent)
            await app.run(team)
    finally:
        provider = trace.get_tracer_provider()
        shutdown = getattr(provider, "shutdown", None)
        if shutdown is not None:
            shutdown()  # flushes the batch processor: every span is in agno_spans before we exit
        await app.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("db_url")
    parser.add_argument("llm_url")
    parser.add_argument("runs", type=int)
    parser.add_argument("--batch", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.db_url, args.llm_url, args.runs, args.batch))
