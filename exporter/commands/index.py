"""The opt-in index on agno's runs table that makes a poll cost the same at any table size.

agno does not index ``updated_at``, so each poll's candidate query (finished runs updated since
the low watermark, in ``(updated_at, run_id)`` order) scans the whole table: its cost grows with
the table (measured: about 5 ms at 10^4 runs, 60 ms at 10^5, hundreds at 10^6). An index on
``(updated_at, run_id)`` turns it into a short range scan. The exporter is read-only on agno's
database by default, so the index is created only when asked (``agno-exporter create-index``),
with ``CREATE INDEX CONCURRENTLY``: agno keeps writing while it builds. Undo with
``DROP INDEX CONCURRENTLY <schema>.<name>``.

PostgreSQL lets only the table's owner (or a member of the owning role, or a superuser) create an
index on it, and the role needs CREATE on the table's schema (``DefineIndex`` in PostgreSQL's
indexcmds.c; there is no GRANT for it). Both are checked first, so the user gets one line naming what
is missing instead of a server error.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from exporter.db import ConnectOptions, connect


class CreateIndexError(Exception):
    """The index cannot be created as asked; ``str()`` is one line naming what is missing."""


def _needs(schema: str, runs_table: str) -> str:
    return (f"CREATE INDEX needs a role that owns {schema}.{runs_table} (agno's own role, or a member of it)"
            f" and has CREATE on schema {schema}; run create-index with that role's --db-url")


def index_name(runs_table: str) -> str:
    return f"{runs_table}_exporter_updated_at"


def create_index_sql(schema: str, runs_table: str) -> sql.Composed:
    return sql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} (updated_at, run_id)").format(
        name=sql.Identifier(index_name(runs_table)), table=sql.Identifier(schema, runs_table))


async def create_index(opts: ConnectOptions, schema: str, runs_table: str) -> str:
    """Create the index (idempotent); returns what was done, for the command to print."""
    # A build on a large table outlasts any statement timeout, and it writes: a connection of its own.
    conn = await connect(ConnectOptions(opts.url, opts.application_name + "-create-index", statement_timeout=0,
                                        connect_timeout=opts.connect_timeout))
    try:
        await _check(conn, schema, runs_table)
        name = index_name(runs_table)
        cur = await conn.execute(
            "SELECT i.indisvalid AS valid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
            (schema, name))
        row = await cur.fetchone()
        if row is not None and not row["valid"]:
            # A concurrent build that was interrupted leaves an invalid index behind: rebuild it.
            await conn.execute(sql.SQL("DROP INDEX CONCURRENTLY {}").format(sql.Identifier(schema, name)))
        elif row is not None:
            return f"index {schema}.{name} exists already"
        try:
            await conn.execute(create_index_sql(schema, runs_table))
        except psycopg.errors.InsufficientPrivilege as exc:  # rights changed since _check, or a rule it missed
            raise CreateIndexError(f"{str(exc).strip()}: {_needs(schema, runs_table)}") from None
        return f"created index {schema}.{name} on {schema}.{runs_table} (updated_at, run_id)"
    finally:
        await conn.close()


async def _check(conn: psycopg.AsyncConnection[dict[str, object]], schema: str, runs_table: str) -> None:
    """The schema and the table exist, and this role may index the table (else CreateIndexError)."""
    cur = await conn.execute(
        "SELECT current_user AS role, n.oid IS NOT NULL AS schema_found, c.oid IS NOT NULL AS table_found,"
        " pg_has_role(current_user, c.relowner, 'USAGE') AS owns,"
        " has_schema_privilege(current_user, n.oid, 'CREATE') AS can_create"
        " FROM (SELECT 1) one LEFT JOIN pg_namespace n ON n.nspname = %(s)s"
        " LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = %(t)s AND c.relkind IN ('r', 'p')",
        {"s": schema, "t": runs_table})
    row = await cur.fetchone()
    assert row is not None
    if not row["schema_found"]:
        raise CreateIndexError(f"no schema {schema!r} in this database: give agno's db_schema with --schema"
                               " (database.schema; agno's default is ai)")
    if not row["table_found"]:
        raise CreateIndexError(f"no table {schema}.{runs_table} in this database: agno 3.x creates it with its first"
                               " run; check --schema and --session-table (agno 2.x keeps runs in the session"
                               " table, where this index does not apply)")
    if not row["owns"] or not row["can_create"]:
        missing = " and ".join(
            what for what, ok in ((f"does not own {schema}.{runs_table}", row["owns"]),
                                  (f"has no CREATE on schema {schema}", row["can_create"])) if not ok)
        raise CreateIndexError(f"role {row['role']!r} {missing}: {_needs(schema, runs_table)}")
