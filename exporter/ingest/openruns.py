"""The runs still open (PENDING/RUNNING) in one agno 3.x runs table, read from what changed only.

The in-progress gauges (``agno_runs_in_progress``, ``agno_runs_stuck``, the oldest open run's age)
need every open run, and a live database keeps some runs open for ever (a process killed mid-run
leaves its row RUNNING), so re-reading all open runs on every poll made an idle poll cost more the
more history the table held. :class:`OpenRunsTracker` keeps them in memory instead and each poll reads only

* the rows written since the previous poll: ``updated_at >= L - clock_skew``, the collector's own
  re-read window (see :mod:`exporter.ingest.cursor`): every row version a poll's read did not see is
  stamped at or after it, so a run that started, moved on or finished since is read again and its
  entry updated or dropped. An index range scan with the opt-in index (``create-index``): none of
  agno's rows is read when nothing was written;
* a change signal, read by the poll's snapshot statement (:func:`exporter.ingest.source.take_snapshot`):
  the table's oid and file (a ``TRUNCATE``, a re-created table) and its deleted-rows counter
  (``pg_stat_get_tuples_deleted``). Deleting a row leaves no stamp, so when the signal moves the open
  runs are read whole once (agno's ``status`` index), which is also the first read of a process.

The window's rows come with the poll's first candidate page, in the same statement
(:meth:`exporter.ingest.runs_table.RunsTable.candidate_page`, :meth:`OpenRunsTracker.absorb`): an idle poll
makes two statements in all, the snapshot and that page (it made three, and this one's catalog lookups
were half of Postgres's share of the poll).

They are read whole on every poll, as before, where the window cannot be used: without an index
on ``updated_at`` (the range read would scan the whole table, twice per poll with the candidates'),
with ``track_counts`` off (no deletion counter), for a partitioned table (its counters are its
partitions'), on a backfill poll (no watermark yet). Whether it can is looked up in the catalog with
every whole read and at least every :data:`USABLE_RECHECK` seconds (an index made by ``create-index``
while the exporter runs is used from then on).

The counters are flushed by each backend after its transaction ends, within about a second (a
busy backend may wait up to a minute): a deleted open run leaves the gauges that much later, never
wrongly for longer. A row whose status is changed without a new ``updated_at`` (a manual UPDATE
that does not stamp it) is not seen until the next whole read, the same assumption the counting
makes (:mod:`exporter.ingest.cursor`).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from exporter.db import Database
from exporter.ingest.source import Signal
from exporter.records.parse import run_identity

OPEN = ("PENDING", "RUNNING")  # what the in-progress gauges count (PAUSED waits for a person)
USABLE_RECHECK = 300.0  # seconds between catalog lookups of whether the window can be used (discovery's pace)


@dataclass(slots=True)
class OpenRun:
    run_type: str
    name: str  # the label (exporter.records.values.run_label)
    status: str
    created_at: int | None  # unix seconds, agno's stamp


# Whether the window can be read (see the module's docstring): an index led by updated_at, a plain table,
# the statistics that count deleted rows.
_USABLE = """current_setting('track_counts')::bool AND k.relkind = 'r'
    AND EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                WHERE i.indrelid = k.oid AND a.attname = 'updated_at' AND i.indisvalid AND i.indpred IS NULL)"""
_CHECK = "SELECT coalesce((SELECT " + _USABLE + " FROM pg_class k WHERE k.oid = to_regclass(%(rel)s)), false) AS usable"
# Every open run, and whether the window can be used from now on, in one statement.
_WHOLE = """
SELECT u.usable, r.run_id, r.status, r.created_at
FROM (""" + _CHECK + """) u
LEFT JOIN LATERAL (SELECT run_id, status, created_at FROM {t} WHERE status = ANY(%(open)s)) r ON true
"""


class OpenRunsTracker:
    """The open runs of ``schema.table`` (agno 3.x runs table), kept up to date by :meth:`update`.

    ``rows_read`` and ``whole_reads`` count, over the object's life, the rows of agno's table sent to
    the exporter and the reads of every open run: what an idle poll costs is their growth (0 and 0
    when nothing was written, whatever the table's size).
    """

    def __init__(self, db: Database, schema: str, table: str, identity: sql.Composable) -> None:
        self.db = db
        self._identity = identity  # identity keys out of run_data (ingest.source.identity_projection)
        self._t = sql.Identifier(schema, table)
        self._rel = f"{_quote(schema)}.{_quote(table)}"
        self.runs: dict[str, OpenRun] = {}
        # (run type, name, status) -> the sorted created_at of its open runs (None: unknown start),
        # rebuilt only after a change: a poll that changed nothing costs one bisect per group
        self._groups: dict[tuple[str, str, str], tuple[list[int], int]] | None = None
        self._signal: Signal | None = None  # at the last update; None: read every open run next time
        self._seen: Signal | None = None  # this poll's, from its snapshot (observe)
        self._usable = False  # the window can be read (catalog, at _usable_at: database time)
        self._usable_at = float("-inf")
        self._window: tuple[int, list[dict[str, Any]]] | None = None  # (since, rows) absorbed this poll
        self.rows_read = 0
        self.whole_reads = 0

    @property
    def signal(self) -> Signal | None:
        """The table's change signal at the last :meth:`update` (oid, file, deleted rows; a None field:
        unknown), None before the first."""
        return self._signal

    def forget(self) -> None:
        """Read every open run on the next :meth:`update` (a new process, a new leader, a dropped table)."""
        self._signal = None

    def observe(self, signal: Signal) -> None:
        """A poll begins: its snapshot read this change signal. Forgets any window absorbed before."""
        self._seen = signal
        self._window = None

    def wants_window(self, since: float | None) -> bool:
        """Whether the poll's first candidate page should bring the rows stamped at or after ``since``."""
        return since is not None and self._usable and self._signal is not None

    def absorb(self, since: float, rows: list[dict[str, Any]]) -> None:
        """The rows (run_id, status, created_at) stamped at or after ``since`` (unix seconds), read after
        this poll's snapshot: what :meth:`update` applies when nothing was deleted."""
        self._window = (int(since), rows)

    async def update(self, since: float | None, now: float) -> None:
        """Bring :attr:`runs` up to date. ``since``: the re-read window's start (unix seconds, the
        collector's low watermark minus clock_skew), None to read every open run; ``now``: the
        snapshot's database time. Uses the window absorbed this poll when the signal did not move,
        else reads every open run (one statement; the catalog is consulted in it)."""
        signal = self._seen if self._seen is not None else (None, None, None)
        window, self._window = self._window, None
        whole = (since is None or window is None or window[0] != int(since) or not self._usable
                 or signal != self._signal or None in signal)
        async with self.db.statement() as conn:
            if whole:
                cur = await conn.execute(sql.SQL(_WHOLE).format(t=self._t), {"rel": self._rel, "open": list(OPEN)})
                rows = await cur.fetchall()
                self._usable, self._usable_at = bool(rows[0]["usable"]), now
                changed = [r for r in rows if r["run_id"] is not None]
                self.whole_reads += 1
            else:
                assert window is not None
                changed = window[1]
                if now - self._usable_at >= USABLE_RECHECK:
                    cur = await conn.execute(_CHECK, {"rel": self._rel})
                    self._usable, self._usable_at = bool((await cur.fetchall())[0]["usable"]), now
            self.rows_read += len(changed)
            fresh = self._apply(changed, whole)
            if fresh:
                await self._name(conn, fresh)
        self._signal = signal

    def _apply(self, rows: Iterable[dict[str, Any]], whole: bool) -> list[dict[str, Any]]:
        """Update the entries from the rows read; returns the rows of open runs not named yet."""
        rows = list(rows)
        if rows or whole:
            self._groups = None
        if whole:
            kept = {r["run_id"]: self.runs[r["run_id"]] for r in rows if r["run_id"] in self.runs}
            self.runs = kept
        fresh = []
        for r in rows:
            run = self.runs.get(r["run_id"])
            if r["status"] not in OPEN:
                self.runs.pop(r["run_id"], None)
            elif run is None:
                fresh.append(r)
            else:
                run.status, run.created_at = r["status"], r["created_at"]
        return fresh

    async def _name(self, conn: Any, rows: list[dict[str, Any]]) -> None:
        """Name new open runs: a run's name never changes, so its JSON is read once per run."""
        cur = await conn.execute(sql.SQL(
            "SELECT run_id, run_type, agent_id, team_id, workflow_id, {ident} AS run_data FROM {t}"
            " WHERE run_id = ANY(%(ids)b)").format(t=self._t, ident=self._identity),
            {"ids": [r["run_id"] for r in rows]})
        named = {r["run_id"]: r for r in await cur.fetchall()}
        self.rows_read += len(named)
        for r in rows:
            n = named.get(r["run_id"])
            if n is None:
                continue  # deleted between the two reads
            run_type, _, name = run_identity(n, n["run_data"] or {})
            self.runs[r["run_id"]] = OpenRun(run_type, name, r["status"], r["created_at"])
        self._groups = None

    def groups(self, cutoff: float) -> list[dict[str, Any]]:
        """The open runs per (run type, name, status) in :func:`exporter.ingest.source.group_open_runs`'s
        shape: how many, how many stuck (created before ``cutoff``, unix seconds), the oldest start."""
        if self._groups is None:
            starts: dict[tuple[str, str, str], list[int]] = {}
            unknown: dict[tuple[str, str, str], int] = {}
            for run in self.runs.values():
                key = (run.run_type, run.name, run.status)
                if run.created_at is None:
                    unknown[key] = unknown.get(key, 0) + 1
                    starts.setdefault(key, [])
                else:
                    starts.setdefault(key, []).append(run.created_at)
            self._groups = {key: (sorted(times), unknown.get(key, 0)) for key, times in starts.items()}
        return [{"run_type": key[0], "name": key[1], "status": key[2], "n": len(times) + unknown,
                 "stuck": bisect.bisect_left(times, cutoff), "oldest": times[0] if times else None}
                for key, (times, unknown) in self._groups.items()]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
