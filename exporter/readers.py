"""One agno database, whatever its layout: which readers it needs and how their answers merge.

agno 3.x keeps a row per run in the runs table (:class:`~exporter.source.RunsSource`); agno 2.x
keeps them in the sessions table's ``runs`` column (:class:`~exporter.legacy.LegacySource`); a
database half-migrated to 3.x has both, and then the runs table wins for a run id found in both.
With ``database.layout: auto`` the layout is discovered at start and re-checked every few minutes
(an app upgraded from 2.x creates the runs table; a finished migration empties the legacy column).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .db import Database
from .legacy import LegacySource
from .source import Layout, Page, RunsSource, Snapshot, discover

log = logging.getLogger("agno_exporter.source")

# The legacy column must be read to find runs still open; only sessions saved this recently are.
LEGACY_OPEN_WINDOW = 86400.0


class Reader(Protocol):
    key: str  # its cursor's name in the state

    async def candidate_page(self, since: float, after: Any, limit: int) -> Page: ...

    async def backfill(self, after: Any, limit: int) -> Page: ...

    async def fetch_runs(self, refs: Sequence[tuple[str, str | None]]) -> list[dict[str, Any]]: ...


class AgnoSource:
    """The runs of one agno database (3.x table, 2.x column, or both)."""

    def __init__(self, db: Database, schema: str, runs_table: str, sessions_table: str, layout: str = "auto",
                 rediscover: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self.schema = schema
        self.runs_table = runs_table
        self.sessions_table = sessions_table
        self.mode = layout
        self.rediscover = rediscover
        self.clock = clock
        # The state's name for this database: dedupe and totals are shared by both layouts.
        self.key = f"{schema}.{runs_table}"
        self.runs = RunsSource(db, schema, runs_table, sessions_table)
        self.legacy: LegacySource | None = None
        self.layout: Layout | None = None
        self._use_runs = True
        self._checked = float("-inf")

    # --- layout --------------------------------------------------------------------------------

    async def discover(self) -> Layout:
        return await discover(self.db, self.schema, self.runs_table, self.sessions_table)

    async def refresh(self, force: bool = False) -> list[Reader]:
        """The readers this database needs now (discovery is re-run at most every ``rediscover`` s)."""
        if force or self.clock() - self._checked >= self.rediscover:
            self._checked = self.clock()
            if self.mode == "auto":
                layout = await self.discover()
                runs, legacy = bool(layout.runs_table), layout.sessions_has_runs
            else:
                layout = self.layout or Layout(self.schema, None, None, False)
                runs, legacy = self.mode in ("v3", "mixed"), self.mode in ("v2", "mixed")
            if layout != self.layout:
                log.info("agno layout: %s (reading: %s)", layout.describe(),
                         " and ".join(n for n, on in (("runs table", runs), ("legacy runs column", legacy)) if on)
                         or "nothing yet")
            self.layout = layout
            self._use_runs = runs
            # In a mixed database the legacy reader leaves out run ids the runs table has.
            self.legacy = LegacySource(self.db, self.schema, self.sessions_table,
                                       self.runs_table if runs else None) if legacy else None
        return self.readers

    @property
    def readers(self) -> list[Reader]:
        out: list[Reader] = []
        if self._use_runs:
            out.append(self.runs)
        if self.legacy is not None:
            out.append(self.legacy)
        return out

    # --- merged answers ------------------------------------------------------------------------

    async def snapshot(self) -> Snapshot:
        return await self.runs.snapshot()

    async def fetch_runs(self, refs: Sequence[tuple[str, str | None]]) -> list[dict[str, Any]]:
        """Rows of the given runs, from the runs table first (it wins), then the legacy column."""
        rows: list[dict[str, Any]] = []
        if self._use_runs:
            rows = await self.runs.fetch_runs(refs)
        found = {r["run_id"] for r in rows}
        rest = [ref for ref in refs if ref[0] not in found]
        if rest and self.legacy is not None:
            rows.extend(await self.legacy.fetch_runs(rest))
        return rows

    async def fetch_children(self, parents: Sequence[tuple[str, str | None]]) -> list[dict[str, Any]]:
        """Rows of the finished runs whose parent is one of these (a team's member runs), both layouts."""
        rows = await self.runs.fetch_children(parents) if self._use_runs else []
        if self.legacy is not None:
            found = {r["run_id"] for r in rows}
            rows.extend(r for r in await self.legacy.fetch_children(parents)
                        if r["run_data"].get("run_id") not in found)
        return rows

    async def row_ids(self, refs: Sequence[tuple[str, str | None]]) -> set[str]:
        """Which of these (run id, session id) are rows of agno's, in either layout (not nested copies)."""
        found = await self.runs.row_ids([run_id for run_id, _ in refs]) if self._use_runs else set()
        rest = [ref for ref in refs if ref[0] not in found]
        if rest and self.legacy is not None:
            found |= await self.legacy.row_ids(rest)
        return found

    async def ancestors(self, refs: Sequence[tuple[str, str | None]]) -> dict[str, str]:
        roots: dict[str, str] = {}
        if self._use_runs:
            roots = await self.runs.ancestors([run_id for run_id, _ in refs])  # only ids it has
        rest = [ref for ref in refs if ref[0] not in roots]
        if rest and self.legacy is not None:
            roots.update(await self.legacy.ancestors(rest))
        return roots

    async def open_runs(self, now: float, stuck_after: float) -> list[dict[str, Any]]:
        groups: dict[tuple[str, str, str], dict[str, Any]] = {}
        parts = await self.runs.open_runs(now, stuck_after) if self._use_runs else []
        if self.legacy is not None:
            parts = [*parts, *await self.legacy.open_runs(now, stuck_after, LEGACY_OPEN_WINDOW)]
        for r in parts:
            key = (r["run_type"] or "", r["name"] or "", r["status"])
            g = groups.setdefault(key, {"run_type": key[0], "name": key[1], "status": key[2], "n": 0, "stuck": 0,
                                        "oldest": None})
            g["n"] += int(r["n"])
            g["stuck"] += int(r["stuck"])
            if r["oldest"] is not None:
                g["oldest"] = r["oldest"] if g["oldest"] is None else min(g["oldest"], r["oldest"])
        return sorted(groups.values(), key=lambda g: -g["n"])

    async def session_run_counts(self, session_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        counts = await self.runs.session_run_counts(session_ids) if self._use_runs else {}
        if self.legacy is not None:
            for sid, (final, open_) in (await self.legacy.session_run_counts(session_ids)).items():
                f0, o0 = counts.get(sid, (0, 0))
                counts[sid] = (f0 + final, o0 + open_)
        return counts

    async def sessions(self, session_ids: Sequence[str]) -> list[dict[str, Any]]:
        return await self.runs.sessions(session_ids)
