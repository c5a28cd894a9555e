"""`agno-exporter create-index`: the opt-in index on agno's runs table, built concurrently, idempotent."""

from __future__ import annotations

import psycopg
import pytest

from exporter.commands.cli import main


def test_create_index_is_idempotent_and_serves_the_candidate_query(db_url: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA ai")
        # agno's columns that matter here (agno creates the real table on first use)
        conn.execute("CREATE TABLE ai.agno_runs (run_id varchar PRIMARY KEY, status varchar, updated_at bigint,"
                     " run_data jsonb)")
        conn.execute("INSERT INTO ai.agno_runs SELECT 'r' || i, 'COMPLETED', i, '{}' FROM generate_series(1, 20000) i")
        conn.execute("ANALYZE ai.agno_runs")
    assert main(["create-index", "--db-url", db_url]) == 0
    assert "created index ai.agno_runs_exporter_updated_at" in capsys.readouterr().out
    assert main(["create-index", "--db-url", db_url]) == 0
    assert "exists already" in capsys.readouterr().out
    with psycopg.connect(db_url) as conn:
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT run_id, updated_at, status FROM ai.agno_runs WHERE status = ANY(%s)"
            " AND updated_at >= %s ORDER BY updated_at, run_id LIMIT 500", (["COMPLETED"], 19_990)).fetchall())
    assert "agno_runs_exporter_updated_at" in plan


def test_create_index_covers_every_runs_table_the_collector_reads(db_url: str, sim_url: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    from tests.e2e.test_tables import COOKBOOK, write_cookbook_app, write_default_app

    asyncio.run(write_default_app(db_url, sim_url))
    asyncio.run(write_cookbook_app(db_url, sim_url))
    assert main(["create-index", "--db-url", db_url]) == 0
    out = capsys.readouterr().out
    assert "created index ai.agno_runs_exporter_updated_at on ai.agno_runs" in out
    assert f"created index ai.{COOKBOOK}_runs_exporter_updated_at on ai.{COOKBOOK}_runs" in out
