"""Finding agno's tables by their columns, whatever their names (:func:`discover`), and pairing each runs table with
its sessions table; the layout found (:class:`Layout`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import sql

from exporter.db import Database
from exporter.ingest.source import RUN_COLUMNS


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
