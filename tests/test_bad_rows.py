"""Malformed rows in agno's table: skipped with a counted reason, never blocking, good rows still exact."""

from __future__ import annotations

import asyncio
import json
import logging

import psycopg
import pytest
from scrape import scrape_until
from test_collect_e2e import make_service
from test_exactly_once import stored_tokens, write_runs

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
