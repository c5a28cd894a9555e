"""Durable state: which runs are counted, the totals, the cursors and the trace outboxes.

Lives in an exporter-owned schema (default ``agno_exporter``) of a Postgres database — agno's own
database by default, or another one (``state.url``) when the exporter's role may only read agno's.

One batch is one transaction: insert the run ids (the primary key makes a second insert a no-op,
so a run is counted at most once, across restarts and kill -9), update the session totals, and
write the new values of every series the batch changed. Memory is updated only after the commit.

Lists go to Postgres as binary arrays (``%b``): in text format psycopg escapes every element with
a regular expression, which was a third of the collector's CPU when counting a large table.

The state keeps its own tables' planner statistics fresh: lookups like ``source = %s AND run_id =
ANY(ids)`` need them. Without statistics Postgres takes the one-valued ``source`` for a selective
column and reads every row of the source per lookup, which made a backfill quadratic (140 ms per
lookup at 10^5 runs). autovacuum may be off or a minute behind a backfill, so each table is
analyzed when it has grown by as many rows as it had at its last ANALYZE (a handful of times over a
table's life, a logarithmic number during a backfill).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from exporter.db import Database
from exporter.records.runs import RunRecord
from exporter.state.rows import SeriesRow, Staged, StageDisagreements, StageRuns, TopSession

SCHEMA_VERSION = 1
ANALYZE_MIN_ROWS = 1000  # growth below this never triggers an ANALYZE
_GROWING = ("runs", "sessions", "forwarded_spans")  # the tables looked up by lists of ids

log = logging.getLogger("agno_exporter.state")


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


@dataclass(frozen=True, slots=True)
class Counted:
    """A run as the state knows it."""

    run_id: str
    root_run_id: str
    status: str
    session_id: str | None = None
    host_run_id: str | None = None  # the run whose row holds this run's copy (records.build_row_runs)
    parent_run_id: str | None = None
    parent_row_run_id: str | None = None  # the row to read the parent by; None while it is not counted

    @property
    def row_run_id(self) -> str:
        """The run id to read this run's row by."""
        return self.host_run_id or self.run_id


@dataclass(frozen=True, slots=True)
class BatchResult:
    new_records: list[RunRecord]
    new_sessions: list[tuple[str, str]]  # (run_type, name) of sessions seen for the first time
    staged: Staged  # what the sinks made of the batch: apply it (the commit is done)
    # (run id, reason) of the skips recorded by this batch: a skip already recorded (by an earlier
    # process or a replica) is not in it, so each skip is counted and logged once
    new_skipped: list[tuple[str, str]] = field(default_factory=list)




