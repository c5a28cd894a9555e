"""One agno database schema, whatever its tables: which readers it needs and how their answers merge.

agno 3.x keeps a row per run in a runs table (:class:`~exporter.ingest.source.RunsTable`); agno 2.x keeps
them in the session table's ``runs`` column (:class:`~exporter.ingest.legacy.LegacyTable`); a database
half-migrated to 3.x has both, and then the runs table wins for a run id found in both. A database
often holds several apps' tables (``PostgresDb(session_table=...)`` names them), so every agno
table of the schema is found by its columns and read by a reader of its own, with its own cursor.

Run ids are uuid4s: one id in two tables is one run (agno's migration copies 2.x runs into the runs
table; a backup copy of a table holds the same runs), so dedupe, totals and sessions are shared by
all tables of the schema (the state's ``source`` is :attr:`AgnoSource.key`), and a run is counted
once whichever table the exporter met it in first. Tables are looked for again every
``collector.discovery_interval`` (every poll while none is found): a new app's table is picked up,
and so are a migration's runs table and a finished migration's empty legacy column.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from exporter.config import DatabaseSettings
from exporter.db import Database
from exporter.ingest.discovery import Layout, TablePair, discover
from exporter.ingest.legacy import LegacyTable
from exporter.ingest.runs_table import RunsTable, read_sessions
from exporter.ingest.source import Page, Snapshot, group_open_runs, parse_snapshot, snapshot_query, take_snapshot
from exporter.records.parse import row_run_id

log = logging.getLogger("agno_exporter.source")

# The legacy column must be read to find runs still open; only sessions saved this recently are.
LEGACY_OPEN_WINDOW = 86400.0
# "nothing to read" (and "cannot read") is logged at most this often, not on every poll.
WARN_EVERY = 300.0


class Reader(Protocol):
    key: str  # its cursor's name in the state
    # the table appeared while the exporter ran: all its runs are new (read even with backfill off)
    appeared: bool
    # (schema, table) agno writes a finished run to: whose writers hold the watermark (exporter.ingest.cursor)
    written: tuple[str, str]

    async def candidate_page(self, since: float, after: Any, limit: int) -> Page: ...

    async def backfill(self, after: Any, limit: int) -> Page: ...

    async def fetch_runs(self, refs: Sequence[tuple[str, str | None]]) -> list[dict[str, Any]]: ...

    async def backfill_size(self) -> tuple[int | None, str]: ...


class Source(Protocol):
    """What the collector reads agno through (:class:`AgnoSource` over Postgres; a test may hold rows in memory).

    Rows are agno's, as dicts of its columns (``run_data`` parsed); refs are
    (run id, session id or None). Times are unix seconds of the database clock."""

    async def refresh(self, force: bool = False) -> list[Reader]:
        """The readers of the tables to read now (rediscovered when ``force`` or due)."""
        ...

    async def snapshot(self) -> Snapshot:
        """The database time and the writers of every watched table (:mod:`exporter.ingest.cursor`)."""
        ...

    async def begin_poll(self, since: Mapping[str, float], limit: int) -> tuple[Snapshot, dict[str, Page]]:
        """:meth:`snapshot`, and the first candidate page (``Reader.candidate_page(since[key], None, limit)``)
        of readers that can send it with the snapshot: reader key -> page. A reader without one lists
        its first page itself."""
        ...

    async def row_ids(self, refs: Sequence[tuple[str, str | None]]) -> set[str]:
        """Which of the runs have a row of their own."""
        ...

    async def ancestors(self, refs: Sequence[tuple[str, str | None]]) -> dict[str, str]:
        """run id -> the id of its trace's root run."""
        ...

    async def open_runs(self, now: float, stuck_after: float,
                        since: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
        """Unfinished runs by run_type, name, status: n, stuck (older than ``stuck_after``), oldest.
        ``since``: reader key -> the start of its re-read window this poll (what may be read
        incrementally, :mod:`exporter.ingest.openruns`)."""
        ...

    def forget_open(self) -> None:
        """Read every open run again at the next :meth:`open_runs` (a start, a promotion, a failure)."""
        ...

    def deletion_signal(self) -> object | None:
        """What moves when agno deletes rows (:mod:`exporter.ingest.retention`); None: nothing is forgotten."""
        ...

    async def session_run_counts(self, session_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """session id -> (finished runs, unfinished runs) agno holds."""
        ...

    async def sessions(self, session_ids: Sequence[str]) -> list[dict[str, Any]]:
        """agno's session rows."""
        ...

    async def session_runs(self, session_id: str) -> list[dict[str, Any]]:
        """The rows of a session's runs, each run once."""
        ...


class AgnoSource:
    """The runs of one agno database schema: every agno table in it (or only the configured ones).

    ``runs_table`` and ``sessions_table`` name the state (:attr:`key`, as the exporter always has) and,
    with ``explicit``, are the only tables read. ``layout`` (auto, v3, v2, mixed) says which of each
    pair's readers run: discovered ones, the runs table, the legacy column, or both.
    """

    def __init__(self, db: Database, schema: str, runs_table: str, sessions_table: str, layout: str = "auto",
                 rediscover: float = 300.0, clock: Callable[[], float] = time.monotonic, explicit: bool = False,
                 warn_every: float = WARN_EVERY, quiet: bool = False) -> None:
        self.db = db
        self.schema = schema
        self.runs_table = runs_table
        self.sessions_table = sessions_table
        self.mode = layout
        self.explicit = explicit
        self.rediscover = rediscover
        self.warn_every = warn_every
        self.quiet = quiet  # a second reader of the same tables (the trace sink's): the collector's logs say it
        self.clock = clock
        # The state's name for this database: dedupe, totals and sessions are shared by every table.
        self.key = f"{schema}.{runs_table}"
        self.layout: Layout | None = None  # this schema's agno tables at the last discovery
        # every schema's, looked at now and then while nothing is read here: where agno's data is
        self.everywhere: Layout | None = None
        self.pairs: tuple[TablePair, ...] = ()  # the pairs being read
        self._runs: list[RunsTable] = []
        self._legacy: list[LegacyTable] = []
        self._initial: set[str] | None = None  # reader keys found by the first discovery
        self._checked = float("-inf")
        self._warned = float("-inf")

    @classmethod
    def from_settings(cls, db: Database, d: DatabaseSettings, rediscover: float = 300.0,
                      quiet: bool = False) -> AgnoSource:
        return cls(db, d.schema_name, d.runs_table_name, d.session_table, d.layout, rediscover=rediscover,
                   explicit=d.tables_explicit, quiet=quiet)

    # --- tables --------------------------------------------------------------------------------

    async def discover(self, everywhere: bool = False) -> Layout:
        only = (self.runs_table, self.sessions_table) if self.explicit else None
        return await discover(self.db, self.schema, only, everywhere)

    def _pairs(self, layout: Layout) -> list[tuple[TablePair, bool, bool]]:
        """(pair, read its runs table, read its legacy column) per pair, as database.layout says."""
        if self.mode == "auto":
            return [(p, bool(p.runs_table), p.sessions_has_runs) for p in layout.pairs]
        runs, legacy = self.mode in ("v3", "mixed"), self.mode in ("v2", "mixed")
        if self.explicit:  # forced and named: read them as configured, found or not
            return [(TablePair(self.runs_table, self.sessions_table, legacy, True), runs, legacy)]
        return [(p, runs and bool(p.runs_table), legacy and p.sessions_runs_column) for p in layout.pairs]

    async def refresh(self, force: bool = False) -> list[Reader]:
        """The readers the schema needs now. Discovery runs again every ``rediscover`` seconds, and on
        every call while nothing is read (agno creates its tables on first use)."""
        if not (force or not self.readers or self.clock() - self._checked >= self.rediscover):
            return self.readers
        self._checked = self.clock()
        layout = await self.discover()
        old = {r.key: r for r in self.readers}
        runs: list[RunsTable] = []
        legacy: list[LegacyTable] = []
        for pair, read_runs, read_legacy in self._pairs(layout):
            if read_runs and pair.runs_table:
                r = old.get(f"{self.schema}.{pair.runs_table}")  # keeps its open runs (exporter.ingest.openruns)
                runs.append(r if isinstance(r, RunsTable) and r.sessions_table == pair.sessions_table
                            else RunsTable(self.db, self.schema, pair.runs_table, pair.sessions_table))
            if read_legacy and pair.sessions_table and all(x.key != f"{self.schema}.{pair.sessions_table}.runs"
                                                           for x in legacy):
                # Mid-migration the legacy reader leaves out run ids its runs table has (the runs table wins).
                legacy.append(LegacyTable(self.db, self.schema, pair.sessions_table,
                                           pair.runs_table if read_runs else None))
        self._runs, self._legacy = runs, legacy
        self.pairs = tuple(p for p, _, _ in self._pairs(layout))
        keys = {r.key for r in self.readers}
        if self._initial is None:
            self._initial = keys
        for reader in self.readers:
            reader.appeared = reader.key not in self._initial
        if layout != self.layout and not self.quiet:
            log.info("agno tables in schema %r: %s (reading: %s)%s", self.schema, layout.describe(),
                     ", ".join(sorted(keys)) or "nothing yet",
                     "".join(f"; not read: {t.qualified}: {why}" for t, why in layout.unread))
        self.layout = layout
        if self.readers:
            self.everywhere = None
        if not self.quiet:
            await self._warn(layout)
        return self.readers

    async def _warn(self, layout: Layout) -> None:
        """Say every few minutes, not every poll, what makes the exporter read nothing or less."""
        unreadable = [t for t, why in layout.unread if not t.readable and t.schema == self.schema]
        if (self.readers and not unreadable) or self.clock() - self._warned < self.warn_every:
            return
        self._warned = self.clock()
        for t in unreadable:
            log.warning("cannot read %s: this role has no SELECT privilege on it (GRANT SELECT ON %s TO the"
                        " exporter's role)", t.describe(), t.qualified)
        if self.readers:
            return
        if self.mode != "auto" and self.explicit:
            return  # forced tables are read whether found or not: the poll itself says what is missing
        # Where is agno's data, if not here? The whole catalog, only now and then.
        self.everywhere = await self.discover(everywhere=True)
        log.warning("%s; nothing is exported until agno writes one (checking every poll, this warning"
                    " repeats every %.0fs)", nothing_to_read(self.everywhere, self.explicit, self.runs_table,
                                                             self.sessions_table), self.warn_every)

    @property
    def readers(self) -> list[Reader]:
        return [*self._runs, *self._legacy]

    def tables_read(self) -> dict[str, int] | None:
        """How many tables are read, by layout: runs tables (v3), legacy runs columns (v2); None before
        the first discovery."""
        if self._initial is None:
            return None
        return {"v3": len(self._runs), "v2": len(self._legacy)}

    def describe_reading(self) -> str:
        """One line for people: what is read, or why nothing is."""
        if self.layout is None:
            return "not discovered yet"
        if self.readers:
            return ", ".join(r.key for r in self.readers)
        return nothing_to_read(self.everywhere or self.layout, self.explicit, self.runs_table, self.sessions_table)

    def table_report(self) -> list[tuple[str, str]]:
        """(table, what the exporter does with it) for every agno table it knows of, for the landing page."""
        if self.layout is None:
            return []
        out = [(f"{self.schema}.{r.runs_table}", "read (agno 3.x runs table)") for r in self._runs]
        # the session table of a runs table is read too (agno's stored session totals, checked against the
        # runs): listed, so this section names the same tables as the status line's "tables read"
        legacy = {r.table for r in self._legacy}
        out += [(t, "read (the session totals agno stores)") for t in dict.fromkeys(
            f"{self.schema}.{r.sessions_table}" for r in self._runs if r.sessions_table) if t not in legacy]
        out += [(r.table, "read (its agno 2.x runs column)") for r in self._legacy]
        layout = self.everywhere or self.layout
        out += [(t.qualified, f"not read: {why}") for t, why in layout.unread]
        return out

    # --- merged answers ------------------------------------------------------------------------

    async def snapshot(self) -> Snapshot:
        """One snapshot for every table read (agno 2.x's runs are in a session table): call it after
        :meth:`refresh`, so that each reader's table is watched."""
        snap = await take_snapshot(self.db, [r.written for r in self.readers])
        self._observe(snap)
        return snap

    async def begin_poll(self, since: Mapping[str, float], limit: int) -> tuple[Snapshot, dict[str, Page]]:
        """The snapshot and the runs tables' first candidate pages with their open runs' window, in one
        round trip: a pipeline, whose statements Postgres runs one after the other, each with a snapshot
        of its own (read committed), so every page is read after the snapshot statement, as
        :mod:`exporter.ingest.cursor` requires. An idle poll is then one round trip in all."""
        tables = [r.written for r in self.readers]
        firsts = {r.key: q for r in self._runs if r.key in since and (q := r.first_page(since[r.key], limit))}
        if not firsts:
            return await self.snapshot(), {}
        async with self.db.statement() as conn:
            async with conn.pipeline():
                snap_cur = await conn.execute(snapshot_query(tables))
                page_curs = {key: await conn.execute(query, params) for key, (query, params) in firsts.items()}
            snap = parse_snapshot(tables, await snap_cur.fetchall())
            self._observe(snap)  # before the pages: it resets what the trackers absorbed
            pages = {r.key: r.first_page_of(since[r.key], limit, await page_curs[r.key].fetchall())
                     for r in self._runs if r.key in page_curs}
        return snap, pages

    def _observe(self, snap: Snapshot) -> None:
        for runs in self._runs:
            runs.open.observe(snap.signal_of(runs.written))

    def deletion_signal(self) -> object | None:
        """What moves when agno deletes rows from the tables read (:mod:`exporter.ingest.retention`), as the
        last poll read it: equal values mean nothing was deleted in between. None while an agno 2.x
        runs column is read (a run leaves it by a rewrite of its session, no deletion); an object
        equal to nothing when a table's signal is unknown."""
        if self._legacy or not self._runs:
            return None
        signals = tuple(r.open.signal for r in self._runs)
        if any(s is None or None in s for s in signals):
            return object()
        return signals

    def forget_open(self) -> None:
        """Read every open run again at the next poll (a start, a promotion, a reconnect: what happened
        meanwhile is not known)."""
        for runs in self._runs:
            runs.open.forget()

    async def fetch_runs(self, refs: Sequence[tuple[str, str | None]]) -> list[dict[str, Any]]:
        """Rows of the given runs, from the runs tables first (they win), then the legacy columns."""
        rows: list[dict[str, Any]] = []
        rest = list(refs)
        for reader in self.readers:
            if not rest:
                break
            found = await reader.fetch_runs(rest)
            rows.extend(found)
            ids = {row_run_id(r) for r in found}
            rest = [ref for ref in rest if ref[0] not in ids]
        return rows

    async def fetch_children(self, parents: Sequence[tuple[str, str | None]]) -> list[dict[str, Any]]:
        """Rows of the finished runs whose parent is one of these (a team's member runs), from every
        table read, each run once (the runs tables first: they win)."""
        parts = [await r.fetch_children(parents) for r in self._runs]
        parts += [await r.fetch_children(parents) for r in self._legacy]
        return _each_run_once(parts)

    async def row_ids(self, refs: Sequence[tuple[str, str | None]]) -> set[str]:
        """Which of these (run id, session id) are rows of agno's in any table read (not nested copies)."""
        found: set[str] = set()
        rest = list(refs)
        for runs in self._runs:
            if not rest:
                return found
            found |= await runs.row_ids([run_id for run_id, _ in rest])
            rest = [ref for ref in rest if ref[0] not in found]
        for legacy in self._legacy:
            if not rest:
                break
            found |= await legacy.row_ids(rest)
            rest = [ref for ref in rest if ref[0] not in found]
        return found

    async def ancestors(self, refs: Sequence[tuple[str, str | None]]) -> dict[str, str]:
        """run id -> id of its trace's root run, from the table that holds the run."""
        roots: dict[str, str] = {}
        rest = list(refs)
        for runs in self._runs:
            if not rest:
                return roots
            roots.update(await runs.ancestors([run_id for run_id, _ in rest]))  # only ids it has
            rest = [ref for ref in rest if ref[0] not in roots]
        for legacy in self._legacy:
            if not rest:
                break
            roots.update(await legacy.ancestors(rest))
            rest = [ref for ref in rest if ref[0] not in roots]
        return roots

    async def open_runs(self, now: float, stuck_after: float,
                        since: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
        """Open runs of every table read, grouped (:func:`exporter.ingest.source.group_open_runs`). ``since``:
        reader key -> the start of its re-read window this poll (unix seconds); a runs table without
        one has every open run read (see :mod:`exporter.ingest.openruns`)."""
        parts: list[dict[str, Any]] = []
        for runs in self._runs:
            parts.extend(await runs.open_runs(now, stuck_after, since=(since or {}).get(runs.key)))
        for legacy in self._legacy:
            parts.extend(await legacy.open_runs(now, stuck_after, LEGACY_OPEN_WINDOW))
        return group_open_runs(parts)

    async def session_run_counts(self, session_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        counts: dict[str, tuple[int, int]] = {}
        parts = [await r.session_run_counts(session_ids) for r in self._runs]
        parts += [await r.session_run_counts(session_ids) for r in self._legacy]
        for part in parts:
            for sid, (final, open_) in part.items():
                f0, o0 = counts.get(sid, (0, 0))
                counts[sid] = (f0 + final, o0 + open_)
        return counts

    async def sessions(self, session_ids: Sequence[str]) -> list[dict[str, Any]]:
        """agno's session rows, from every session table read (a session id is in one of them)."""
        out: dict[str, dict[str, Any]] = {}
        for table in dict.fromkeys(p.sessions_table for p in self.pairs if p.sessions_table):
            rest = [sid for sid in session_ids if sid not in out]
            if not rest:
                break
            out.update((r["session_id"], r) for r in await read_sessions(self.db, self.schema, table, rest))
        return list(out.values())

    async def session_runs(self, session_id: str) -> list[dict[str, Any]]:
        """Rows of every run of one session (``sessions show``), from every table read, each run once:
        the runs tables first (they win, as in :meth:`fetch_runs`), then the legacy columns."""
        parts = [await r.session_runs(session_id) for r in self._runs]
        parts += [await r.session_runs(session_id) for r in self._legacy]
        return _each_run_once(parts)


def _each_run_once(parts: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The rows of several tables' answers, a run id once: the first table's copy wins."""
    rows: list[dict[str, Any]] = []
    seen: set[str | None] = set()
    for part in parts:
        for row in part:
            run_id = row_run_id(row)
            if run_id not in seen:
                seen.add(run_id)
                rows.append(row)
    return rows


def nothing_to_read(layout: Layout, explicit: bool, runs_table: str, sessions_table: str) -> str:
    """Why no agno table is read, and where agno's data is, for logs, `check` and the landing page."""
    schema = layout.schema
    here = [(t, why) for t, why in layout.unread if t.schema == schema]
    if explicit:
        text = (f"no agno table {schema}.{runs_table} or {schema}.{sessions_table} to read (database.session_table"
                " / database.runs_table)")
        others = [t for t, _ in here if t.name not in (runs_table, sessions_table)]
        if others:
            text += (f"; agno tables in schema {schema!r}: {', '.join(t.describe() for t in others)}"
                     " (leave database.session_table and database.runs_table unset to read them all)")
    else:
        text = f"no agno tables in schema {schema!r}"
    unreadable = [t for t, _ in here if not t.readable and (not explicit or t.name in (runs_table, sessions_table))]
    if unreadable:
        text += (f"; found but not readable by this role: {', '.join(t.qualified for t in unreadable)}"
                 " (GRANT SELECT on them)")
    elsewhere = layout.elsewhere()
    if elsewhere:
        schemas = sorted({t.schema for t in elsewhere})
        text += (f"; found {', '.join(t.describe() for t in elsewhere)}: set database.schema to "
                 + " or ".join(repr(s) for s in schemas))
    return text
