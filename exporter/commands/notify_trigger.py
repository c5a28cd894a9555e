"""`create-notify-trigger` / `drop-notify-trigger`: the wake-up's trigger on agno's tables, and `check`'s line on it.

The trigger makes agno's commit of a finished run wake the collector (the exporter's side, LISTEN and
the poll loop woken, is :mod:`exporter.ingest.notify`): it calls ``pg_notify('agno_exporter_wake',
'<schema>.<table>')`` when a row is written in a final state. ``drop-notify-trigger`` removes the
trigger and its function.

**Cost on agno's write path.** The trigger is ``FOR EACH ROW`` with a ``WHEN`` clause: for a row not
in a final state (agno writes a run PENDING, RUNNING, then final) the server evaluates the clause and
calls nothing. A statement-level trigger would run the function for every one of agno's writes and
could tell final rows only through a transition table built for each statement. For a final row the
function queues one notification; Postgres folds equal notifications of one transaction into one
(same channel and payload), and delivers them at commit. A committing transaction that notified
takes a cluster-wide lock until its commit is flushed (``PreCommit_Notify`` in PostgreSQL's
async.c), so commits of finished runs are serialised with each other: one more commit-time wait per
finished run, negligible at agno's rates (runs are model calls) and the reason why rows not in a
final state notify nothing. agno 2.x rewrites a whole session row on every save: its trigger fires
on rows whose ``runs`` column is set (a NULL test, no JSON read); telling a finished run there would
mean reading the whole array on agno's write path.

**Privileges.** ``CREATE TRIGGER`` needs the TRIGGER privilege on the table (its owner has it; it can
be granted), and the trigger function needs CREATE on agno's schema (``CreateTriggerFiringOn`` in
PostgreSQL's trigger.c, ``CreateFunction`` in functioncmds.c). Dropping a trigger needs the table's
owner. Both commands check first and say in one line (:class:`NotifyTriggerError`) what is missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql

from exporter.config import Settings
from exporter.db import ConnectOptions, Database, connect
from exporter.ingest.discovery import Layout
from exporter.ingest.legacy import LegacyTable
from exporter.ingest.notify import CHANNEL, TRIGGER, Table, WakeMode, triggered
from exporter.ingest.readers import AgnoSource
from exporter.records.runs import FINAL_STATUSES

# CREATE/DROP TRIGGER take a lock that waits for agno's open writes and queues agno's next ones behind
# it: each attempt waits this long at most, so agno is never held up for more.
LOCK_TIMEOUT = 2.0
LOCK_ATTEMPTS = 5


class NotifyTriggerError(Exception):
    """The trigger cannot be created or dropped as asked; ``str()`` is one line naming what is missing."""


@dataclass(frozen=True)
class Watched:
    """A table the collector reads and what in it makes a run final."""

    schema: str
    table: str
    kind: Literal["runs", "sessions"]  # an agno 3.x runs table, or an agno 2.x session table (runs column)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    def when(self) -> sql.Composable:
        """The trigger's WHEN clause: a run in a final state, or a session row with runs."""
        if self.kind == "runs":
            return sql.SQL("NEW.status IN ({})").format(sql.SQL(", ").join(map(sql.Literal, sorted(FINAL_STATUSES))))
        return sql.SQL("NEW.runs IS NOT NULL")


def function_sql(schema: str) -> sql.Composed:
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN PERFORM pg_notify({channel}, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME); RETURN NULL; END $$"
    ).format(f=sql.Identifier(schema, TRIGGER), channel=sql.Literal(CHANNEL))


def trigger_sql(t: Watched) -> sql.Composed:
    return sql.SQL(
        "CREATE TRIGGER {name} AFTER INSERT OR UPDATE ON {table} FOR EACH ROW WHEN ({when})"
        " EXECUTE FUNCTION {f}()"
    ).format(name=sql.Identifier(TRIGGER), table=sql.Identifier(t.schema, t.table), when=t.when(),
             f=sql.Identifier(t.schema, TRIGGER))


def layout_tables(schema: str, layout: Layout, forced: str) -> list[Table]:
    """The (schema, table) pairs of ``layout`` the collector reads with ``database.layout`` ``forced``:
    runs tables, and session tables whose runs column holds runs."""
    return [(schema, t) for p in layout.pairs
            for t, read in ((p.runs_table, forced in ("auto", "v3", "mixed")),
                            (p.sessions_table, p.sessions_has_runs and forced in ("auto", "v2", "mixed")))
            if t and read]


async def watched_tables(opts: ConnectOptions, settings: Settings) -> list[Watched]:
    """The tables the collector reads, found as it finds them (a read-only connection of its own)."""
    db = Database(ConnectOptions(opts.url, opts.application_name, opts.statement_timeout, opts.connect_timeout,
                                 read_only=True))
    try:
        readers = await AgnoSource.from_settings(db, settings.database, quiet=True).refresh(force=True)
    finally:
        await db.close()
    return [Watched(*r.written, "sessions" if isinstance(r, LegacyTable) else "runs") for r in readers]


