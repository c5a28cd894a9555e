"""`runs show` / `sessions show`: a run or a session from agno's database, as agno reports it.

``runs show`` prints the run's metrics the way agno's own ``pprint(run_output.metrics)`` does (agno's
``RunMetrics`` and ``ModelMetrics`` field names and values, fields agno did not store left out, the
three token totals always shown), then its tool calls the way ``pprint(run_output.tools)`` names them.
``sessions show`` lists the session's runs (member runs under their team run) and prints the sum of
their metrics beside agno's stored ``session_metrics``, marking every field where they disagree: agno
updates a session's totals by read-modify-write, so runs of one session finishing together lose
updates (see the README, "Exactly once"); the exporter counts the runs.

Not found, both read ``no run 'ID' in <table>`` / ``no session 'ID' in <table>`` on stderr, exit 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO

from exporter.config import ConfigError, Settings
from exporter.db import ConnectOptions, Database
from exporter.ingest.readers import AgnoSource
from exporter.records.nesting import build_row_runs
from exporter.records.parse import build_run_record
from exporter.records.runs import BadRow, RunRecord, SessionRun
from exporter.records.sessions import (
    AGNO_TOKEN_FIELDS,
    StoredMetrics,
    build_session_record,
    build_session_run,
    counted_in_session_totals,
    run_stored_metrics,
    session_stored_metrics,
)

ALWAYS = ("input_tokens", "output_tokens", "total_tokens")  # shown even when 0, so "no tokens" is visible


def _source(settings: Settings) -> AgnoSource:
    d = settings.database
    if d.url is None:
        # the same error, and exit status 2, as collect's: a missing URL is invalid configuration
        raise ConfigError("database.url: not set (use --db-url, DATABASE_URL or the config file)")
    db = Database(ConnectOptions(d.url.get_secret_value(), d.application_name, d.statement_timeout,
                                 d.connect_timeout, read_only=True))
    return AgnoSource.from_settings(db, d, quiet=True)


async def _where(source: AgnoSource, kind: str) -> str:
    """Where a run or session was looked for, as the user would name it: the tables read, or why
    none is (and the schemas that do hold agno tables)."""
    if not source.readers:
        text = f"schema {source.schema!r}: it has no agno tables (check --schema and --session-table)"
        elsewhere = (await source.discover(everywhere=True)).elsewhere()
        if elsewhere:
            text += f"; agno tables found in {', '.join(t.describe() for t in elsewhere)}"
        return text
    if kind == "run":
        return " or ".join(r.key for r in source.readers)
    tables = dict.fromkeys(f"{source.schema}.{p.sessions_table}" for p in source.pairs if p.sessions_table)
    return " or ".join(tables) or f"{source.schema}.{source.sessions_table}"


def _not_found(kind: str, ident: str, where: str, err: TextIO) -> int:
    print(f"no {kind} {ident!r} in {where}", file=err)
    return 1


def _num(value: float) -> str:
    return repr(value)


def _fields(tokens: Mapping[str, int], cost: float | None) -> list[str]:
    out = [f"{f}={tokens[f]}" for f in AGNO_TOKEN_FIELDS if f in ALWAYS or tokens[f]]
    if cost is not None:
        out.append(f"cost={_num(cost)}")
    return out


def print_run_metrics(m: StoredMetrics, out: TextIO) -> None:
    """agno's ``RunMetrics`` as its ``pprint`` shows it: field per line, details per model role."""
    print("RunMetrics(", file=out)
    lines = _fields(m.tokens, m.cost)
    if m.time_to_first_token is not None:
        lines.append(f"time_to_first_token={_num(m.time_to_first_token)}")
    if m.duration is not None:
        lines.append(f"duration={_num(m.duration)}")
    for line in lines:
        print(f"    {line},", file=out)
    if m.details:
        print("    details={", file=out)
        roles: dict[str, list[str]] = {}
        for d in m.details:
            fields = [f"id={d.id!r}", f"provider={d.provider!r}", *_fields(d.tokens, d.cost)]
            roles.setdefault(d.model_role, []).append(f"ModelMetrics({', '.join(fields)})")
        for role, entries in roles.items():
            print(f"        {role!r}: [", file=out)
            for entry in entries:
                print(f"            {entry},", file=out)
            print("        ],", file=out)
        print("    },", file=out)
    print(")", file=out)


