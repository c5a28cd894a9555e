"""What an operator reads in the log: backfill progress only when there is progress (with the rate
and what is left), and one summary line per poll for sessions whose stored totals disagree.

Time is an injected clock that advances a fixed step each time the collector reads it, so what is
logged does not depend on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from exporter.db import ConnectOptions, Database
from exporter.ingest.collector import RunCollector
from exporter.ingest.poll import CollectorOptions
from exporter.ingest.readers import AgnoSource
from exporter.sinks.prometheus import families as prom
from exporter.sinks.prometheus.sink import PrometheusSink
from exporter.state.store import PostgresState
from tests.e2e.test_exactly_once import close, multiply_runs, write_runs
from tests.helpers.agno_app import AgnoApp


class StepClock:
    """Unix time that moves ``step`` seconds every time it is read."""

    def __init__(self, start: float, step: float) -> None:
        self.t = start
        self.step = step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def collector(db_url: str, clock: StepClock, **opts: Any) -> RunCollector:
    source = AgnoSource(Database(ConnectOptions(db_url, read_only=True)), "ai", "agno_runs", "agno_sessions")
    state = PostgresState(Database(ConnectOptions(db_url)), "agno_exporter", source.key)
    return RunCollector(source, state, PrometheusSink(prom.new_store(300)),
                        prom.SelfMetrics(CollectorRegistry(), "test"),
                        CollectorOptions(**opts), clock=clock)


def lines(caplog: pytest.LogCaptureFixture, prefix: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]


def test_backfill_progress_only_when_runs_are_counted(db_url: str, sim_url: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agno_exporter.collector")
    asyncio.run(write_runs(db_url, sim_url, 2))
    multiply_runs(db_url, 29)  # 60 runs
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("ANALYZE ai.agno_runs")  # the planner's estimate is what "left" is read from

    async def main() -> None:
        c = collector(db_url, StepClock(1e9, 3.0), batch_size=5)  # 12 pages, 3 s a clock read
        try:
            assert (await c.poll_once()).counted == 60
        finally:
            await close(c)
        progress = lines(caplog, "backfill of ai.agno_runs: ")
        assert 2 <= len(progress) < 12  # not one a page: at most every 10 s, each with more runs counted
        counted = [int(re.search(r": ([\d,]+) runs counted", line)[1].replace(",", "")) for line in progress]  # type: ignore[index]
        assert counted == sorted(set(counted)) and counted[0] > 0
        assert all(re.search(r"\([\d.,]+ runs/s\)", line) for line in progress)
        assert all(re.search(r"about [\d,]+ runs left to list \(planner's estimate\)", line) for line in progress)
        done = lines(caplog, "backfill of ai.agno_runs finished")
        assert len(done) == 1 and "60 runs counted" in done[0]

        # A process killed before it saved its first watermark backfills again: every run is known,
        # so there is no progress to report, only the one closing line.
        caplog.clear()
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("DELETE FROM agno_exporter.cursor")
        again = collector(db_url, StepClock(2e9, 3.0), batch_size=5)
        try:
            assert (await again.poll_once()).counted == 0
        finally:
            await close(again)
        assert lines(caplog, "backfill of ai.agno_runs: ") == []
        assert len(lines(caplog, "backfill of ai.agno_runs finished")) == 1

    asyncio.run(main())


def test_disagreeing_sessions_are_summarised_once_a_poll(db_url: str, sim_url: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """agno's stored session totals altered for five sessions (malformed input): one WARNING line names
    how many and three of them; each session's numbers are at DEBUG; each is counted once."""
    caplog.set_level(logging.DEBUG, logger="agno_exporter.collector")
    sessions = [f"session-{i}" for i in range(6)]

    async def write() -> None:
        app = AgnoApp(db_url, sim_url)
        try:
            agent = app.agent()
            for sid in sessions:
                await app.run(agent, session_id=sid)
        finally:
            await app.close()

    asyncio.run(write())
    with psycopg.connect(db_url, autocommit=True) as conn:
        for sid in sessions[:5]:
            conn.execute("UPDATE ai.agno_sessions SET session_data = jsonb_set(session_data::jsonb,"
                         " '{session_metrics,input_tokens}', %s::jsonb) WHERE session_id = %s",
                         (json.dumps(10**6), sid))

    async def main() -> None:
        c = collector(db_url, StepClock(1e9, 10.0))  # a poll later is past session_settle
        try:
            await c.poll_once()
            await c.poll_once()
            await c.poll_once()
            got = {s.labels["name"]: s.value for m in c.sink.store.collect() for s in m.samples
                   if s.name == "agno_session_disagreements_total"}
            assert got == {"BackgroundMetricsAgent": 5}
        finally:
            await close(c)

    asyncio.run(main())
    summary = [r for r in caplog.records if "sessions whose stored session_metrics disagree" in r.getMessage()]
    assert len(summary) == 1 and summary[0].levelno == logging.WARNING
    message = summary[0].getMessage()
    assert message.startswith("5 sessions") and sum(sid in message for sid in sessions[:5]) == 3
    detail = [r for r in caplog.records if r.levelno == logging.DEBUG and "session_metrics claim" in r.getMessage()]
    assert sorted(sid for r in detail for sid in sessions if sid in r.getMessage()) == sorted(sessions[:5])