async def check_line(conn: psycopg.AsyncConnection[dict[str, Any]], mode: WakeMode,
                     tables: Sequence[Table]) -> tuple[str, str]:
    """``check``'s (mark, line) on the wake-up, for the tables the collector reads."""
    if mode is False:
        return "--", "wake-up off (collector.wake_on_notify: false): runs reach /metrics at the next poll"
    found = await triggered(conn, tables)
    names = ", ".join(f"{s}.{t}" for s, t in sorted(found))
    bare = ", ".join(f"{s}.{t}" for s, t in sorted(set(tables) - found))
    if not found:
        mark = "warn" if mode is True and tables else "--"
        return mark, (f"wake-up off: no trigger on {bare or 'the tables read'} (agno-exporter create-notify-trigger"
                      " adds it); runs reach /metrics at the next poll")
    if bare:
        return "warn", (f"wake-up: trigger on {names} but not on {bare} (run agno-exporter create-notify-trigger"
                        " again): runs written there wait for the next poll")
    return "ok", f"wake-up: trigger on {names}: finished runs reach /metrics at once"


def _needs(what: str) -> str:
    return (f"{what} needs a role with the TRIGGER privilege on agno's tables (their owner, agno's own role, has"
            " it) and CREATE on agno's schema; run it with that role's --db-url")


async def _locked(conn: psycopg.AsyncConnection[dict[str, Any]], statement: sql.Composed) -> None:
    """Run one DDL statement with a short lock_timeout, retried: never a long queue in front of agno."""
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            async with conn.transaction():
                await conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
                    sql.Literal(f"{int(LOCK_TIMEOUT * 1000)}ms")))
                await conn.execute(statement)
            return
        except psycopg.errors.LockNotAvailable:
            if attempt == LOCK_ATTEMPTS:
                raise NotifyTriggerError(
                    f"a transaction of agno's kept the table locked through {LOCK_ATTEMPTS} tries of"
                    f" {LOCK_TIMEOUT:g} s each (a long transaction writing it?): try again later") from None
            await asyncio.sleep(LOCK_TIMEOUT * attempt)


def _own_connection(opts: ConnectOptions, command: str) -> ConnectOptions:
    return ConnectOptions(opts.url, f"{opts.application_name}-{command}", opts.statement_timeout,
                          opts.connect_timeout)


async def create_triggers(opts: ConnectOptions, tables: Sequence[Watched]) -> list[str]:
    """Install the trigger on each table (idempotent); returns one line per table for the command to
    print. NotifyTriggerError names what is missing (no table, a privilege, a lock agno held)."""
    if not tables:
        raise NotifyTriggerError("no agno table to put the trigger on: agno creates its tables with its first"
                                 " run; check --schema and --session-table")
    conn = await connect(_own_connection(opts, "create-notify-trigger"))
    try:
        cur = await conn.execute(
            "SELECT current_user AS role, t.s AS schema, t.n AS name,"
            " has_schema_privilege(t.s, 'CREATE') AS can_create,"
            " has_table_privilege(quote_ident(t.s) || '.' || quote_ident(t.n), 'TRIGGER') AS can_trigger"
            " FROM unnest(%s::text[], %s::text[]) AS t(s, n)",
            ([t.schema for t in tables], [t.table for t in tables]))
        rows = await cur.fetchall()
        missing = [f"has no CREATE on schema {r['schema']}" for r in rows if not r["can_create"]]
        missing += [f"has no TRIGGER privilege on {r['schema']}.{r['name']}" for r in rows if not r["can_trigger"]]
        if missing:
            raise NotifyTriggerError(f"role {rows[0]['role']!r} {', '.join(dict.fromkeys(missing))}:"
                                     f" {_needs('create-notify-trigger')}")
        have = await triggered(conn, [(t.schema, t.table) for t in tables])
        out = []
        try:
            for schema in dict.fromkeys(t.schema for t in tables):
                await conn.execute(function_sql(schema))
            for t in tables:
                if (t.schema, t.table) in have:
                    out.append(f"trigger {TRIGGER} on {t.qualified} exists already")
                    continue
                await _locked(conn, trigger_sql(t))
                what = "a finished run" if t.kind == "runs" else "a session (agno 2.x keeps its runs there)"
                out.append(f"created trigger {TRIGGER} on {t.qualified}: notifies channel {CHANNEL} when"
                           f" agno writes {what}")
        except psycopg.errors.InsufficientPrivilege as exc:  # rights changed since the check, or a rule it missed
            raise NotifyTriggerError(f"{str(exc).strip()}: {_needs('create-notify-trigger')}") from None
        return out
    finally:
        await conn.close()


async def drop_triggers(opts: ConnectOptions, schema: str) -> list[str]:
    """Drop the trigger from every table of ``schema`` that has it, then its function (idempotent);
    returns the lines for the command to print. NotifyTriggerError when the role does not own a table."""
    conn = await connect(_own_connection(opts, "drop-notify-trigger"))
    out = []
    try:
        for s, t in sorted(await triggered(conn, None)):
            if s != schema:
                continue
            await _locked(conn, sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                sql.Identifier(TRIGGER), sql.Identifier(s, t)))
            out.append(f"dropped trigger {TRIGGER} on {s}.{t}")
        cur = await conn.execute("SELECT to_regprocedure(%s) IS NOT NULL AS found",
                                 (f"{sql.Identifier(schema, TRIGGER).as_string(conn)}()",))
        row = await cur.fetchone()
        if row is not None and row["found"]:
            await conn.execute(sql.SQL("DROP FUNCTION {}()").format(sql.Identifier(schema, TRIGGER)))
            out.append(f"dropped function {schema}.{TRIGGER}()")
        return out or [f"no trigger {TRIGGER} in schema {schema}"]
    except psycopg.errors.InsufficientPrivilege as exc:
        raise NotifyTriggerError(f"{str(exc).strip()}: dropping a trigger needs the table's owner (agno's own"
                                 " role); run drop-notify-trigger with that role's --db-url") from None
    finally:
        await conn.close()
