"""The opt-in index on agno's runs table that makes a poll cost the same at any table size.

agno does not index ``updated_at``, so each poll's candidate query (finished runs updated since
the low watermark, in ``(updated_at, run_id)`` order) scans the whole table: its cost grows with
the table (measured: about 5 ms at 10^4 runs, 60 ms at 10^5, hundreds at 10^6). An index on
``(updated_at, run_id)`` turns it into a short range scan. The exporter is read-only on agno's
database by default, so the index is created only when asked (``agno-exporter create-index``),
with ``CREATE INDEX CONCURRENTLY``: agno keeps writing while it builds. Undo with
``DROP INDEX CONCURRENTLY <schema>.<name>``.
"""

from __future__ import annotations

from psycopg import sql

from .db import ConnectOptions, connect


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
        await conn.execute(create_index_sql(schema, runs_table))
        return f"created index {schema}.{name} on {schema}.{runs_table} (updated_at, run_id)"
    finally:
        await conn.close()
