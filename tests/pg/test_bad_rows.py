"""Malformed rows in agno's table: skipped with a counted reason, never blocking, good rows still exact."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from typing import Any

import aiohttp
import psycopg
import pytest

from tests.e2e.test_exactly_once import close, exported_runs, exported_tokens, make_collector, stored_tokens, write_runs
from tests.helpers.agno_app import AgnoApp
from tests.helpers.scrape import scrape_until
from tests.pg.test_collect_e2e import make_service

BAD = {
    "null_data": "null",
    "array_data": "[1, 2]",
    "string_tokens": json.dumps({"agent_name": "A", "metrics": {"input_tokens": "many"}}),
    "negative": json.dumps({"agent_name": "A", "metrics": {"output_tokens": -3}}),
    "nan": '{"agent_name": "A", "metrics": {"duration": "NaN"}}',  # jsonb has no NaN: a string is what arrives
    "huge": json.dumps({"agent_name": "A", "content": "x" * 20_000_000, "metrics": {"input_tokens": 7}}),
    "control": json.dumps({"agent_name": "Evil\u0007\u001b[31mName", "metrics": {"input_tokens": 5}}),
}


def test_bad_rows_are_counted_and_skipped(db_url: str, sim_url: str) -> None:
    asyncio.run(write_runs(db_url, sim_url, 2))
    with psycopg.connect(db_url, autocommit=True) as conn:
        session_id = conn.execute("SELECT session_id FROM ai.agno_runs LIMIT 1").fetchone()[0]  # type: ignore[index]
        truth = stored_tokens(conn)
        for run_id, data in BAD.items():
            conn.execute(
                "INSERT INTO ai.agno_runs (run_id, session_id, run_type, agent_id, status, run_data, created_at,"
                " updated_at) VALUES (%s, %s, 'agent', 'a', %s, %s::jsonb, extract(epoch FROM now())::bigint,"
                " extract(epoch FROM now())::bigint)",
                (run_id, session_id, "COMPLETED", data),
            )
        conn.execute("INSERT INTO ai.agno_runs (run_id, session_id, run_type, status, run_data, created_at, updated_at)"
                     " VALUES ('weird_status', %s, 'agent', 'EXPLODED', '{}'::jsonb, 0, 0)", (session_id,))

    async def main() -> None:
        service = make_service(db_url)
        await service.start()
        try:
            # runs appear page by page; `up` turns 1 when the whole poll has finished
            s = await scrape_until(service.port,
                                   lambda s: s.sum("agno_runs_total") >= 4 and s.sum("agno_exporter_up") == 1)
            skipped = s.group("agno_exporter_rows_skipped_total", "reason")
            # (a row in an unknown status is not final: it is never a candidate, so neither counted nor skipped)
            assert skipped == {("run_data_not_object",): 2, ("wrong_type",): 2, ("negative",): 1}
            # the good rows, the huge one and the one with control characters are counted; numbers exact
            assert s.sum("agno_runs_total") == 4
            assert s.sum("agno_tokens_total") == truth + 7 + 5
            assert s.sum("agno_exporter_rows_sanitized_total", reason="control_chars") == 1
            assert all(name.isprintable() for name, in s.group("agno_runs_total", "name"))
            assert s.sum("agno_exporter_up") == 1
        finally:
            await service.stop()

    asyncio.run(main())


def test_inconsistent_token_numbers_are_counted_by_kind(db_url: str, sim_url: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    asyncio.run(write_runs(db_url, sim_url, 1))
    rows = {
        "mismatch": {"input_tokens": 10, "output_tokens": 5, "total_tokens": 99},
        "cache": {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15, "cache_read_tokens": 50},
    }
    with psycopg.connect(db_url, autocommit=True) as conn:
        session_id = conn.execute("SELECT session_id FROM ai.agno_runs LIMIT 1").fetchone()[0]  # type: ignore[index]
        for run_id, metrics in rows.items():
            data = {"agent_name": "Odd", "model": "gpt-4o-mini", "model_provider": "OpenAI", "metrics": metrics}
            conn.execute(
                "INSERT INTO ai.agno_runs (run_id, session_id, run_type, agent_id, status, run_data, created_at,"
                " updated_at) VALUES (%s, %s, 'agent', 'odd', 'COMPLETED', %s::jsonb,"
                " extract(epoch FROM now())::bigint, extract(epoch FROM now())::bigint)",
                (run_id, session_id, json.dumps(data)))

    async def main() -> None:
        service = make_service(db_url)
        await service.start()
        try:
            s = await scrape_until(service.port, lambda s: s.sum("agno_runs_total") >= 3)
            got = s.group("agno_token_anomalies_total", "kind", "provider", "model")
            assert got == {("total_mismatch", "openai", "gpt-4o-mini"): 1,
                           ("cache_exceeds_input", "openai", "gpt-4o-mini"): 1}
        finally:
            await service.stop()

    with caplog.at_level(logging.WARNING, logger="agno_exporter.collector"):
        asyncio.run(main())
    assert any("run mismatch" in r.getMessage() and "total_mismatch" in r.getMessage() for r in caplog.records)
    assert any("run cache" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------- numbers beyond their bounds

NOW = "extract(epoch FROM now())::bigint"
MS = "(extract(epoch FROM now()) * 1000)::bigint"  # a stamp in milliseconds: a unit error


def _run_data(metrics: dict[str, Any] | None = None, **extra: Any) -> str:
    return json.dumps({"agent_name": "Broken", "model": "gpt-4o-mini", "model_provider": "OpenAI",
                       "metrics": {"input_tokens": 5, "output_tokens": 2, **(metrics or {})}, **extra})


# run id -> (run_data, updated_at expression, expected reason): one of each kind a buggy provider
# integration (or a unit error) writes, for every number agno stores.
OUT_OF_RANGE: dict[str, tuple[str, str, str]] = {
    "tokens_1e300": (_run_data({"input_tokens": 1e300}), NOW, "tokens_out_of_range"),
    "tokens_int64": (_run_data({"cache_read_tokens": 2**63}), NOW, "tokens_out_of_range"),
    "tokens_details": (_run_data({"details": {"model": [{"id": "gpt-4o-mini", "output_tokens": 10**11}]}}), NOW,
                       "tokens_out_of_range"),
    "tokens_message": (_run_data(messages=[{"role": "assistant", "metrics": {"input_tokens": 1e20}}]), NOW,
                       "tokens_out_of_range"),
    "duration_1e308": (_run_data({"duration": 1e308}), NOW, "seconds_out_of_range"),
    "ttft_year": (_run_data({"time_to_first_token": 4e7}), NOW, "seconds_out_of_range"),
    "tool_duration": (_run_data(tools=[{"tool_name": "t", "metrics": {"duration": 1e300}}]), NOW,
                      "seconds_out_of_range"),
    "cost_1e308": (_run_data({"cost": 1e308}), NOW, "cost_out_of_range"),
    "details_cost": (_run_data({"details": {"model": [{"id": "gpt-4o-mini", "cost": 1e7}]}}), NOW,
                     "cost_out_of_range"),
    "tool_time_ms": (_run_data(tools=[{"tool_name": "t", "metrics": {"start_time": 1.7e12}}]), NOW,
                     "timestamp_out_of_range"),
    # (a model call: an assistant message with metrics; one without is no call, its time never read)
    "message_time_us": (_run_data(messages=[{"role": "assistant", "created_at": 1.7e15,
                                             "metrics": {"input_tokens": 5, "output_tokens": 2}}]), NOW,
                        "timestamp_out_of_range"),
    "updated_at_ms": (_run_data(), MS, "timestamp_out_of_range"),
    # jsonb keeps 1e400 as a 401-digit numeric: beyond float64, read as a whole number
    "beyond_float": ('{"agent_name": "Broken", "metrics": {"duration": 1e400}}', NOW, "seconds_out_of_range"),
}


def insert_runs(conn: psycopg.Connection[Any], session_id: str, rows: dict[str, tuple[str, str, str]]) -> None:
    for run_id, (data, updated_at, _) in rows.items():
        conn.execute(
            "INSERT INTO ai.agno_runs (run_id, session_id, run_type, agent_id, status, run_data, created_at,"
            f" updated_at) VALUES (%s, %s, 'agent', 'broken', 'COMPLETED', %s::jsonb, {NOW}, {updated_at})",
            (run_id, session_id, data))


def skip_lines(caplog: pytest.LogCaptureFixture, run_id: str) -> int:
    return sum(1 for r in caplog.records if r.getMessage().startswith(f"skipping run {run_id}:"))


async def readyz(port: int) -> int:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/readyz") as r:
        return r.status


def test_numbers_out_of_range_are_skipped_and_counting_goes_on(db_url: str, sim_url: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """One row per bound among real runs; the first commit also fails with a database fault (the
    whole page is retried) and the exporter is restarted: every bad row is skipped with its reason,
    counted and logged exactly once, the good runs are exact, and a fresh exporter becomes ready."""
    caplog.set_level(logging.DEBUG, logger="agno_exporter.collector")  # skips beyond ten a poll are at DEBUG
    asyncio.run(write_runs(db_url, sim_url, 3))
    with psycopg.connect(db_url, autocommit=True) as conn:
        session_id = conn.execute("SELECT session_id FROM ai.agno_runs LIMIT 1").fetchone()[0]  # type: ignore[index]
        truth = stored_tokens(conn)
        durations = conn.execute("SELECT sum((run_data->'metrics'->>'duration')::float8) FROM ai.agno_runs"
                                 ).fetchone()[0]  # type: ignore[index]
        insert_runs(conn, session_id, OUT_OF_RANGE)
    want_skipped = Counter(reason for _, _, reason in OUT_OF_RANGE.values())

    async def main() -> None:
        service = make_service(db_url)
        original = service.collector.state.commit_batch
        faults: list[int] = []

        async def fails_once(*args: Any, **kw: Any) -> Any:
            if not faults:
                faults.append(1)
                raise psycopg.OperationalError("server closed the connection unexpectedly (simulated)")
            return await original(*args, **kw)

        service.collector.state.commit_batch = fails_once  # type: ignore[method-assign]
        await service.start()
        try:
            s = await scrape_until(service.port, lambda s: s.sum("agno_runs_total") >= 3 and
                                   s.sum("agno_exporter_rows_skipped_total") >= len(OUT_OF_RANGE) and
                                   s.sum("agno_exporter_ready") == 1)
            assert faults == [1] and s.sum("agno_exporter_poll_errors_total", reason="database") == 1
            assert s.group("agno_exporter_rows_skipped_total", "reason") == {
                (reason,): n for reason, n in want_skipped.items()}
            assert s.sum("agno_runs_total") == 3
            assert s.sum("agno_tokens_total") == truth  # the good runs, to the token
            # the sums the bad rows would have made useless: the good runs' own, exactly
            assert s.sum("agno_run_duration_seconds_sum") == pytest.approx(durations)
            assert s.sum("agno_cost_usd_total", source="reported") == 0
            assert await readyz(service.port) == 200
        finally:
            await service.stop()
        # A restart neither re-reads nor re-logs the skipped rows.
        again = make_service(db_url)
        await again.start()
        try:
            s = await scrape_until(again.port, lambda s: s.sum("agno_exporter_ready") == 1)
            assert s.sum("agno_runs_total") == 3 and s.sum("agno_exporter_rows_skipped_total") == 0
            assert await readyz(again.port) == 200
        finally:
            await again.stop()

    asyncio.run(main())
    for run_id in OUT_OF_RANGE:
        assert skip_lines(caplog, run_id) == 1, run_id
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and r.getMessage().startswith("skipping")]
    assert len(warned) == 10  # the rest of the poll's skips: one summary line
    assert sum("3 more runs skipped in this poll" in r.getMessage() for r in caplog.records) == 1


# ---------------------------------------------------------------- a run the state cannot hold


def skipped_by_reason(c: Any) -> dict[str, float]:
    return {s.labels["reason"]: s.value for m in c.m.rows_skipped.collect() for s in m.samples
            if s.name.endswith("_total") and s.value}


@pytest.mark.parametrize("batch_size", [500, 2])
def test_a_run_the_state_refuses_is_isolated_and_the_page_counted(db_url: str, sim_url: str, batch_size: int,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The state refuses one session's runs for a reason of their own (its token sum would pass
    bigint: a state primed near the limit stands in for a session that reached it): the page is
    committed in parts, those runs are skipped as state_rejected, every other run is counted
    exactly once, the poll succeeds and the next one has nothing left to do."""
    caplog.set_level(logging.WARNING, logger="agno_exporter.collector")

    async def write() -> None:
        app = AgnoApp(db_url, sim_url)
        try:
            agent = app.agent()
            for session in ("full", "ok-1", "full", "ok-2", "ok-3"):
                await app.run(agent, session_id=session)
        finally:
            await app.close()

    asyncio.run(write())
    with psycopg.connect(db_url, autocommit=True) as conn:
        truth = stored_tokens(conn, "session_id <> 'full'")
        refused = {r[0] for r in conn.execute("SELECT run_id FROM ai.agno_runs WHERE session_id = 'full'")}

    async def main() -> None:
        c = make_collector(db_url, batch_size=batch_size)
        try:
            await c.state.setup()
            async with c.state.db.transaction() as conn:
                await conn.execute(
                    "INSERT INTO agno_exporter.sessions (source, session_id, run_type, name, tokens, cost, runs,"
                    " first_seen, last_seen) VALUES (%s, 'full', 'agent', 'BackgroundMetricsAgent', %s, 0, 1, 0, 0)",
                    (c.state.source, 2**63 - 10))
            result = await c.poll_once()
            assert (result.counted, result.skipped) == (3, 2)
            assert exported_runs(c) == 3 and exported_tokens(c) == truth
            assert skipped_by_reason(c) == {"state_rejected": 2}
            again = await c.poll_once()
            assert (again.counted, again.skipped) == (0, 0)
        finally:
            await close(c)
        fresh = make_collector(db_url)  # what a restart loads: the same totals, nothing recounted
        try:
            await fresh.start()
            assert exported_runs(fresh) == 3 and exported_tokens(fresh) == truth
            assert (await fresh.poll_once()).counted == 0
        finally:
            await close(fresh)

    asyncio.run(main())
    for run_id in refused:
        assert skip_lines(caplog, run_id) == 1
        line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith(f"skipping run {run_id}"))
        assert "the state refused it: bigint out of range" in line
