"""Reading agno's tables, what every reader shares: the poll snapshot, candidate pages, the projections of
``run_data``. The readers: :mod:`exporter.ingest.runs_table` (agno 3.x), :mod:`exporter.ingest.legacy`
(agno 2.x), :mod:`exporter.ingest.spans_table` (agno's own tracing); the tables are found by
:mod:`exporter.ingest.discovery`.

All SQL against agno's schema lives in these modules. Identifiers from config or the catalog are always quoted.
Each read is one statement on a read-only connection (atomic by itself, so no BEGIN/COMMIT round trips),
short, so the exporter never holds back vacuum on the app's database.

Finding new finished runs without losing any (see :mod:`exporter.ingest.cursor` for the argument): every
poll first reads the database clock and the transactions that may write agno's tables
(:func:`take_snapshot`); candidates are the runs in a final status whose ``updated_at`` is at or
after the low watermark, listed as ``(updated_at, run_id)`` pages (light: no JSON); only the ids not
counted yet are fetched whole.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from exporter.db import Database
from exporter.records.parse import IDENTITY_KEYS
from exporter.records.runs import FINAL_STATUSES

FINAL_SORTED = sorted(FINAL_STATUSES)


Signal = tuple[int | None, int | None, int | None]  # (oid, file node, rows deleted): see Snapshot.signals


@dataclass(frozen=True)
class Snapshot:
    """What the database said at the start of a poll (see :mod:`exporter.ingest.cursor`)."""

    now: float  # database time the snapshot statement began (statement_timestamp()), unix seconds
    # per watched table (schema, table): the start (xact_start, unix seconds) of each transaction of
    # agno's database holding or awaiting a lock that allows writing its rows; None where Postgres
    # does not show it (another role's session without pg_read_all_stats; a prepared transaction)
    writers: Mapping[tuple[str, str], tuple[float | None, ...]] = field(default_factory=dict)
    # per watched table: what moves when rows leave it without a new stamp (exporter.ingest.openruns,
    # exporter.ingest.retention): its oid and file node (TRUNCATE, a re-created table) and its deleted-rows
    # counter (pg_stat_get_tuples_deleted); None fields where unknown (no such table)
    signals: Mapping[tuple[str, str], Signal] = field(default_factory=dict)

    def writers_of(self, table: tuple[str, str]) -> tuple[float | None, ...]:
        """The writers of ``table``; a table the snapshot did not watch counts as one writer of unknown
        start, which holds the watermark where it is (never a reason to advance it)."""
        return self.writers.get(table, (None,))

    def signal_of(self, table: tuple[str, str]) -> Signal:
        """The change signal of ``table`` (all None when the snapshot did not read it)."""
        return self.signals.get(table, (None, None, None))


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

# The writers' start is read per lock found (pg_stat_get_activity(pid): none when nothing writes), not by
# joining the pg_stat_activity view, whose planning alone cost more than the rest of an idle poll's
# statement. The change signals ride along: one statement, one round trip.
_SNAPSHOT = """
SELECT extract(epoch FROM statement_timestamp())::float8 AS now, sig.oids, sig.filenodes, sig.deleted, w.i, w.start
FROM (SELECT array_agg(u.oid::int8 ORDER BY u.i) AS oids,
             array_agg(pg_relation_filenode(u.oid)::int8 ORDER BY u.i) AS filenodes,
             array_agg(pg_stat_get_tuples_deleted(u.oid) ORDER BY u.i) AS deleted
      FROM (SELECT x.i, to_regclass(quote_ident(x.s) || '.' || quote_ident(x.n)) AS oid
            FROM unnest({schemas}::text[], {tables}::text[]) WITH ORDINALITY AS x(s, n, i)) u) AS sig
LEFT JOIN (
  SELECT DISTINCT t.i, l.virtualtransaction, l.pid,
    (SELECT extract(epoch FROM a.xact_start)::float8 FROM pg_stat_get_activity(l.pid) a WHERE a.pid = l.pid) AS start
  FROM unnest({schemas}::text[], {tables}::text[]) WITH ORDINALITY AS t(s, n, i)
  JOIN pg_locks l ON l.locktype = 'relation'
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.relation = to_regclass(quote_ident(t.s) || '.' || quote_ident(t.n))
   AND l.mode = ANY({modes}::text[])
) AS w ON true"""


@functools.lru_cache(maxsize=64)
def _snapshot_query(tables: tuple[tuple[str, str], ...]) -> str:
    """The snapshot statement for these tables, values inlined: the same text every poll (prepared by
    psycopg after a few), and nothing to adapt per poll (adapting its arrays was a tenth of the poll's CPU)."""
    return sql.SQL(_SNAPSHOT).format(
        schemas=sql.Literal([t[0] for t in tables]), tables=sql.Literal([t[1] for t in tables]),
        modes=sql.Literal(WRITE_LOCKS)).as_string(None)


async def take_snapshot(db: Database, tables: Sequence[tuple[str, str]]) -> Snapshot:
    """The clock and the possible writers of ``tables`` (schema, table) a poll starts from, in one
    statement (see :mod:`exporter.ingest.cursor`): the transactions of agno's database that hold or await
    a write lock on each table, with their start times, and each table's change signal. ``pg_locks`` is
    readable by every role; ``xact_start`` of other roles' sessions needs ``pg_read_all_stats`` (else None)."""
    async with db.statement() as conn:
        cur = await conn.execute(snapshot_query(tables))
        rows = await cur.fetchall()
    return parse_snapshot(tables, rows)


def snapshot_query(tables: Sequence[tuple[str, str]]) -> str:
    """The text of :func:`take_snapshot`'s statement (to send it in a pipeline with others)."""
    return _snapshot_query(tuple(tables))


def parse_snapshot(tables: Sequence[tuple[str, str]], rows: Sequence[Mapping[str, Any]]) -> Snapshot:
    """:func:`take_snapshot`'s rows -> the :class:`Snapshot`."""
    writers: dict[tuple[str, str], list[float | None]] = {t: [] for t in tables}
    for r in rows:
        if r["i"] is not None:
            writers[tables[r["i"] - 1]].append(r["start"])
    head = rows[0]
    signals = {t: (head["oids"][i], head["filenodes"][i], head["deleted"][i]) for i, t in enumerate(tables)} \
        if head["oids"] is not None else {}
    return Snapshot(head["now"], {t: tuple(w) for t, w in writers.items()}, signals)


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
