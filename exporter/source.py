"""Reading agno's tables: discovery, the poll snapshot, candidate runs, the runs themselves, and the
spans agno's own tracing writes (:class:`SpansSource`).

All SQL against agno's schema lives here. Identifiers from config are always quoted. Each read is
one statement on a read-only connection (atomic by itself, so no BEGIN/COMMIT round trips), short,
so the exporter never holds back vacuum on the app's database.

Finding new finished runs without losing any (see :mod:`exporter.cursor` for the proof sketch):
every poll first takes ``pg_current_snapshot()`` and the database clock; candidates are the runs
in a final status whose ``updated_at`` is at or after the low watermark, listed as
``(updated_at, run_id)`` pages (light: no JSON); only the ids not counted yet are fetched whole.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from .db import Database
from .records import FINAL_STATUSES

_FINAL = sorted(FINAL_STATUSES)


@dataclass(frozen=True)
class Snapshot:
    """What the database said at the start of a poll."""

    now: float  # database clock, unix seconds
    xmin: int
    xmax: int
    xip: tuple[int, ...]  # transactions in progress

    @classmethod
    def parse(cls, now: float, text: str) -> Snapshot:
        xmin, xmax, xip = text.split(":")
        return cls(now, int(xmin), int(xmax), tuple(int(x) for x in xip.split(",") if x))


@dataclass(frozen=True)
class Layout:
    """Which agno tables exist."""

    schema: str
    runs_table: str | None  # agno 3.x
    sessions_table: str | None
    sessions_has_runs: bool  # agno 2.x keeps runs in agno_sessions.runs

    @property
    def version(self) -> str:
        if self.runs_table and self.sessions_has_runs:
            return "mixed"
        if self.runs_table:
            return "v3"
        if self.sessions_has_runs:
            return "v2"
        return "none"

    def describe(self) -> str:
        parts = []
        if self.runs_table:
            parts.append(f"{self.schema}.{self.runs_table} (agno 3.x runs table)")
        if self.sessions_table:
            legacy = " with a legacy runs column (agno 2.x)" if self.sessions_has_runs else ""
            parts.append(f"{self.schema}.{self.sessions_table}{legacy}")
        return ", ".join(parts) or f"no agno tables in schema {self.schema!r}"


async def take_snapshot(db: Database) -> Snapshot:
    """The snapshot and clock a poll starts from (see :mod:`exporter.cursor`)."""
    async with db.statement() as conn:
        cur = await conn.execute(
            "SELECT pg_current_snapshot()::text AS snap, extract(epoch FROM clock_timestamp())::float8 AS now"
        )
        row = await cur.fetchone()
    assert row is not None
    return Snapshot.parse(row["now"], row["snap"])


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


# The parts of run_data that exporter.records reads, cut out by Postgres: prompts, tool results,
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

RUN_COLUMNS = ("run_id", "session_id", "run_type", "agent_id", "team_id", "workflow_id", "user_id",
               "parent_run_id", "status", "created_at", "updated_at")


class RunsSource:
    """agno 3.x: one row per run in ``<schema>.<runs_table>``."""

    def __init__(self, db: Database, schema: str, runs_table: str, sessions_table: str) -> None:
        self.db = db
        self.schema = schema
        self.runs_table = runs_table
        self.sessions_table = sessions_table
        self.key = f"{schema}.{runs_table}"
        self._runs = sql.Identifier(schema, runs_table)
        self._sessions = sql.Identifier(schema, sessions_table)
        self._cols = sql.SQL(", ").join(sql.Identifier(c) for c in RUN_COLUMNS)
        self._open_names: dict[str, str] = {}  # run id -> name, of the runs open at the last poll

    async def discover(self) -> Layout:
        return await discover(self.db, self.schema, self.runs_table, self.sessions_table)

    async def snapshot(self) -> Snapshot:
        return await take_snapshot(self.db)

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
        return Page(items, (items[-1].updated_at, items[-1].run_id) if len(items) == limit else None)

    async def backfill(self, after: Any, limit: int) -> Page:
        items = await self.backfill_page(after, limit)
        return Page(items, items[-1].run_id if len(items) == limit else None)

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
        when the run is no longer open): polls read no JSON unless a new run has started.
        """
        async with self.db.statement() as conn:
            cur = await conn.execute(
                sql.SQL("SELECT run_id, run_type, status, created_at FROM {t} WHERE status = ANY(%(open)s)").format(
                    t=self._runs), {"open": ["PENDING", "RUNNING"]})
            rows = await cur.fetchall()
            names = {r["run_id"]: self._open_names[r["run_id"]] for r in rows if r["run_id"] in self._open_names}
            missing = [r["run_id"] for r in rows if r["run_id"] not in names]
            if missing:
                cur = await conn.execute(sql.SQL(
                    "SELECT run_id, coalesce(run_data->>'agent_name', run_data->>'team_name',"
                    " run_data->>'workflow_name', agent_id, team_id, workflow_id, '') AS name"
                    " FROM {t} WHERE run_id = ANY(%(ids)b)").format(t=self._runs), {"ids": missing})
                names.update((r["run_id"], r["name"]) for r in await cur.fetchall())
        self._open_names = names
        cutoff = int(now - stuck_after)
        groups: dict[tuple[str, str, str], dict[str, Any]] = {}
        for r in rows:
            name = names.get(r["run_id"])
            if name is None:  # deleted between the two reads
                continue
            key = (r["run_type"], name, r["status"])
            g = groups.get(key)
            if g is None:
                g = groups[key] = {"run_type": key[0], "name": name, "status": key[2], "n": 0, "stuck": 0,
                                   "oldest": None}
            g["n"] += 1
            created = r["created_at"]
            if created is not None:
                g["stuck"] += created < cutoff
                g["oldest"] = created if g["oldest"] is None else min(g["oldest"], created)
        return sorted(groups.values(), key=lambda g: -g["n"])[:limit]

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
        if not session_ids:
            return []
        query = sql.SQL(
            "SELECT session_id, session_type, agent_id, team_id, workflow_id, user_id, agent_data, team_data,"
            " workflow_data, session_data, created_at, updated_at FROM {t} WHERE session_id = ANY(%(ids)b)"
        ).format(t=self._sessions)
        async with self.db.statement() as conn:
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
    part ``updated_at`` plays for runs, with the same out-of-order commits (see :mod:`exporter.cursor`).
    """

    def __init__(self, db: Database, schema: str, spans_table: str, traces_table: str) -> None:
        self.db = db
        self.schema = schema
        self.spans_table = spans_table
        self.traces_table = traces_table
        self.key = f"{schema}.{spans_table}"
        self._spans = sql.Identifier(schema, spans_table)
        self._cols = sql.SQL(", ").join(sql.Identifier(c) for c in SPAN_COLUMNS)

    async def snapshot(self) -> Snapshot:
        return await take_snapshot(self.db)

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


async def discover(db: Database, schema: str, runs_table: str, sessions_table: str) -> Layout:
    async with db.transaction() as conn:
        cur = await conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = ANY(%s)",
            (schema, [runs_table, sessions_table]),
        )
        cols: dict[str, set[str]] = {}
        for r in await cur.fetchall():
            cols.setdefault(r["table_name"], set()).add(r["column_name"])
        # agno 3.x keeps the legacy `runs` column (NULL); only rows that still hold runs make it 2.x data.
        legacy = False
        if "runs" in cols.get(sessions_table, set()):
            cur = await conn.execute(
                sql.SQL("SELECT EXISTS (SELECT 1 FROM {t} WHERE runs IS NOT NULL AND runs::text <> 'null'"
                        " AND runs::text <> '[]') AS legacy").format(t=sql.Identifier(schema, sessions_table))
            )
            row = await cur.fetchone()
            legacy = bool(row and row["legacy"])
    runs_cols = cols.get(runs_table, set())
    return Layout(
        schema=schema,
        runs_table=runs_table if {"run_id", "run_data", "status", "updated_at"} <= runs_cols else None,
        sessions_table=sessions_table if sessions_table in cols else None,
        sessions_has_runs=legacy,
    )
