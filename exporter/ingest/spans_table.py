"""agno's own tracing table (``agno.tracing``: one row per span): candidates and whole rows, read like the runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from exporter.db import Database
from exporter.ingest.source import Snapshot, take_snapshot


@dataclass(frozen=True, slots=True)
class SpanCandidate:
    span_id: str
    created_at: str


SPAN_COLUMNS = ("span_id", "trace_id", "parent_span_id", "name", "span_kind", "status_code", "status_message",
                "start_time", "end_time", "attributes", "created_at")


class SpansTable:
    """agno's own tracing (``agno.tracing.setup_tracing``, AgentOS ``tracing=True``): one row per span
    in ``<schema>.<spans_table>``.

    agno's ``DatabaseSpanExporter`` inserts each span once (plain INSERT, ``span_id`` is the primary
    key) and never updates it; a batch of spans of one trace is one transaction. ``created_at`` is
    ISO 8601 text in UTC (``datetime.now(timezone.utc).isoformat()``), stamped by the app when the
    span is converted, just before its insert transaction starts; agno indexes it. So it plays the
    part ``updated_at`` plays for runs, with the same out-of-order commits (see :mod:`exporter.ingest.cursor`).
    """

    def __init__(self, db: Database, schema: str, spans_table: str, traces_table: str) -> None:
        self.db = db
        self.schema = schema
        self.spans_table = spans_table
        self.traces_table = traces_table
        self.key = f"{schema}.{spans_table}"
        self.written = (schema, spans_table)  # agno inserts its spans there (exporter.ingest.cursor)
        self._spans = sql.Identifier(schema, spans_table)
        self._cols = sql.SQL(", ").join(sql.Identifier(c) for c in SPAN_COLUMNS)

    async def snapshot(self) -> Snapshot:
        return await take_snapshot(self.db, [self.written])

    async def tables(self) -> list[str]:
        """Which of agno's two tracing tables exist (for `check`)."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s AND table_name = ANY(%s)"
                " ORDER BY table_name",
                (self.schema, [self.traces_table, self.spans_table]),
            )
            return [r["table_name"] for r in await cur.fetchall()]

    async def candidates(self, since: str, after: tuple[str, str] | None, limit: int) -> list[SpanCandidate]:
        """Spans with ``created_at >= since`` in (created_at, span_id) order after ``after``.

        ``since`` is whole seconds without a zone (``2025-01-31T12:00:05``): a prefix of every
        ``created_at`` of that second, so the text comparison (which uses agno's index) keeps every
        span of that second and later, whether or not agno wrote a fraction.
        """
        query = sql.SQL(
            "SELECT span_id, created_at FROM {t} WHERE created_at >= %(since)s {after}"
            " ORDER BY created_at, span_id LIMIT %(limit)s"
        ).format(
            t=self._spans,
            after=sql.SQL("AND (created_at, span_id) > (%(ac)s, %(ai)s)" if after else ""),
        )
        params: dict[str, Any] = {"since": since, "limit": limit}
        if after:
            params["ac"], params["ai"] = after
        async with self.db.transaction() as conn:
            cur = await conn.execute(query, params)
            rows = await cur.fetchall()
        return [SpanCandidate(str(r["span_id"]), str(r["created_at"])) for r in rows]

    async def backfill_page(self, after: str | None, limit: int) -> list[SpanCandidate]:
        """All spans by primary key (an index range scan per page, whatever the table size)."""
        query = sql.SQL("SELECT span_id, created_at FROM {t} {after} ORDER BY span_id LIMIT %(limit)s").format(
            t=self._spans, after=sql.SQL("WHERE span_id > %(after)s" if after is not None else ""))
        async with self.db.transaction() as conn:
            cur = await conn.execute(query, {"after": after, "limit": limit})
            rows = await cur.fetchall()
        return [SpanCandidate(str(r["span_id"]), str(r["created_at"])) for r in rows]

    async def fetch(self, span_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Whole rows of the given spans."""
        if not span_ids:
            return []
        query = sql.SQL("SELECT {cols} FROM {t} WHERE span_id = ANY(%(ids)b)").format(cols=self._cols, t=self._spans)
        async with self.db.transaction() as conn:
            cur = await conn.execute(query, {"ids": list(span_ids)})
            return await cur.fetchall()
