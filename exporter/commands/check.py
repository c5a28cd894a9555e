"""`agno-exporter check`: validate the config, connect, and say what was found.

Exit status 0 when the exporter could run as configured, 1 otherwise; each problem is one line.
"""

from __future__ import annotations

from typing import TextIO

import psycopg

from exporter.commands.notify_trigger import check_line as notify_check
from exporter.commands.notify_trigger import layout_tables
from exporter.config import Settings
from exporter.db import ConnectOptions, Database, one_line, redact
from exporter.ingest.discovery import discover
from exporter.ingest.readers import nothing_to_read
from exporter.ingest.spans_table import SpansTable
from exporter.state.store import PostgresState

LAYOUT_READS = {"v3": "only the runs table", "v2": "only the legacy runs column", "mixed": "both"}


async def run_check(settings: Settings, out: TextIO) -> int:
    ok = True

    def say(mark: str, text: str) -> None:
        print(f"[{mark}] {text}", file=out)

    if settings.database.url is None:
        # invalid configuration (exit 2, as every command says it), not "valid" and then a failure
        say("FAIL", "database.url: not set (use --db-url, DATABASE_URL or the config file)")
        return 2
    say("ok", "configuration is valid")
    url = settings.database.url.get_secret_value()
    db = Database(ConnectOptions(url, settings.database.application_name, settings.database.statement_timeout,
                                 settings.database.connect_timeout, read_only=True))
    try:
        conn = await db.conn()
        say("ok", f"connected to {redact(url)} (PostgreSQL {conn.info.server_version // 10000})")
        d = settings.database
        only = (d.runs_table_name, d.session_table) if d.tables_explicit else None
        layout = await discover(db, d.schema_name, only, everywhere=True)
        forced = d.layout
        if not layout.pairs:
            say("FAIL", f"database: {nothing_to_read(layout, d.tables_explicit, d.runs_table_name, d.session_table)}")
            ok = False
        else:
            for pair in layout.pairs:
                say("ok", f"agno layout {pair.version}: {pair.describe(d.schema_name)}")
                if pair.version == "mixed" and forced in ("auto", "mixed"):
                    say("ok", "mid-migration database: both are read; a run found in both counts once"
                              " (the runs table wins)")
            if forced != "auto" and forced != layout.version:
                say("warn", f"database.layout is {forced!r} but the database looks {layout.version!r}:"
                            f" reading {LAYOUT_READS[forced]} as configured")
            for table, why in layout.unread:
                if table.schema == d.schema_name:
                    say("warn" if not table.readable else "--", f"not read: {table.describe()}: {why}")
            elsewhere = layout.elsewhere()
            if elsewhere:
                say("--", f"agno tables in other schemas, not read (database.schema is {d.schema_name!r}): "
                          + ", ".join(t.describe() for t in elsewhere))
            tables = layout_tables(d.schema_name, layout, forced)
            say(*await notify_check(conn, settings.collector.wake_on_notify, tables))
        say(*await _tracing_tables(settings, db))
    except psycopg.Error as exc:
        say("FAIL", f"database.url: cannot connect or read: {redact(one_line(exc), url)}")
        return 1
    finally:
        await db.close()

    state_url = settings.state.url.get_secret_value() if settings.state.url else url
    state_db = Database(ConnectOptions(state_url, settings.database.application_name + "-state",
                                       settings.database.statement_timeout, settings.database.connect_timeout))
    try:
        writable, why = await PostgresState(state_db, settings.state.schema_name, "check").can_write()
        say("ok" if writable else "FAIL", f"state: {why}")
        ok = ok and writable
    except psycopg.Error as exc:
        say("FAIL", f"state.url: cannot connect: {redact(one_line(exc), state_url)}")
        ok = False
    finally:
        await state_db.close()
    return 0 if ok else 1


async def _tracing_tables(settings: Settings, db: Database) -> tuple[str, str]:
    """Whether agno's own tracing tables exist. Missing is not a failure: agno creates them when its
    tracing first writes, and the forwarder waits for them."""
    d = settings.database
    spans = SpansTable(db, d.schema_name, d.spans_table, d.traces_table)
    found = await spans.tables()
    forwarding = settings.traces.forward_agno_spans
    if d.spans_table in found:
        what = "forwarded" if forwarding else "not forwarded (traces.forward_agno_spans: false)"
        return "ok", f"agno tracing tables: {', '.join(f'{d.schema_name}.{t}' for t in found)}; spans {what}"
    wait = "; traces.forward_agno_spans waits for them" if forwarding else ""
    return "--", (f"no agno tracing table {spans.key}: agno's tracing is off or has not written yet "
                  f"(setup_tracing(db=...) or AgentOS tracing=True creates it){wait}")
