"""One agno 3.x runs table and its sessions table (:class:`RunsTable`): candidate pages, whole runs, the rows
the session checks and ``runs show`` read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import sql

from exporter.db import Database
from exporter.ingest.openruns import OpenRunsTracker
from exporter.ingest.source import (
    FINAL_SORTED,
    RUN_COLUMNS,
    RUN_DATA_PROJECTION,
    Candidate,
    Page,
    Snapshot,
    estimated_rows,
    group_open_runs,
    identity_projection,
    take_snapshot,
)
from exporter.records.runs import FINAL_STATUSES


class RunsTable:
    """agno 3.x: one row per run in ``<schema>.<runs_table>``."""

    def __init__(self, db: Database, schema: str, runs_table: str, sessions_table: str | None) -> None:
        self.db = db
        self.schema = schema
        self.runs_table = runs_table
        self.sessions_table = sessions_table
        self.key = f"{schema}.{runs_table}"  # its cursor's name in the state
        self.appeared = False  # the table appeared while the exporter ran (see AgnoSource.refresh)
        self.written = (schema, runs_table)  # what agno writes a run's final status to (exporter.ingest.cursor)
        self._runs = sql.Identifier(schema, runs_table)
        self._cols = sql.SQL(", ").join(sql.Identifier(c) for c in RUN_COLUMNS)
        self.open = OpenRunsTracker(db, schema, runs_table, identity_projection("run_data"))  # the runs still open
        # The statements of every poll, composed once with the final statuses inlined: the same text each
        # time (prepared by psycopg after a few), and only integers to adapt per poll.
        final = sql.Literal(FINAL_SORTED)
        self._q_candidates = {after: sql.SQL(
            "SELECT run_id, updated_at, status FROM {t} WHERE status = ANY({final}::text[]) AND updated_at >= %(since)s"
            " {after} ORDER BY updated_at, run_id LIMIT %(limit)s"
        ).format(t=self._runs, final=final,
                 after=sql.SQL("AND (updated_at, run_id) > (%(au)s, %(ar)s)" if after else "")).as_string(None)
            for after in (False, True)}
        # The open runs' window: every row stamped at or after the window's start, in the candidates' order;
        # the first candidate page is its first rows in a final status (one index range scan for both).
        self._q_window = sql.SQL(
            "SELECT run_id, updated_at, status, created_at FROM {t} WHERE updated_at >= %(since)s"
            " ORDER BY updated_at, run_id").format(t=self._runs).as_string(None)

    async def snapshot(self) -> Snapshot:
        return await take_snapshot(self.db, [self.written])

    async def candidates(self, since: float, after: tuple[int, str] | None, limit: int) -> list[Candidate]:
        """Finished runs updated at or after ``since``, in (updated_at, run_id) order after ``after``."""
        params: dict[str, Any] = {"since": int(since), "limit": limit}
        if after:
            params["au"], params["ar"] = after
        async with self.db.statement() as conn:
            cur = await conn.execute(self._q_candidates[bool(after)], params)
            rows = await cur.fetchall()
        return [Candidate(r["run_id"], int(r["updated_at"] or 0), r["status"]) for r in rows]

    async def backfill_page(self, after: str | None, limit: int) -> list[Candidate]:
        """All finished runs by primary key: each page is an index range scan, whatever the table size."""
        query = sql.SQL(
            "SELECT run_id, updated_at, status FROM {t} WHERE status = ANY(%(final)s) {after}"
            " ORDER BY run_id LIMIT %(limit)s"
        ).format(t=self._runs, after=sql.SQL("AND run_id > %(after)s" if after is not None else ""))
        async with self.db.statement() as conn:
            cur = await conn.execute(query, {"final": FINAL_SORTED, "after": after, "limit": limit})
            rows = await cur.fetchall()
        return [Candidate(r["run_id"], int(r["updated_at"] or 0), r["status"]) for r in rows]

    async def candidate_page(self, since: float, after: Any, limit: int) -> Page:
        """A page of :meth:`candidates`; the first page of a poll is cut from the open runs' window (every
        row stamped at or after ``since``, any status) when the tracker can use it: one index range scan
        serves both (:mod:`exporter.ingest.openruns`)."""
        if after is None and (first := self.first_page(since, limit)) is not None:
            query, params = first
            async with self.db.statement() as conn:
                cur = await conn.execute(query, params)
                return self.first_page_of(since, limit, await cur.fetchall())
        return self._page(await self.candidates(since, after, limit), limit)

    def first_page(self, since: float, limit: int) -> tuple[str, dict[str, Any]] | None:
        """The statement (query, params) of a poll's first candidate page together with the open runs'
        window, None when the window is not wanted (then :meth:`candidate_page` reads the page alone).
        Its rows go to :meth:`first_page_of`; the poll may send it in one pipeline with its snapshot
        (:meth:`exporter.ingest.readers.AgnoSource.begin_poll`)."""
        if not self.open.wants_window(since):
            return None
        return self._q_window, {"since": int(since)}

    def first_page_of(self, since: float, limit: int, rows: list[dict[str, Any]]) -> Page:
        """The rows of :meth:`first_page` -> the page (its first ``limit`` rows in a final status: what
        :meth:`candidates` would list); every row goes to the open runs' tracker."""
        self.open.absorb(since, rows)
        final = [r for r in rows if r["status"] in FINAL_STATUSES][:limit]
        return self._page([Candidate(r["run_id"], int(r["updated_at"] or 0), r["status"]) for r in final], limit)

    @staticmethod
    def _page(items: list[Candidate], limit: int) -> Page:
        return Page(items, (items[-1].updated_at, items[-1].run_id) if len(items) == limit else None, len(items))

    async def backfill(self, after: Any, limit: int) -> Page:
        items = await self.backfill_page(after, limit)
        return Page(items, items[-1].run_id if len(items) == limit else None, len(items))

    async def backfill_size(self) -> tuple[int | None, str]:
        """About how many rows a backfill lists (all statuses: the estimate is the table's), and their unit."""
        return await estimated_rows(self.db, self.schema, self.runs_table), "runs"

    async def fetch_runs(self, refs: Sequence[tuple[str, str | None]]) -> list[dict[str, Any]]:
        """(run id, session id) pairs -> rows; the session id is not needed here (run_id is the key)."""
        return await self.fetch([run_id for run_id, _ in refs])

    async def fetch(self, run_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Whole rows (columns + run_data) of the given runs."""
        if not run_ids:
            return []
        query = sql.SQL("SELECT {cols}, {run_data} AS run_data FROM {t}, "
                        # detoast run_data once (OFFSET 0 keeps the planner from inlining it per use)
                        " LATERAL (SELECT run_data || '{{}}'::jsonb AS d OFFSET 0) AS x"
                        " WHERE run_id = ANY(%(ids)b)").format(
            cols=self._cols, run_data=sql.SQL(RUN_DATA_PROJECTION), t=self._runs
        )
        async with self.db.statement() as conn:
            cur = await conn.execute(query, {"ids": list(run_ids)})
            return await cur.fetchall()

    async def fetch_children(self, parents: Sequence[tuple[str, str | None]]) -> list[dict[str, Any]]:
        """Whole rows of the finished runs whose parent is one of these (run id, session id): a team's
        member runs. By session (agno indexes ``session_id``, not ``parent_run_id``)."""
        sessions = sorted({sid for _, sid in parents if sid})
        if not sessions:
            return []
        query = sql.SQL("SELECT {cols}, {run_data} AS run_data FROM {t},"
                        " LATERAL (SELECT run_data || '{{}}'::jsonb AS d OFFSET 0) AS x"
                        " WHERE session_id = ANY(%(sids)b) AND parent_run_id = ANY(%(ids)b)"
                        " AND status = ANY(%(final)s)").format(
            cols=self._cols, run_data=sql.SQL(RUN_DATA_PROJECTION), t=self._runs)
        async with self.db.statement() as conn:
            cur = await conn.execute(query, {"sids": sessions, "ids": sorted({rid for rid, _ in parents}),
                                             "final": FINAL_SORTED})
            return await cur.fetchall()

    async def row_ids(self, run_ids: Sequence[str]) -> set[str]:
        """Which of these runs have a row (agno's primary key: an index lookup each)."""
        if not run_ids:
            return set()
        async with self.db.statement() as conn:
            cur = await conn.execute(sql.SQL("SELECT run_id FROM {t} WHERE run_id = ANY(%(ids)b)").format(
                t=self._runs), {"ids": list(run_ids)})
            return {r["run_id"] for r in await cur.fetchall()}

    async def ancestors(self, run_ids: Sequence[str]) -> dict[str, str]:
        """run id -> id of its top-level run (itself when it has no parent), following parent_run_id."""
        if not run_ids:
            return {}
        query = sql.SQL(
            "WITH RECURSIVE up(start, run_id, parent, depth) AS ("
            " SELECT r.run_id, r.run_id, r.parent_run_id, 0 FROM {t} r WHERE r.run_id = ANY(%(ids)b)"
            " UNION ALL"
            " SELECT up.start, p.run_id, p.parent_run_id, up.depth + 1 FROM up JOIN {t} p ON p.run_id = up.parent"
            " WHERE up.depth < 32)"
            " SELECT DISTINCT ON (start) start, run_id, parent FROM up ORDER BY start, depth DESC"
        ).format(t=self._runs)
        async with self.db.statement() as conn:
            cur = await conn.execute(query, {"ids": list(run_ids)})
            rows = await cur.fetchall()
        # A parent row that does not exist (yet) leaves `parent` set: the trace root is that parent id.
        return {r["start"]: (r["parent"] or r["run_id"]) for r in rows}

    async def open_runs(self, now: float, stuck_after: float, limit: int = 1000,
                        since: float | None = None) -> list[dict[str, Any]]:
        """Runs still PENDING/RUNNING, grouped by type/name/status: how many, how many stuck, oldest start.

        Kept in memory and brought up to date from the rows written since ``since`` (the re-read
        window's start, unix seconds; None: every open run is read), see :mod:`exporter.ingest.openruns`:
        with the opt-in index an idle poll reads none of agno's rows. ``name`` is the label
        (:func:`exporter.records.values.run_label`).
        """
        await self.open.update(since, now)
        return group_open_runs(self.open.groups(int(now - stuck_after)), limit)

    async def session_run_counts(self, session_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """session id -> (finished runs, open runs) in agno's table (session_id is indexed by agno)."""
        if not session_ids:
            return {}
        query = sql.SQL(
            "SELECT session_id, count(*) FILTER (WHERE status = ANY(%(final)s)) AS final,"
            " count(*) FILTER (WHERE status = ANY(%(open)s)) AS open FROM {t}"
            " WHERE session_id = ANY(%(ids)b) GROUP BY session_id"
        ).format(t=self._runs)
        async with self.db.statement() as conn:
            cur = await conn.execute(query, {"final": FINAL_SORTED, "open": ["PENDING", "RUNNING", "PAUSED"],
                                             "ids": list(session_ids)})
            return {r["session_id"]: (int(r["final"]), int(r["open"])) for r in await cur.fetchall()}

    async def sessions(self, session_ids: Sequence[str]) -> list[dict[str, Any]]:
        if self.sessions_table is None:
            return []
        return await read_sessions(self.db, self.schema, self.sessions_table, session_ids)

    async def session_runs(self, session_id: str) -> list[dict[str, Any]]:
        """Whole rows of every run of one session, member runs included (``sessions show``); agno
        indexes ``session_id``."""
        query = sql.SQL("SELECT run_id FROM {t} WHERE session_id = %(sid)s").format(t=self._runs)
        async with self.db.statement() as conn:
            cur = await conn.execute(query, {"sid": session_id})
            run_ids = [r["run_id"] for r in await cur.fetchall()]
        return await self.fetch(run_ids)


async def read_sessions(db: Database, schema: str, table: str, session_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of agno's session table (either layout) for the given session ids."""
    if not session_ids:
        return []
    query = sql.SQL(
        "SELECT session_id, session_type, agent_id, team_id, workflow_id, user_id, agent_data, team_data,"
        " workflow_data, session_data, created_at, updated_at FROM {t} WHERE session_id = ANY(%(ids)b)"
    ).format(t=sql.Identifier(schema, table))
    async with db.statement() as conn:
        cur = await conn.execute(query, {"ids": list(session_ids)})
        return await cur.fetchall()
