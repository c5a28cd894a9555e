"""Benchmarks of agno-exporter against the alternatives, measured side by side in one run.

``python -m benchmarks`` captures real agno runs (agno 3.x agents and teams on the simulated
model), multiplies them into a Postgres table of realistic size with COPY, and measures ingest,
idle poll, freshness, scrape, memory and the in-process instrumentation overhead, each next to a
baseline measured in the same run on the same machine. See ``benchmarks.__main__`` for the list.
"""
