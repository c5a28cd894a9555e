"""`runs show` / `sessions show`: print a run or a session from the database the way the seed does.

Reads through the same typed records as the collector, so what it prints is what gets exported.
"""

from __future__ import annotations

from typing import TextIO

from .config import Settings
from .db import ConnectOptions, Database
from .readers import AgnoSource
from .records import TOKEN_FIELDS, BadRow, build_row_runs, build_session_record


def _source(settings: Settings) -> AgnoSource:
    if settings.database.url is None:
        raise SystemExit("database.url: not set (use --db-url or DATABASE_URL)")
    db = Database(ConnectOptions(settings.database.url.get_secret_value(), read_only=True))
    return AgnoSource(db, settings.database.schema_name, settings.database.runs_table_name,
                      settings.database.session_table, settings.database.layout)


async def show_run(settings: Settings, run_id: str, out: TextIO) -> int:
    source = _source(settings)
    try:
        await source.refresh(force=True)
        rows = await source.fetch_runs([(run_id, None)])
    finally:
        await source.db.close()
    if not rows:
        print(f"no run {run_id} in {source.key}", file=out)
        return 1
    try:
        held = build_row_runs(rows[0], rows[0].get("run_data"))
    except BadRow as exc:
        print(f"run {run_id} is malformed: {exc}", file=out)
        return 1
    r = held.run
    print(f"Run {r.run_id}  {r.run_type} {r.name!r}  status={r.status}  session={r.session_id}", file=out)
    if r.parent_run_id:
        print(f"  parent run: {r.parent_run_id}", file=out)
    print("RunMetrics:", file=out)
    for f, t in TOKEN_FIELDS:
        if r.totals.get(t):
            print(f"  {f:<22} {r.totals[t]}", file=out)
    print(f"  {'duration':<22} {r.duration if r.duration is not None else '-'}", file=out)
    print(f"  {'time_to_first_token':<22} {r.time_to_first_token if r.time_to_first_token is not None else '-'}",
          file=out)
    if r.cost_usd:
        print(f"  {'cost':<22} {r.cost_usd}", file=out)
    print("details:", file=out)
    for u in r.tokens:
        print(f"  {u.model_role:<12} {u.model} ({u.provider}) {u.token_type}={u.count}", file=out)
    print(f"model calls: {len(r.model_calls)}   tool calls: {len(r.tool_calls)}", file=out)
    for call in r.tool_calls:
        took = call.duration if call.duration is not None else "-"
        print(f"  {call.name} {'ERROR ' if call.error else ''}{took}s", file=out)
    if r.error_message:
        print(f"error ({r.error_type}): {r.error_message}", file=out)
    if held.nested:
        # a workflow's step runs (and a team step's members) have no row of their own: they are here
        print(f"runs nested in this run's row: {len(held.nested)}", file=out)
        for n in held.nested:
            print(f"  {n.run_id}  {n.run_type} {n.name!r}  status={n.status}  parent={n.parent_run_id}"
                  f"  input_tokens={n.totals['input']} output_tokens={n.totals['output']}", file=out)
    for key, reason in held.skipped:
        print(f"  unreadable nested run {key}: {reason}", file=out)
    return 0


async def show_session(settings: Settings, session_id: str, out: TextIO) -> int:
    source = _source(settings)
    try:
        rows = await source.sessions([session_id])
    finally:
        await source.db.close()
    if not rows:
        print(f"no session {session_id}", file=out)
        return 1
    s = build_session_record(rows[0])
    print(f"Session {s.session_id}  {s.session_type} {s.name!r}", file=out)
    print("session_metrics (as agno stored them):", file=out)
    for f, t in TOKEN_FIELDS:
        if s.totals.get(t):
            print(f"  {f:<22} {s.totals[t]}", file=out)
    if s.cost_usd:
        print(f"  {'cost':<22} {s.cost_usd}", file=out)
    return 0