def print_tools(r: RunRecord, out: TextIO) -> None:
    """The run's tool calls under agno's ``ToolExecution`` field names."""
    if not r.tool_calls:
        print("tools=[]", file=out)
        return
    print("tools=[", file=out)
    for t in r.tool_calls:
        took = f"ToolCallMetrics(duration={_num(t.duration)})" if t.duration is not None else "None"
        print(f"    ToolExecution(tool_name={t.name!r}, tool_call_id={t.call_id!r}, "
              f"tool_call_error={t.error}, metrics={took}),", file=out)
    print("]", file=out)


async def show_run(settings: Settings, run_id: str, out: TextIO, err: TextIO) -> int:
    source = _source(settings)
    try:
        await source.refresh(force=True)
        rows = await source.fetch_runs([(run_id, None)])
        where = "" if rows else await _where(source, "run")
    finally:
        await source.db.close()
    if not rows:
        return _not_found("run", run_id, where, err)
    try:
        held = build_row_runs(rows[0], rows[0].get("run_data"))
        metrics = run_stored_metrics(rows[0].get("run_data"))
    except BadRow as exc:
        print(f"run {run_id!r} is malformed: {exc}", file=err)
        return 1
    r = held.run
    print(f"Run {r.run_id}: {r.run_type} {r.name!r}, {r.status}, session {r.session_id}", file=out)
    if r.parent_run_id:
        print(f"  member run of {r.parent_run_id}", file=out)
    print(f"  model {r.model} ({r.provider}), {len(r.model_calls)} model call(s), {len(r.tool_calls)} tool call(s)",
          file=out)
    if r.error_message:
        print(f"  error ({r.error_type}): {r.error_message}", file=out)
    print_run_metrics(metrics, out)
    print_tools(r, out)
    if held.nested:
        # a workflow's step runs (and a team step's members) have no row of their own: they are here
        print(f"runs nested in this run's row: {len(held.nested)}", file=out)
        for n in held.nested:
            print(f"  {n.run_id}  {n.run_type} {n.name!r}  status={n.status}  parent={n.parent_run_id}"
                  f"  input_tokens={n.totals['input']} output_tokens={n.totals['output']}", file=out)
    for key, reason in held.skipped:
        print(f"  unreadable nested run {key}: {reason}", file=out)
    return 0


# --- sessions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    record: RunRecord
    metrics: StoredMetrics


def _ordered(runs: Sequence[_Run]) -> list[tuple[int, _Run]]:
    """(depth, run): top-level runs by start time, each followed by its member runs, indented."""
    children: dict[str | None, list[_Run]] = {}
    ids = {r.record.run_id for r in runs}
    for r in runs:
        parent = r.record.parent_run_id if r.record.parent_run_id in ids else None
        children.setdefault(parent, []).append(r)
    out: list[tuple[int, _Run]] = []

    def walk(parent: str | None, depth: int) -> None:
        for r in sorted(children.get(parent, []), key=lambda r: (r.record.created_at, r.record.run_id)):
            out.append((depth, r))
            if depth < 32:
                walk(r.record.run_id, depth + 1)

    walk(None, 0)
    return out


def _sum(metrics: Iterable[StoredMetrics]) -> tuple[dict[str, int], float | None]:
    """agno's own rule (``SessionMetrics.accumulate_from_run``): tokens add up; cost adds up where reported."""
    tokens = dict.fromkeys(AGNO_TOKEN_FIELDS, 0)
    cost: float | None = None
    for m in metrics:
        for f in AGNO_TOKEN_FIELDS:
            tokens[f] += m.tokens[f]
        if m.cost is not None:
            cost = (cost or 0.0) + m.cost
    return tokens, cost