class PostgresState:
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

    # --- reading -------------------------------------------------------------------------------

    async def load_cursor(self, reader: str | None = None) -> float:
        """The low watermark of one reader (agno 3.x's is named like the state's source: older states)."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                self._q("SELECT low_watermark FROM {s}.cursor WHERE source = %s"), (reader or self.source,)
            )
            row = await cur.fetchone()
        return float(row["low_watermark"]) if row else 0.0

    async def save_cursor(self, low: float, reader: str | None = None) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(
                self._q(
                    "INSERT INTO {s}.cursor (source, low_watermark) VALUES (%s, %s) ON CONFLICT (source)"
                    " DO UPDATE SET low_watermark = EXCLUDED.low_watermark, updated_at = now()"
                ),
                (reader or self.source, low),
            )

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

    async def known(self, run_ids: Sequence[str]) -> set[str]:
        """Which of these runs were already counted (or skipped as malformed)."""
        if not run_ids:
            return set()
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                self._q("SELECT run_id FROM {s}.runs WHERE source = %s AND run_id = ANY(%b)"),
                (self.source, list(run_ids)),
            )
            return {r["run_id"] for r in await cur.fetchall()}

    async def roots(self, run_ids: Sequence[str]) -> dict[str, str]:
        if not run_ids:
            return {}
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                self._q("SELECT run_id, root_run_id FROM {s}.runs WHERE source = %s AND run_id = ANY(%b)"),
                (self.source, list(run_ids)),
            )
            return {r["run_id"]: r["root_run_id"] for r in await cur.fetchall()}

    async def top_sessions(self, since: float, limit: int) -> list[TopSession]:
        """The ``limit`` sessions with most tokens seen since ``since``: (session id, run type, name,
        tokens, reported cost, estimated cost)."""
        if limit <= 0:
            return []
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                self._q(
                    "SELECT session_id, run_type, name, tokens, cost, estimated_cost FROM {s}.sessions"
                    " WHERE source = %s AND last_seen >= %s ORDER BY tokens DESC, session_id LIMIT %s"
                ),
                (self.source, since, limit),
            )
            return [TopSession(r["session_id"], r["run_type"], r["name"], r["tokens"], r["cost"], r["estimated_cost"])
                    for r in await cur.fetchall()]

    async def sessions_by_id(self, session_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not session_ids:
            return {}
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                self._q("SELECT session_id, run_type, name, tokens, agno_tokens, runs, disagreement FROM {s}.sessions"
                        " WHERE source = %s AND session_id = ANY(%b)"),
                (self.source, list(session_ids)),
            )
            return {r["session_id"]: r for r in await cur.fetchall()}

    async def flag_disagreements(self, session_ids: Sequence[str], stage: StageDisagreements) -> Staged:
        """Mark sessions as disagreeing and write what ``stage`` makes of the newly marked ones in the same
        transaction; returns that, to apply once this returned (the commit is done)."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                self._q("UPDATE {s}.sessions SET disagreement = true WHERE source = %s AND session_id = ANY(%b)"
                        " AND NOT disagreement RETURNING session_id, run_type, name"),
                (self.source, list(session_ids)),
            )
            newly = [(r["session_id"], r["run_type"], r["name"]) for r in await cur.fetchall()]
            staged = stage(newly)
            await self._write_series(conn, staged.rows())
        return staged

    async def session_totals(self, session_id: str) -> dict[str, Any] | None:
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                self._q("SELECT * FROM {s}.sessions WHERE source = %s AND session_id = %s"),
                (self.source, session_id),
            )
            return await cur.fetchone()

    # --- the batch -----------------------------------------------------------------------------

    async def commit_batch(
        self,
        records: Sequence[RunRecord],
        roots: dict[str, str],
        skipped: Sequence[tuple[str, str]],
        now: float,
        stage: StageRuns,
        in_table: set[str] | None = None,
        costs: Mapping[str, tuple[float, float]] | None = None,
    ) -> BatchResult:
        """Count ``records`` (and mark ``skipped`` (run_id, reason) as seen) in one transaction, with the rows
        of what ``stage`` makes of the runs really counted (see :mod:`exporter.state.rows`).

        ``records`` hold each run id once. ``in_table`` are the ids of those that have a row of their
        own in agno's table (all of them when None): only those count towards a session's number of
        runs, which the session check compares with agno's rows. A nested copy met after its run was
        counted from its own row takes back what that row claimed for agno's session totals
        (:attr:`RunRecord.session_tokens`): agno counts such a run through its workflow only.

        ``costs``: run id -> (reported, estimated) US dollars, what the run adds to
        ``agno_cost_usd_total`` (:func:`exporter.sinks.prometheus.families.cost_of`), summed into its session; a run
        missing from it adds its reported cost only.

        Raises what psycopg raises; nothing is written then. A value the state cannot hold (e.g.
        ``psycopg.DataError`` "bigint out of range") belongs to a record: the collector commits the
        page in parts to find it (:meth:`exporter.ingest.collector.RunCollector._commit`).
        """
        async with self.db.transaction() as conn:
            new_ids: set[str] = set()
            if records:
                cur = await conn.execute(
                    self._q(
                        "INSERT INTO {s}.runs (source, run_id, root_run_id, status, session_id, counted_at,"
                        " host_run_id, parent_run_id, traces_exported) SELECT %s, *, %s FROM unnest(%b::text[],"
                        " %b::text[], %b::text[], %b::text[], %b::float8[], %b::text[], %b::text[])"
                        " ON CONFLICT DO NOTHING RETURNING run_id"
                    ),
                    (
                        self.source,
                        not self.traces,
                        [r.run_id for r in records],
                        [roots.get(r.run_id, r.run_id) for r in records],
                        [r.status for r in records],
                        [r.session_id for r in records],
                        [float(now)] * len(records),
                        [r.host_run_id for r in records],
                        [r.parent_run_id for r in records],
                    ),
                )
                new_ids = {r["run_id"] for r in await cur.fetchall()}
            new_skipped: list[tuple[str, str]] = []
            # Nested copies of runs that also have rows of their own and were counted from those rows:
            # they take back the row's claim, once (the run is then marked as held by this host).
            again = [r for r in records if r.host_run_id and r.run_id not in new_ids
                     and (in_table is None or r.run_id in in_table)]
            from_rows: set[str] = set()
            if again:
                cur = await conn.execute(
                    self._q("UPDATE {s}.runs r SET host_run_id = x.host FROM unnest(%b::text[], %b::text[])"
                            " AS x(id, host) WHERE r.source = %s AND r.run_id = x.id AND r.host_run_id IS NULL"
                            " RETURNING r.run_id"),
                    ([r.run_id for r in again], [r.host_run_id for r in again], self.source))
                from_rows = {r["run_id"] for r in await cur.fetchall()}
            if skipped:
                # Malformed rows are remembered so they are neither re-parsed every poll nor counted later.
                cur = await conn.execute(
                    self._q(
                        "INSERT INTO {s}.runs (source, run_id, root_run_id, status, counted_at, traces_exported)"
                        " SELECT %s, id, id, 'SKIPPED:' || reason, %s, true"
                        " FROM unnest(%b::text[], %b::text[]) AS t(id, reason) ON CONFLICT DO NOTHING"
                        " RETURNING run_id, substr(status, 9) AS reason"
                    ),
                    (self.source, now, [s[0] for s in skipped], [s[1] for s in skipped]),
                )
                new_skipped = [(r["run_id"], r["reason"]) for r in await cur.fetchall()]
            fresh = [r for r in records if r.run_id in new_ids]
            taken_back = [r for r in records if r.run_id in from_rows]
            new_sessions = await self._sessions(conn, fresh, now, costs or {}, in_table, taken_back)
            staged = stage(fresh, new_sessions)
            await self._write_series(conn, staged.rows())
        await self._grew("runs", len(new_ids) + len(new_skipped))
        await self._grew("sessions", len(new_sessions))
        return BatchResult(fresh, new_sessions, staged, new_skipped)

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

    async def _sessions(
        self, conn: psycopg.AsyncConnection[dict[str, Any]], records: Sequence[RunRecord], now: float,
        costs: Mapping[str, tuple[float, float]],
        in_table: set[str] | None = None, taken_back: Sequence[RunRecord] = (),
    ) -> list[tuple[str, str]]:
        """Add the runs to their sessions' totals; return (run_type, name) of sessions that are new.

        ``runs`` counts the runs with rows of their own (``in_table``), ``agno_tokens`` what agno adds
        to its stored totals: a run counted from a nested copy adds nothing there, and ``taken_back``
        (nested copies of runs counted from their own rows) take back what those rows added.
        """
        agg: dict[str, list[Any]] = {}
        for back, r in (*((False, r) for r in records), *((True, r) for r in taken_back)):
            if not r.session_id:
                continue
            a = agg.get(r.session_id)
            if a is None:
                # A session is named after its top-level run (the member runs of a team share it).
                a = agg[r.session_id] = [r.run_type, r.name, 0, 0.0, 0.0, 0, False, 0]
            if back:
                a[7] -= r.session_tokens
                continue
            reported, estimated = costs.get(r.run_id, (r.cost_usd, 0.0))
            a[2] += r.totals.get("input", 0) + r.totals.get("output", 0)
            a[3] += reported
            a[4] += estimated
            a[5] += in_table is None or r.run_id in in_table
            a[7] += 0 if r.host_run_id else r.session_tokens
            if not a[6] and r.parent_run_id is None:
                a[0], a[1], a[6] = r.run_type, r.name, True
        if not agg:
            return []
        ids = list(agg)
        cur = await conn.execute(
            self._q(
                "INSERT INTO {s}.sessions AS s (source, session_id, run_type, name, tokens, cost, estimated_cost,"
                " runs, first_seen, last_seen, agno_tokens)"
                " SELECT %s, sid, rt, nm, tk, co, est, n, %s, %s, at"
                " FROM unnest(%b::text[], %b::text[], %b::text[], %b::int8[], %b::float8[], %b::float8[], %b::int[],"
                " %b::bool[], %b::int8[]) AS x(sid, rt, nm, tk, co, est, n, top, at)"
                " ON CONFLICT (source, session_id) DO UPDATE SET tokens = s.tokens + EXCLUDED.tokens,"
                " cost = s.cost + EXCLUDED.cost, estimated_cost = s.estimated_cost + EXCLUDED.estimated_cost,"
                " runs = s.runs + EXCLUDED.runs, last_seen = EXCLUDED.last_seen,"
                " agno_tokens = s.agno_tokens + EXCLUDED.agno_tokens"
                " RETURNING (xmax = 0) AS inserted, run_type, name"
            ),
            (
                self.source, now, now, ids,
                [agg[i][0] for i in ids], [agg[i][1] for i in ids], [int(agg[i][2]) for i in ids],
                [float(agg[i][3]) for i in ids], [float(agg[i][4]) for i in ids], [agg[i][5] for i in ids],
                [agg[i][6] for i in ids], [int(agg[i][7]) for i in ids],
            ),
        )
        return [(r["run_type"], r["name"]) for r in await cur.fetchall() if r["inserted"]]

    # --- trace outbox --------------------------------------------------------------------------

    async def pending_traces(self, limit: int, now: float = float("inf"), hold: float = 0.0) -> list[Counted]:
        """Runs counted but not yet exported as spans, oldest first.

        A run whose parent is not counted yet waits for it (a team member finishes before its team,
        whose tool call it nests under), for at most ``hold`` seconds after it was counted.
        """
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                self._q(
                    "SELECT r.run_id, r.root_run_id, r.status, r.session_id, r.host_run_id, r.parent_run_id,"
                    " coalesce(p.host_run_id, p.run_id) AS parent_row_run_id FROM {s}.runs r"
                    " LEFT JOIN {s}.runs p ON p.source = r.source AND p.run_id = r.parent_run_id"
                    " WHERE r.source = %s AND NOT r.traces_exported"
                    " AND (r.parent_run_id IS NULL OR p.run_id IS NOT NULL OR r.counted_at < %s)"
                    " ORDER BY r.counted_at, r.run_id LIMIT %s"
                ),
                (self.source, now - hold, limit),
            )
            return [Counted(r["run_id"], r["root_run_id"], r["status"], r["session_id"], r["host_run_id"],
                            r["parent_run_id"], r["parent_row_run_id"])
                    for r in await cur.fetchall()]

    async def mark_traces_exported(self, run_ids: Sequence[str]) -> None:
        if not run_ids:
            return
        async with self.db.transaction() as conn:
            await conn.execute(
                self._q("UPDATE {s}.runs SET traces_exported = true WHERE source = %s AND run_id = ANY(%b)"),
                (self.source, list(run_ids)),
            )

    async def count_pending_traces(self, ready_only: bool = False) -> int:
        """Runs counted but not yet exported as spans. ``ready_only`` leaves out the runs waiting for
        their parent to be counted (:meth:`pending_traces` holds them back, up to its ``hold``)."""
        waiting = (" AND (r.parent_run_id IS NULL OR EXISTS (SELECT 1 FROM {s}.runs p WHERE p.source = r.source"
                   " AND p.run_id = r.parent_run_id))") if ready_only else ""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                self._q("SELECT count(*) AS n FROM {s}.runs r WHERE r.source = %s AND NOT r.traces_exported" + waiting),
                (self.source,),
            )
            row = await cur.fetchone()
        return int(row["n"]) if row else 0

    # --- agno's own spans (exporter.sinks.otel.agno_spans) ------------------------------------------------

    async def queue_spans(self, span_ids: Sequence[str], now: float) -> list[str]:
        """Queue spans for forwarding; returns the ids that were new (the primary key is the dedupe:
        a span queued once is never queued again, across restarts and replicas)."""
        if not span_ids:
            return []
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                self._q(
                    "INSERT INTO {s}.forwarded_spans (source, span_id, queued_at)"
                    " SELECT %s, id, %s FROM unnest(%b::text[]) AS t(id) ON CONFLICT DO NOTHING RETURNING span_id"
                ),
                (self.source, now, list(span_ids)),
            )
            queued = [r["span_id"] for r in await cur.fetchall()]
        await self._grew("forwarded_spans", len(queued))
        return queued

    async def pending_spans(self, limit: int) -> list[str]:
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                self._q(
                    "SELECT span_id FROM {s}.forwarded_spans WHERE source = %s AND NOT exported"
                    " ORDER BY queued_at, span_id LIMIT %s"
                ),
                (self.source, limit),
            )
            return [r["span_id"] for r in await cur.fetchall()]

    async def mark_spans_exported(self, span_ids: Sequence[str]) -> None:
        if not span_ids:
            return
        async with self.db.transaction() as conn:
            await conn.execute(
                self._q("UPDATE {s}.forwarded_spans SET exported = true WHERE source = %s AND span_id = ANY(%b)"),
                (self.source, list(span_ids)),
            )


Setup = Callable[[], Awaitable[None]]
