"""The state's schema and what every part of it shares: the tables (created or migrated by :meth:`StateBase.setup`),
the planner statistics kept fresh, whether the role may write.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

from exporter.db import Database

log = logging.getLogger("agno_exporter.state")

SCHEMA_VERSION = 1
ANALYZE_MIN_ROWS = 1000  # growth below this never triggers an ANALYZE
_GROWING = ("runs", "sessions", "forwarded_spans")  # the tables looked up by lists of ids



def not_writable(schema: str) -> str:
    """What to do when the exporter's role may not write its state (``check`` and ``collect`` say the same)."""
    return f"role may not create or write schema {schema!r}; point state.url (--state-url) at a Postgres it may write"



class StateNotWritable(psycopg.Error):
    """The state schema cannot be created or written by this role (permission denied, read-only server).

    A :class:`psycopg.Error`, so every retry loop that survives database errors survives this one; the
    collector counts it as ``reason="state"`` and says :func:`not_writable` once.
    """

    def __init__(self, schema: str, server_message: str) -> None:
        super().__init__(f"{not_writable(schema)} (the server said: {server_message.strip()})")

class StateBase:
    """The connection, the schema and the source (one agno database) every part of the state works in."""

    def __init__(self, db: Database, schema: str, source: str, traces: bool = False) -> None:
        self.db = db
        self.traces = traces  # when off, runs are not queued in the trace outbox
        self.source = source
        self.schema = schema
        self._s = sql.Identifier(schema)
        # table -> [rows at its last ANALYZE (planner's estimate), rows inserted since]
        self._growth: dict[str, list[float]] = {}

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(s=self._s)

    async def setup(self) -> None:
        """Create the schema and tables if missing (idempotent; safe with concurrent replicas)."""
        async with self.db.transaction() as conn:
            # Serialise concurrent setups of replicas starting together.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('agno-exporter-setup'))")
            for stmt in (
                "CREATE SCHEMA IF NOT EXISTS {s}",
                "CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value text NOT NULL)",
                "CREATE TABLE IF NOT EXISTS {s}.cursor (source text PRIMARY KEY,"
                " low_watermark double precision NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())",
                "CREATE TABLE IF NOT EXISTS {s}.runs (source text NOT NULL, run_id text NOT NULL,"
                " root_run_id text NOT NULL, status text NOT NULL, session_id text,"
                " counted_at double precision NOT NULL, traces_exported boolean NOT NULL DEFAULT false,"
                " PRIMARY KEY (source, run_id))",
                "CREATE INDEX IF NOT EXISTS runs_traces_pending ON {s}.runs (source, counted_at)"
                " WHERE NOT traces_exported",
                "CREATE TABLE IF NOT EXISTS {s}.series (source text NOT NULL, family text NOT NULL,"
                " labels text NOT NULL, total double precision NOT NULL, count bigint NOT NULL,"
                " buckets bigint[] NOT NULL, PRIMARY KEY (source, family, labels))",
                "CREATE TABLE IF NOT EXISTS {s}.sessions (source text NOT NULL, session_id text NOT NULL,"
                " run_type text NOT NULL, name text NOT NULL, tokens bigint NOT NULL, cost double precision"
                " NOT NULL, runs integer NOT NULL, first_seen double precision NOT NULL,"
                " last_seen double precision NOT NULL, PRIMARY KEY (source, session_id))",
                "CREATE INDEX IF NOT EXISTS sessions_recent ON {s}.sessions (source, last_seen)",
                "ALTER TABLE {s}.sessions ADD COLUMN IF NOT EXISTS disagreement boolean NOT NULL DEFAULT false",
                # cost is what providers reported; estimated_cost what the price table estimated for the
                # rest (states written before it existed start at 0 for the sessions they hold)
                "ALTER TABLE {s}.sessions ADD COLUMN IF NOT EXISTS estimated_cost double precision NOT NULL"
                " DEFAULT 0",
                # Runs nested in another run's row (records.build_row_runs) are read again through it;
                # a run's parent tells the trace outbox to wait for it (see pending_traces).
                "ALTER TABLE {s}.runs ADD COLUMN IF NOT EXISTS host_run_id text",
                "ALTER TABLE {s}.runs ADD COLUMN IF NOT EXISTS parent_run_id text",
                # The tokens agno's stored session totals should hold, by agno's own convention
                # (RunRecord.session_tokens); NULL for sessions first counted before this column existed.
                "ALTER TABLE {s}.sessions ADD COLUMN IF NOT EXISTS agno_tokens bigint",
                # agno's own spans (traces.forward_agno_spans): the dedupe and the outbox in one row per span
                "CREATE TABLE IF NOT EXISTS {s}.forwarded_spans (source text NOT NULL, span_id text NOT NULL,"
                " queued_at double precision NOT NULL, exported boolean NOT NULL DEFAULT false,"
                " PRIMARY KEY (source, span_id))",
                "CREATE INDEX IF NOT EXISTS forwarded_spans_pending ON {s}.forwarded_spans (source, queued_at)"
                " WHERE NOT exported",
                # Bounded ledger (exporter.ingest.retention): when a sweep first found agno no longer holding the run
                "ALTER TABLE {s}.runs ADD COLUMN IF NOT EXISTS missing_since double precision",
                "CREATE INDEX IF NOT EXISTS runs_missing ON {s}.runs (source, missing_since)"
                " WHERE missing_since IS NOT NULL",
                # forwarded spans that left the re-read window are forgotten by age (Outboxes.forget_spans)
                "CREATE INDEX IF NOT EXISTS forwarded_spans_queued ON {s}.forwarded_spans (source, queued_at)",
                "INSERT INTO {s}.meta VALUES ('schema_version', '1') ON CONFLICT DO NOTHING",
            ):
                await conn.execute(self._q(stmt))
        # A state written while autovacuum was off may never have been analyzed.
        for table, (rows, never) in (await self._estimates()).items():
            if never:
                await self.analyze(table)
            else:
                self._growth[table] = [rows, 0.0]

    async def _estimates(self) -> dict[str, tuple[float, bool]]:
        """The planner's row estimate per growing table, and whether it holds rows never analyzed."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "SELECT c.relname, c.reltuples,"
                " c.reltuples < 0 AND pg_relation_size(c.oid) > 0 AS never"  # -1: never analyzed (PG 14+)
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relname = ANY(%s)",
                (self.schema, list(_GROWING)),
            )
            return {r["relname"]: (max(0.0, float(r["reltuples"])), bool(r["never"]))
                    for r in await cur.fetchall()}

    async def analyze(self, table: str) -> None:
        """Refresh one state table's planner statistics. Postgres skips it, with a warning, unless this
        role owns the table; a failing statement is logged; either way the process goes on."""
        before = sum(self._growth.get(table, (0.0, 0.0)))
        try:
            async with self.db.transaction() as conn:
                await conn.execute(sql.SQL("ANALYZE {s}.{t}").format(s=self._s, t=sql.Identifier(table)))
        except psycopg.Error as exc:
            log.warning("cannot ANALYZE %s.%s (lookups may be slow): %s", self.schema, table, exc)
        # When skipped the planner's estimate did not move: the next try still waits for a doubling.
        estimate = (await self._estimates()).get(table, (0.0, False))[0]
        self._growth[table] = [max(estimate, before), 0.0]

    async def _grew(self, table: str, added: int) -> None:
        """Count rows inserted into ``table``; ANALYZE it once it has doubled since the last time."""
        if added <= 0:
            return
        g = self._growth.get(table)
        if g is None:  # setup() ran in another instance (or process): start from the planner's view
            g = self._growth[table] = [(await self._estimates()).get(table, (0.0, False))[0], 0.0]
        g[1] += added
        if g[1] >= max(ANALYZE_MIN_ROWS, g[0]):
            await self.analyze(table)

    async def load_meta(self, key: str) -> str | None:
        """A value the exporter keeps in its state (``meta``), per source; None when never saved."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(self._q("SELECT value FROM {s}.meta WHERE key = %s"), (f"{key}:{self.source}",))
            row = await cur.fetchone()
        return None if row is None else str(row["value"])

    async def save_meta(self, key: str, value: str) -> None:
        """Keep ``value`` under ``key`` (per source) in the state's ``meta``, replacing the last one."""
        async with self.db.transaction() as conn:
            await conn.execute(self._q("INSERT INTO {s}.meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE"
                                       " SET value = EXCLUDED.value"), (f"{key}:{self.source}", value))

    async def can_write(self) -> tuple[bool, str]:
        """Whether this role may create/write the state schema (for `check`)."""
        try:
            async with self.db.transaction() as conn:
                cur = await conn.execute(
                    "SELECT has_database_privilege(current_database(), 'CREATE') AS create_db,"
                    " (SELECT has_schema_privilege(%s, 'CREATE') FROM pg_namespace WHERE nspname = %s)"
                    " AS create_schema",
                    (self.schema, self.schema),
                )
                row = await cur.fetchone()
        except psycopg.Error as exc:
            return False, str(exc).strip()
        assert row is not None
        if row["create_schema"] or (row["create_schema"] is None and row["create_db"]):
            return True, f"may write its state in schema {self.schema!r}"
        return False, not_writable(self.schema)
