"""Reading agno's tables: discovery, the poll snapshot, candidate runs, the runs themselves, and the
spans agno's own tracing writes (:class:`SpansSource`).

agno's tables are found by their columns, whatever their names (:func:`discover`): an app's
``PostgresDb(session_table=...)`` names them, and a database often holds several apps' tables.

All SQL against agno's schema lives here. Identifiers from config or the catalog are always quoted. Each read is
one statement on a read-only connection (atomic by itself, so no BEGIN/COMMIT round trips), short,
so the exporter never holds back vacuum on the app's database.

Finding new finished runs without losing any (see :mod:`exporter.ingest.cursor` for the argument): every
poll first reads the database clock and the transactions that may write agno's tables
(:func:`take_snapshot`); candidates are the runs in a final status whose ``updated_at`` is at or
after the low watermark, listed as ``(updated_at, run_id)`` pages (light: no JSON); only the ids not
counted yet are fetched whole.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from exporter.db import Database
from exporter.records.parse import IDENTITY_KEYS, run_identity
from exporter.records.runs import FINAL_STATUSES

_FINAL = sorted(FINAL_STATUSES)


@dataclass(frozen=True)
class Snapshot:
    """What the database said at the start of a poll (see :mod:`exporter.ingest.cursor`)."""

    now: float  # database time the snapshot statement began (statement_timestamp()), unix seconds
    # per watched table (schema, table): the start (xact_start, unix seconds) of each transaction of
    # agno's database holding or awaiting a lock that allows writing its rows; None where Postgres
    # does not show it (another role's session without pg_read_all_stats; a prepared transaction)
    writers: Mapping[tuple[str, str], tuple[float | None, ...]] = field(default_factory=dict)

    def writers_of(self, table: tuple[str, str]) -> tuple[float | None, ...]:
        """The writers of ``table``; a table the snapshot did not watch counts as one writer of unknown
        start, which holds the watermark where it is (never a reason to advance it)."""
        return self.writers.get(table, (None,))


@dataclass(frozen=True)
class FoundTable:
    """A table with the columns of one of agno's tables (see :data:`RUNS_SHAPE`, :data:`SESSIONS_SHAPE`)."""

    schema: str
    name: str
    kind: str  # "runs" (agno 3.x runs table) or "sessions"
    runs_column: bool = False  # a session table with agno 2.x's `runs` column
    readable: bool = True  # this role may SELECT from it
    sessions_fk: str | None = None  # a runs table: the session table its session_id references

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def describe(self) -> str:
        if self.kind == "runs":
            return f"{self.qualified} (agno 3.x runs table)"
        return f"{self.qualified} (agno session table{' with a runs column' if self.runs_column else ''})"


