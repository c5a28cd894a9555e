"""One table size, in a process of its own: ingest, memory, idle poll, and the SQL-aggregate baseline.

A fresh process per size, so its peak resident memory is what ingesting that many runs costs and
nothing else (``python -m benchmarks.atsize URL SCHEMA``, JSON on stdout). The exporter counts
the whole table (a first start with backfill, state in a fresh schema), is checked for exactness,
then polls an unchanged table: that is the idle poll, measured without and with the opt-in index
on ``updated_at`` (``agno-exporter create-index``). The baseline is what a query-exporter-style
setup runs on every scrape: the totals recomputed by SQL from agno's rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import psycopg

from exporter.commands.index import create_index, index_name
from exporter.ingest.runs_table import RunsTable

from .harness import FINAL, check_exact, make_service, median, memory_kib, timed

# What a query-exporter config would ask agno's table on every scrape to publish the same totals.
SQL_AGGREGATE = """
SELECT run_type, coalesce(run_data->>'agent_name', run_data->>'team_name', run_data->>'workflow_name') AS name,
       status, run_data->>'model' AS model, count(*) AS runs,
       sum((run_data->'metrics'->>'input_tokens')::bigint) AS input_tokens,
       sum((run_data->'metrics'->>'output_tokens')::bigint) AS output_tokens,
       sum((run_data->'metrics'->>'cache_read_tokens')::bigint) AS cache_read_tokens,
       sum((run_data->'metrics'->>'reasoning_tokens')::bigint) AS reasoning_tokens,
       sum((run_data->'metrics'->>'duration')::float8) AS duration_seconds
FROM ai.agno_runs WHERE status = ANY(%s) GROUP BY 1, 2, 3, 4
"""


async def measure(url: str, schema: str, idle_polls: int, aggregates: int) -> dict[str, Any]:
    service = make_service(url, schema, collector={"batch_size": 500})
    collector = service.collector
    await collector.start()
    seconds, result = await timed(collector.poll_once)
    mem = memory_kib()
    check_exact(service, url)
    open_rows: list[float] = []  # rows of agno's table the open runs' update read per idle poll (ingest.openruns)

    async def idle() -> float:
        times: list[float] = []
        trackers = [r.open for r in service.source.readers if isinstance(r, RunsTable)]
        rows0 = sum(t.rows_read for t in trackers)
        for _ in range(idle_polls):
            dt, again = await timed(collector.poll_once)
            if again.counted:
                raise AssertionError("the idle poll counted runs: the table changed under the benchmark")
            times.append(dt)
        open_rows.append((sum(t.rows_read for t in trackers) - rows0) / max(1, idle_polls))
        return median(times)

    idle_plain = await idle()
    # The opt-in index (`agno-exporter create-index`), dropped afterwards: the next size starts without.
    opts = service.source_db.opts
    t0 = time.perf_counter()
    await create_index(opts, "ai", "agno_runs")
    index_seconds = time.perf_counter() - t0
    idle_indexed = await idle()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(f"DROP INDEX ai.{index_name('agno_runs')}")
    agg: list[float] = []
    async with await psycopg.AsyncConnection.connect(url) as conn:
        for _ in range(aggregates):
            t0 = time.perf_counter()
            await (await conn.execute(SQL_AGGREGATE, (FINAL,))).fetchall()
            agg.append(time.perf_counter() - t0)
        row = await (await conn.execute("SELECT count(*), pg_total_relation_size('ai.agno_runs')"
                                        " FROM ai.agno_runs")).fetchone()
    await service.stop()
    assert row is not None
    return {
        "rows": int(row[0]), "table_bytes": int(row[1]), "counted": result.counted, "ingest_seconds": seconds,
        "rss_kib": mem["VmRSS"], "peak_rss_kib": mem["VmHWM"],
        "idle_poll_seconds": idle_indexed, "idle_poll_no_index_seconds": idle_plain,
        "create_index_seconds": index_seconds, "sql_aggregate_seconds": median(agg),
        "idle_open_rows_read": open_rows[1], "idle_open_rows_read_no_index": open_rows[0],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("schema", help="a state schema of its own (fresh: the exporter backfills)")
    p.add_argument("--idle-polls", type=int, default=20)
    p.add_argument("--aggregates", type=int, default=3)
    args = p.parse_args(argv)
    out = asyncio.run(measure(args.url, args.schema, args.idle_polls, args.aggregates))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