def _table(rows: Sequence[Sequence[str]], out: TextIO, right: Sequence[bool]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)]
        print(("  " + "  ".join(cells)).rstrip(), file=out)


async def show_session(settings: Settings, session_id: str, out: TextIO, err: TextIO) -> int:
    source = _source(settings)
    try:
        await source.refresh(force=True)
        rows = await source.sessions([session_id])
        run_rows = await source.session_runs(session_id) if rows else []
        where = "" if rows else await _where(source, "session")
    finally:
        await source.db.close()
    if not rows:
        return _not_found("session", session_id, where, err)
    try:
        s = build_session_record(rows[0])
        stored = session_stored_metrics(rows[0])
    except BadRow as exc:
        print(f"session {session_id!r} is malformed: {exc}", file=err)
        return 1
    runs: list[_Run] = []
    session_runs: list[SessionRun] = []
    malformed: list[str] = []
    for row in run_rows:
        try:
            runs.append(_Run(build_run_record(row, row.get("run_data")), run_stored_metrics(row.get("run_data"))))
            session_runs.append(build_session_run(row, row.get("run_data")))
        except BadRow as exc:
            malformed.append(f"{row.get('run_id') or '?'}: {exc}")
    # agno 2.3.5-2.5.3 leave a team run's member runs out of the session totals (records.TEAM_TOTALS)
    finished = [r for r in session_runs if r.final]
    left_out = {r.run_id for r in finished} - {r.run_id for r in counted_in_session_totals(finished)}

    print(f"Session {s.session_id}: {s.session_type} {s.name!r}, {len(runs)} run(s)", file=out)
    if runs:
        table = [["run", "type", "name", "status", "input_tokens", "output_tokens", "total_tokens"]]
        for depth, r in _ordered(runs):
            rec, t = r.record, r.metrics.tokens
            table.append(["  " * depth + rec.run_id, rec.run_type, rec.name, rec.status,
                          str(t["input_tokens"]), str(t["output_tokens"]), str(t["total_tokens"])])
        _table(table, out, [False] * 4 + [True] * 3)
    for line in malformed:
        print(f"  malformed run, left out of the sum: {line}", file=out)

    summed, summed_cost = _sum(r.metrics for r in runs if r.record.run_id not in left_out)
    fields = [f for f in AGNO_TOKEN_FIELDS if f in ALWAYS or summed[f] or stored.tokens[f]]
    table = [["", "sum of the runs it counts" if left_out else "sum of its runs", "agno's session_metrics", ""]]
    differ: list[str] = []
    for f in fields:
        mark = "differs" if summed[f] != stored.tokens[f] else ""
        if mark:
            differ.append(f)
        table.append([f, str(summed[f]), str(stored.tokens[f]), mark])
    if summed_cost is not None or stored.cost is not None:
        same = summed_cost is not None and stored.cost is not None and abs(summed_cost - stored.cost) <= 1e-9 * max(
            1.0, abs(stored.cost))
        if not same:
            differ.append("cost")
        table.append(["cost", "-" if summed_cost is None else _num(summed_cost),
                      "-" if stored.cost is None else _num(stored.cost), "" if same else "differs"])
    print(file=out)
    _table(table, out, [False, True, True, False])
    print(file=out)
    if left_out:
        print(f"agno 2.3.5-2.5.3 add only a team run's own metrics to a team session's totals: {len(left_out)} "
              "member run(s) are left out of the sum above (the exporter counts every run).", file=out)
    if differ:
        print(f"agno's stored session totals disagree with the sum of the session's runs ({', '.join(differ)}): "
              "agno loses updates of a session's totals when its runs finish concurrently; the exporter "
              "counts the runs.", file=out)
    else:
        summed_what = "runs they count" if left_out else "session's runs"
        print(f"agno's stored session totals agree with the sum of the {summed_what}.", file=out)
    return 0