@dataclass(frozen=True)
class TablePair:
    """The tables one agno ``PostgresDb`` writes: a session table and its runs table, either may be missing.

    agno 3.x names the runs table ``<session_table>_runs`` (``agno_runs`` for ``agno_sessions``) unless
    told otherwise, and references the session table from its ``session_id`` (agno/db/base.py,
    agno/db/postgres/schemas.py). agno 2.x has the session table only, its runs in the ``runs`` column.
    """

    runs_table: str | None
    sessions_table: str | None
    sessions_has_runs: bool = False  # the session table's agno 2.x runs column holds runs
    sessions_runs_column: bool = False  # the column exists (agno 3.x keeps it, NULL, after migrating)

    @property
    def version(self) -> str:
        if self.runs_table and self.sessions_has_runs:
            return "mixed"
        if self.runs_table:
            return "v3"
        if self.sessions_has_runs:
            return "v2"
        return "none"

    def describe(self, schema: str) -> str:
        parts = []
        if self.runs_table:
            parts.append(f"{schema}.{self.runs_table} (agno 3.x runs table)")
        if self.sessions_table:
            legacy = " with a legacy runs column (agno 2.x)" if self.sessions_has_runs else ""
            parts.append(f"{schema}.{self.sessions_table}{legacy}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Layout:
    """The agno tables of one schema (``pairs``), and agno tables found but not read, with why."""

    schema: str
    pairs: tuple[TablePair, ...] = ()
    unread: tuple[tuple[FoundTable, str], ...] = ()

    @property
    def version(self) -> str:
        """v3, v2 or mixed over all pairs (v3 and v2 in two pairs is mixed too), none without any."""
        runs = any(p.runs_table for p in self.pairs)
        legacy = any(p.sessions_has_runs for p in self.pairs)
        return "mixed" if runs and legacy else "v3" if runs else "v2" if legacy else "none"

    def describe(self) -> str:
        parts = [d for p in self.pairs if (d := p.describe(self.schema))]
        return "; ".join(parts) or f"no agno tables in schema {self.schema!r}"

    def elsewhere(self) -> list[FoundTable]:
        """agno tables of other schemas (filled by ``discover(..., everywhere=True)``)."""
        return [t for t, _ in self.unread if t.schema != self.schema]


def group_open_runs(rows: Iterable[Mapping[str, Any]], limit: int | None = None) -> list[dict[str, Any]]:
    """Add up in-progress counts (``n``, ``stuck``, ``oldest`` created_at) per (run_type, name label,
    status), largest first: the shape of the ``agno_runs_in_progress`` gauges."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r["run_type"] or "", r["name"] or "", r["status"])
        g = groups.get(key)
        if g is None:
            g = groups[key] = {"run_type": key[0], "name": key[1], "status": key[2], "n": 0, "stuck": 0,
                               "oldest": None}
        g["n"] += int(r["n"])
        g["stuck"] += int(r["stuck"])
        if r["oldest"] is not None:
            g["oldest"] = r["oldest"] if g["oldest"] is None else min(g["oldest"], r["oldest"])
    return sorted(groups.values(), key=lambda g: -g["n"])[:limit]


# Lock modes that allow writing a table's rows: INSERT/UPDATE/DELETE/MERGE/COPY take RowExclusiveLock;
# a transaction holding a stronger mode may write too (postgres docs, "Table-Level Locks").
WRITE_LOCKS = ["RowExclusiveLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"]

_SNAPSHOT = """
SELECT extract(epoch FROM statement_timestamp())::float8 AS now, w.i, w.start
FROM (VALUES (1)) AS one(x) LEFT JOIN (
  SELECT DISTINCT t.i, l.virtualtransaction, l.pid, extract(epoch FROM a.xact_start)::float8 AS start
  FROM unnest(%(schemas)s::text[], %(tables)s::text[]) WITH ORDINALITY AS t(s, n, i)
  JOIN pg_locks l ON l.locktype = 'relation'
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.relation = to_regclass(quote_ident(t.s) || '.' || quote_ident(t.n))
   AND l.mode = ANY(%(modes)s)
  LEFT JOIN pg_stat_activity a ON a.pid = l.pid
) AS w ON true"""


async def take_snapshot(db: Database, tables: Sequence[tuple[str, str]]) -> Snapshot:
    """The clock and the possible writers of ``tables`` (schema, table) a poll starts from, in one
    statement (see :mod:`exporter.ingest.cursor`): the transactions of agno's database that hold or await
    a write lock on each table, with their start times. ``pg_locks`` is readable by every role;
    ``xact_start`` of other roles' sessions needs ``pg_read_all_stats`` (else None)."""
    async with db.statement() as conn:
        cur = await conn.execute(_SNAPSHOT, {"schemas": [t[0] for t in tables], "tables": [t[1] for t in tables],
                                             "modes": WRITE_LOCKS})
        rows = await cur.fetchall()
    writers: dict[tuple[str, str], list[float | None]] = {t: [] for t in tables}
    for r in rows:
        if r["i"] is not None:
            writers[tables[r["i"] - 1]].append(r["start"])
    return Snapshot(rows[0]["now"], {t: tuple(w) for t, w in writers.items()})


@dataclass(frozen=True, slots=True)
class Candidate:
    run_id: str
    updated_at: int
    status: str
    session_id: str | None = None  # the agno 2.x reader finds runs by session


@dataclass(frozen=True, slots=True)
class Page:
    """Candidates of one page, and the key to list the next page after (None: this was the last)."""

    items: list[Candidate]
    after: Any
    scanned: int = 0  # rows of the listed table this page went through (runs, or agno 2.x sessions)


async def estimated_rows(db: Database, schema: str, table: str) -> int | None:
    """The planner's estimate of a table's rows (``pg_class.reltuples``; free to read, as fresh as the
    last ANALYZE or VACUUM), None when the table was never analyzed or does not exist."""
    async with db.statement() as conn:
        cur = await conn.execute(
            "SELECT c.reltuples::float8 AS n FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace"
            " WHERE s.nspname = %s AND c.relname = %s", (schema, table))
        row = await cur.fetchone()
    return int(row["n"]) if row is not None and row["n"] >= 0 else None


# The parts of run_data that exporter.records.runs reads, cut out by Postgres: prompts, tool results,
# history, system messages and provider payloads (most of a run's bytes) are neither sent nor
# parsed. Anything of an unexpected type is passed through untouched, so records.py still sees
# it and rejects the row with the same reason as from the whole JSON.
_RUN_PROJECTION = """CASE WHEN jsonb_typeof(d) IS DISTINCT FROM 'object' THEN d ELSE jsonb_build_object(
 'run_id', d->'run_id', 'status', d->'status', 'session_id', d->'session_id', 'user_id', d->'user_id',
 'parent_run_id', d->'parent_run_id', 'created_at', d->'created_at', 'updated_at', d->'updated_at',
 'agent_id', d->'agent_id', 'agent_name', d->'agent_name', 'team_id', d->'team_id', 'team_name', d->'team_name',
 'workflow_id', d->'workflow_id', 'workflow_name', d->'workflow_name',
 'model', d->'model', 'model_provider', d->'model_provider', 'metrics', d->'metrics', 'content', d->'content',
 'input', CASE WHEN jsonb_typeof(d->'input') = 'object'
   THEN jsonb_build_object('input_content', d->'input'->'input_content') ELSE d->'input' END,
 'messages', CASE WHEN jsonb_typeof(d->'messages') <> 'array' THEN d->'messages' ELSE (
   SELECT coalesce(jsonb_agg(CASE WHEN jsonb_typeof(m) <> 'object' THEN m ELSE jsonb_build_object(
     'role', m->'role', 'from_history', m->'from_history', 'id', m->'id', 'created_at', m->'created_at',
     'metrics', m->'metrics', 'content', m->'content',
     'tool_calls', CASE WHEN jsonb_typeof(m->'tool_calls') <> 'array' THEN m->'tool_calls' ELSE (
       SELECT jsonb_agg(CASE WHEN jsonb_typeof(c) <> 'object' THEN c ELSE jsonb_build_object('id', c->'id') END
                        ORDER BY j)
       FROM jsonb_array_elements(m->'tool_calls') WITH ORDINALITY AS tc(c, j)) END) END ORDER BY i), '[]')
   FROM jsonb_array_elements(d->'messages') WITH ORDINALITY AS msg(m, i)
   -- only the model calls of this run are read (records._model_calls skips the others)
   WHERE jsonb_typeof(m) <> 'object'
      OR (m->>'role' = 'assistant' AND m->'from_history' IS DISTINCT FROM 'true'::jsonb)) END,
 'tools', CASE WHEN jsonb_typeof(d->'tools') <> 'array' THEN d->'tools' ELSE (
   SELECT coalesce(jsonb_agg(CASE WHEN jsonb_typeof(t) <> 'object' THEN t ELSE jsonb_build_object(
     'tool_name', t->'tool_name', 'tool_call_id', t->'tool_call_id', 'tool_call_error', t->'tool_call_error',
     'metrics', t->'metrics', 'child_run_id', t->'child_run_id',
     'tool_args', CASE WHEN jsonb_typeof(t->'tool_args') = 'object'
       THEN jsonb_build_object('member_id', t->'tool_args'->'member_id') END) END ORDER BY i), '[]')
   FROM jsonb_array_elements(d->'tools') WITH ORDINALITY AS tl(t, i)) END{nested}) END"""


def _projection(var: str, nested: str) -> str:
    """The projection of one run's JSON held in the SQL expression ``var``."""
    return re.sub(r"\bd\b", lambda _: var, _RUN_PROJECTION).replace("{nested}", nested)


# Runs nested in a run (records.build_row_runs): a workflow's step runs and its WorkflowAgent run,
# cut like the row's own. What they nest in turn (the members of a team step, the steps of a
# nested workflow) is passed whole: rarer, and projecting every level would multiply the text.
_NESTED_WHOLE = (", 'step_executor_runs', s->'step_executor_runs', 'member_responses', s->'member_responses',"
                 " 'workflow_agent_run', s->'workflow_agent_run'")
_NESTED = (
    ", 'step_executor_runs', CASE WHEN jsonb_typeof(d->'step_executor_runs') <> 'array'"
    " THEN d->'step_executor_runs' ELSE (SELECT coalesce(jsonb_agg(" + _projection("s", _NESTED_WHOLE)
    + " ORDER BY k), '[]') FROM jsonb_array_elements(d->'step_executor_runs') WITH ORDINALITY AS ser(s, k)) END,"
    " 'workflow_agent_run', " + _projection("(d->'workflow_agent_run')", _NESTED_WHOLE.replace(
        "s->", "(d->'workflow_agent_run')->"))
)
RUN_DATA_PROJECTION = _projection("d", _NESTED)


def identity_projection(column: str) -> sql.Composed:
    """The :data:`~exporter.records.parse.IDENTITY_KEYS` of a run's JSON in ``column``, as one small object."""
    return sql.SQL("jsonb_build_object({})").format(sql.SQL(", ").join(
        sql.SQL("{}, {}->{}").format(sql.Literal(k), sql.SQL(column), sql.Literal(k)) for k in IDENTITY_KEYS))


RUN_COLUMNS = ("run_id", "session_id", "run_type", "agent_id", "team_id", "workflow_id", "user_id",
               "parent_run_id", "status", "created_at", "updated_at")


class RunsSource:
    """agno 3.x: one row per run in ``<schema>.<runs_table>``."""

    def __init__(self, db: Database, schema: str, runs_table: str, sessions_table: str | None) -> None:
        self.db = db
        self.schema = schema
        self.runs_table = runs_table
        self.sessions_table = sessions_table
        self.key = f"{schema}.{runs_table}"  # its cursor's name in the state
        self.appeared = False  # the table appeared while the exporter ran (see AgnoSource.refresh)
        self.written = (schema, runs_table)  # what agno writes a run's final status to (exporter.ingest.cursor)
        self._runs = sql.Identifier(schema, runs_table)
        self._cols = sql.SQL(", ").join(sql.Identifier(c) for c in RUN_COLUMNS)
        # run id -> (run type, name label), of the runs open at the last poll
        self._open_names: dict[str, tuple[str, str]] = {}

    async def snapshot(self) -> Snapshot:
        return await take_snapshot(self.db, [self.written])

    async def candidates(self, since: float, after: tuple[int, str] | None, limit: int) -> list[Candidate]:
        """Finished runs updated at or after ``since``, in (updated_at, run_id) order after ``after``."""
        query = sql.SQL(
            "SELECT run_id, updated_at, status FROM {t} WHERE status = ANY(%(final)s) AND updated_at >= %(since)s"
            " {after} ORDER BY updated_at, run_id LIMIT %(limit)s"
        ).format(
            t=self._runs,
            after=sql.SQL("AND (updated_at, run_id) > (%(au)s, %(ar)s)" if after else ""),
        )
        params: dict[str, Any] = {"final": _FINAL, "since": int(since), "limit": limit}
        if after:
            params["au"], params["ar"] = after
        async with self.db.statement() as conn:
            cur = await conn.execute(query, params)
            rows = await cur.fetchall()
        return [Candidate(r["run_id"], int(r["updated_at"] or 0), r["status"]) for r in rows]

    async def backfill_page(self, after: str | None, limit: int) -> list[Candidate]:
        """All finished runs by primary key: each page is an index range scan, whatever the table size."""
        query = sql.SQL(
            "SELECT run_id, updated_at, status FROM {t} WHERE status = ANY(%(final)s) {after}"
            " ORDER BY run_id LIMIT %(limit)s"
        ).format(t=self._runs, after=sql.SQL("AND run_id > %(after)s" if after is not None else ""))
        async with self.db.statement() as conn:
            cur = await conn.execute(query, {"final": _FINAL, "after": after, "limit": limit})
            rows = await cur.fetchall()
        return [Candidate(r["run_id"], int(r["updated_at"] or 0), r["status"]) for r in rows]

    async def candidate_page(self, since: float, after: Any, limit: int) -> Page:
        items = await self.candidates(since, after, limit)
        return Page(items, (items[-1].updated_at, items[-1].run_id) if len(items) == limit else None, len(items))

    async def backfill(self, after: Any, limit: int) -> Page:
        items = await self.backfill_page(after, limit)
        return Page(items, items[-1].run_id if len(items) == limit else None, len(items))

    async def backfill_size(self) -> tuple[int | None, str]:
        """About how many rows a backfill lists (all statuses: the estimate is the table's), and their unit."""
        return await estimated_rows(self.db, self.schema, self.runs_table), "runs"

    async def fetch_runs(self, refs: Sequence[tuple[str, str | None]]) -> list[dict[str, Any]]:
        """(run id, session id) pairs -> rows; the session id is not needed here (run_id is the key)."""
        return await self.fetch([run_id for run_id, _ in refs])

    async def fetch(self, run_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Whole rows (columns + run_data) of the given runs."""
        if not run_ids:
            return []
        query = sql.SQL("SELECT {cols}, {run_data} AS run_data FROM {t}, "
                        # detoast run_data once (OFFSET 0 keeps the planner from inlining it per use)
                        " LATERAL (SELECT run_data || '{{}}'::jsonb AS d OFFSET 0) AS x"
                        " WHERE run_id = ANY(%(ids)b)").format(
            cols=self._cols, run_data=sql.SQL(RUN_DATA_PROJECTION), t=self._runs
        )
        async with self.db.statement() as conn:
            cur = await conn.execute(query, {"ids": list(run_ids)})
            return await cur.fetchall()

    async def fetch_children(self, parents: Sequence[tuple[str, str | None]]) -> list[dict[str, Any]]:
        """Whole rows of the finished runs whose parent is one of these (run id, session id): a team's
        member runs. By session (agno indexes ``session_id``, not ``parent_run_id``)."""
        sessions = sorted({sid for _, sid in parents if sid})
        if not sessions:
            return []
        query = sql.SQL("SELECT {cols}, {run_data} AS run_data FROM {t},"
                        " LATERAL (SELECT run_data || '{{}}'::jsonb AS d OFFSET 0) AS x"
                        " WHERE session_id = ANY(%(sids)b) AND parent_run_id = ANY(%(ids)b)"
                        " AND status = ANY(%(final)s)").format(
            cols=self._cols, run_data=sql.SQL(RUN_DATA_PROJECTION), t=self._runs)
        async with self.db.statement() as conn:
            cur = await conn.execute(query, {"sids": sessions, "ids": sorted({rid for rid, _ in parents}),
                                             "final": _FINAL})
            return await cur.fetchall()

    async def row_ids(self, run_ids: Sequence[str]) -> set[str]:
        """Which of these runs have a row (agno's primary key: an index lookup each)."""
        if not run_ids:
            return set()
        async with self.db.statement() as conn:
            cur = await conn.execute(sql.SQL("SELECT run_id FROM {t} WHERE run_id = ANY(%(ids)b)").format(
                t=self._runs), {"ids": list(run_ids)})
            return {r["run_id"] for r in await cur.fetchall()}

    async def ancestors(self, run_ids: Sequence[str]) -> dict[str, str]:
        """run id -> id of its top-level run (itself when it has no parent), following parent_run_id."""
        if not run_ids:
            return {}
        query = sql.SQL(
            "WITH RECURSIVE up(start, run_id, parent, depth) AS ("
            " SELECT r.run_id, r.run_id, r.parent_run_id, 0 FROM {t} r WHERE r.run_id = ANY(%(ids)b)"
            " UNION ALL"
            " SELECT up.start, p.run_id, p.parent_run_id, up.depth + 1 FROM up JOIN {t} p ON p.run_id = up.parent"
            " WHERE up.depth < 32)"
            " SELECT DISTINCT ON (start) start, run_id, parent FROM up ORDER BY start, depth DESC"
        ).format(t=self._runs)
        async with self.db.statement() as conn:
            cur = await conn.execute(query, {"ids": list(run_ids)})
            rows = await cur.fetchall()
        # A parent row that does not exist (yet) leaves `parent` set: the trace root is that parent id.
        return {r["start"]: (r["parent"] or r["run_id"]) for r in rows}

    async def open_runs(self, now: float, stuck_after: float, limit: int = 1000) -> list[dict[str, Any]]:
        """Runs still PENDING/RUNNING, grouped by type/name/status: how many, how many stuck, oldest start.

        agno indexes ``status``, so this reads only the open runs, whatever the table size. Their
        names live in run_data; a run's name never changes, so it is read once per run (and forgotten
        when the run is no longer open): polls read no JSON unless a new run has started. ``name`` is
        the label (:func:`exporter.records.values.run_label`).
        """
        async with self.db.statement() as conn:
            cur = await conn.execute(
                sql.SQL("SELECT run_id, status, created_at FROM {t} WHERE status = ANY(%(open)s)").format(
                    t=self._runs), {"open": ["PENDING", "RUNNING"]})
            rows = await cur.fetchall()
            names = {r["run_id"]: self._open_names[r["run_id"]] for r in rows if r["run_id"] in self._open_names}
            missing = [r["run_id"] for r in rows if r["run_id"] not in names]
            if missing:
                cur = await conn.execute(sql.SQL(
                    "SELECT run_id, run_type, agent_id, team_id, workflow_id, {ident} AS run_data"
                    " FROM {t} WHERE run_id = ANY(%(ids)b)").format(
                        t=self._runs, ident=identity_projection("run_data")), {"ids": missing})
                for r in await cur.fetchall():
                    run_type, _, name = run_identity(r, r["run_data"] or {})
                    names[r["run_id"]] = (run_type, name)
        self._open_names = names
        cutoff = int(now - stuck_after)
        return group_open_runs(
            ({"run_type": names[r["run_id"]][0], "name": names[r["run_id"]][1], "status": r["status"], "n": 1,
              "stuck": int(r["created_at"] is not None and r["created_at"] < cutoff), "oldest": r["created_at"]}
             for r in rows if r["run_id"] in names),  # not there: deleted between the two reads
            limit)

    async def session_run_counts(self, session_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """session id -> (finished runs, open runs) in agno's table (session_id is indexed by agno)."""
        if not session_ids:
            return {}
        query = sql.SQL(
            "SELECT session_id, count(*) FILTER (WHERE status = ANY(%(final)s)) AS final,"
            " count(*) FILTER (WHERE status = ANY(%(open)s)) AS open FROM {t}"
            " WHERE session_id = ANY(%(ids)b) GROUP BY session_id"
        ).format(t=self._runs)
        async with self.db.statement() as conn:
            cur = await conn.execute(query, {"final": _FINAL, "open": ["PENDING", "RUNNING", "PAUSED"],
                                             "ids": list(session_ids)})
            return {r["session_id"]: (int(r["final"]), int(r["open"])) for r in await cur.fetchall()}

    async def sessions(self, session_ids: Sequence[str]) -> list[dict[str, Any]]:
        if self.sessions_table is None:
            return []
        return await read_sessions(self.db, self.schema, self.sessions_table, session_ids)

    async def session_runs(self, session_id: str) -> list[dict[str, Any]]:
        """Whole rows of every run of one session, member runs included (``sessions show``); agno
        indexes ``session_id``."""
        query = sql.SQL("SELECT run_id FROM {t} WHERE session_id = %(sid)s").format(t=self._runs)
        async with self.db.statement() as conn:
            cur = await conn.execute(query, {"sid": session_id})
            run_ids = [r["run_id"] for r in await cur.fetchall()]
        return await self.fetch(run_ids)


async def read_sessions(db: Database, schema: str, table: str, session_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of agno's session table (either layout) for the given session ids."""
    if not session_ids:
        return []
    query = sql.SQL(
        "SELECT session_id, session_type, agent_id, team_id, workflow_id, user_id, agent_data, team_data,"
        " workflow_data, session_data, created_at, updated_at FROM {t} WHERE session_id = ANY(%(ids)b)"
    ).format(t=sql.Identifier(schema, table))
    async with db.statement() as conn:
        cur = await conn.execute(query, {"ids": list(session_ids)})
        return await cur.fetchall()


@dataclass(frozen=True, slots=True)
class SpanCandidate:
    span_id: str
    created_at: str


SPAN_COLUMNS = ("span_id", "trace_id", "parent_span_id", "name", "span_kind", "status_code", "status_message",
                "start_time", "end_time", "attributes", "created_at")


class SpansSource:
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


# What makes a table agno's is its columns (the same from agno 2.0 to 3.1.10, agno/db/postgres/schemas.py):
# a runs table has the columns the collector reads; a session table those `sessions()` reads.
RUNS_SHAPE = frozenset({*RUN_COLUMNS, "run_data"})
SESSIONS_SHAPE = frozenset({"session_id", "session_type", "agent_id", "team_id", "workflow_id", "user_id",
                            "agent_data", "team_data", "workflow_data", "session_data", "created_at", "updated_at"})

# Every table (not a partition) with either shape, in one schema or in all of them, with whether this
# role may read it and, for a runs table, the table its session_id references.
_FIND_TABLES = """
SELECT n.nspname AS schema, c.relname AS name, array_agg(a.attname::text) AS columns,
  has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT') AS readable,
  (SELECT f.relname FROM pg_constraint k JOIN pg_class f ON f.oid = k.confrelid
    JOIN pg_attribute ka ON ka.attrelid = k.conrelid AND ka.attnum = k.conkey[1]
    WHERE k.conrelid = c.oid AND k.contype = 'f' AND ka.attname = 'session_id'
      AND f.relnamespace = c.relnamespace ORDER BY k.conname LIMIT 1) AS sessions_fk
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%%'
  AND (%(schema)s::text IS NULL OR n.nspname = %(schema)s)
GROUP BY n.oid, n.nspname, c.oid, c.relname
HAVING array_agg(a.attname::text) @> %(runs)s::text[] OR array_agg(a.attname::text) @> %(sessions)s::text[]
ORDER BY n.nspname, c.relname
"""


def default_sessions_table(runs_table: str) -> str | None:
    """The session table agno pairs with a runs table by name (agno/db/base.py ``runs_table_name``)."""
    if runs_table == "agno_runs":
        return "agno_sessions"
    return runs_table.removesuffix("_runs") if runs_table.endswith("_runs") and runs_table != "_runs" else None


def pair_tables(tables: Sequence[FoundTable], only: tuple[str, str] | None = None
                ) -> tuple[list[TablePair], list[tuple[FoundTable, str]]]:
    """Group one schema's agno tables into pairs; returns the pairs and the tables left unread, with why.

    A runs table belongs with the session table its ``session_id`` references (agno 3.1 declares it),
    else with the one its name says. A session table no runs table claims is a pair of its own when it
    has agno 2.x's runs column. ``only`` = (runs table, session table) named in the config: nothing
    else is read. A table this role may not read is left out (the collector would fail on it).
    """
    unread: list[tuple[FoundTable, str]] = []
    ok: list[FoundTable] = []
    for t in tables:
        if only is not None and t.name not in only:
            unread.append((t, "not the table database.session_table / database.runs_table names"))
        elif not t.readable:
            unread.append((t, f"no SELECT privilege (GRANT SELECT ON {t.qualified} TO <role>)"))
        else:
            ok.append(t)
    runs = {t.name: t for t in ok if t.kind == "runs"}
    sessions = {t.name: t for t in ok if t.kind == "sessions"}
    if only is not None:
        r, s = runs.get(only[0]), sessions.get(only[1])
        claimed = [(r, s)] if r or s else []
    else:
        claimed = []
        for r in runs.values():
            s = sessions.get(r.sessions_fk or "") or sessions.get(default_sessions_table(r.name) or "")
            claimed.append((r, s))
        used = {s.name for _, s in claimed if s}
        claimed += [(None, s) for s in sessions.values() if s.name not in used and s.runs_column]
    pairs = [TablePair(r.name if r else None, s.name if s else None, False, bool(s and s.runs_column))
             for r, s in claimed]
    return pairs, unread


async def discover(db: Database, schema: str, only: tuple[str, str] | None = None,
                   everywhere: bool = False) -> Layout:
    """agno's tables in ``schema``, found by their columns (any names), paired, with what is not read.

    ``everywhere``: also list agno tables of every other schema (as unread), for "is it the wrong
    schema?" hints; otherwise only ``schema``'s catalog is read.
    """
    async with db.transaction() as conn:
        cur = await conn.execute(_FIND_TABLES, {"schema": None if everywhere else schema,
                                                "runs": sorted(RUNS_SHAPE), "sessions": sorted(SESSIONS_SHAPE)})
        found = []
        for r in await cur.fetchall():
            cols = set(r["columns"])
            kind = "runs" if cols >= RUNS_SHAPE else "sessions"
            found.append(FoundTable(r["schema"], r["name"], kind, kind == "sessions" and "runs" in cols,
                                    bool(r["readable"]), r["sessions_fk"]))
        pairs, unread = pair_tables([t for t in found if t.schema == schema], only)
        unread += [(t, f"schema {t.schema!r}, not database.schema {schema!r}") for t in found if t.schema != schema]
        # agno 3.x keeps the legacy `runs` column (NULL); only rows that still hold runs make it 2.x data.
        for i, p in enumerate(pairs):
            if p.sessions_runs_column and p.sessions_table:
                cur = await conn.execute(
                    sql.SQL("SELECT EXISTS (SELECT 1 FROM {t} WHERE runs IS NOT NULL AND runs::text <> 'null'"
                            " AND runs::text <> '[]') AS legacy").format(t=sql.Identifier(schema, p.sessions_table)))
                row = await cur.fetchone()
                pairs[i] = dataclasses.replace(p, sessions_has_runs=bool(row and row["legacy"]))
    return Layout(schema, tuple(pairs), tuple(unread))
