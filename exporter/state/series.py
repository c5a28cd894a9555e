"""The sinks' durable series: loaded on start, written in the transaction that counts their runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import psycopg

from exporter.state.rows import SeriesRow
from exporter.state.schema import StateBase


class SeriesState(StateBase):
    async def load_series(self) -> list[SeriesRow]:
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                self._q("SELECT family, labels, total, count, buckets FROM {s}.series WHERE source = %s"),
                (self.source,),
            )
            rows = await cur.fetchall()
        return [
            SeriesRow(r["family"], tuple(json.loads(r["labels"])), r["total"], r["count"], tuple(r["buckets"]))
            for r in rows
        ]


    async def _write_series(self, conn: psycopg.AsyncConnection[dict[str, Any]], rows: Sequence[SeriesRow]) -> None:
        if not rows:
            return
        await conn.execute(
            self._q(
                "INSERT INTO {s}.series (source, family, labels, total, count, buckets)"
                " SELECT %s, f, l, t, c, string_to_array(b, ',')::bigint[]"
                " FROM unnest(%b::text[], %b::text[], %b::float8[], %b::int8[], %b::text[]) AS x(f, l, t, c, b)"
                " ON CONFLICT (source, family, labels) DO UPDATE SET total = EXCLUDED.total,"
                " count = EXCLUDED.count, buckets = EXCLUDED.buckets"
            ),
            (
                self.source,
                [r.family for r in rows],
                [r.key for r in rows],
                [float(r.total) for r in rows],
                [int(r.count) for r in rows],
                [",".join(map(str, r.buckets)) for r in rows],
            ),
        )
