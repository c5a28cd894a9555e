"""agno 2.x: finished runs as a JSON array in ``<schema>.<session_table>.runs``.

agno 2.x rewrites the whole array on every save of a session, and stamps the session's
``updated_at`` (whole seconds, app clock) as it does so. So the unit of change is the session: a
poll lists the sessions updated at or after the low watermark (the same snapshot rule as agno 3.x's
runs table, see :mod:`exporter.ingest.cursor`), expands their arrays to (run id, status) in SQL (light:
only two keys of each element leave the database) and fetches whole elements only for the run ids
not counted yet. A session rewritten a thousand times is read a thousand times, but each of its runs
is counted once (durable dedupe by run id).

Team member runs are elements of the team session's array with ``parent_run_id`` set (agno 2.x's
``TeamSession.upsert_run``); a team run's nested ``member_responses`` copy is never counted.

In a database half-migrated to agno 3.x a run can be in both places: the runs table wins (agno's
own rule), so every query here leaves out elements whose run id has a row in the runs table.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from psycopg import sql

from exporter.db import Database
from exporter.ingest.source import (
    RUN_DATA_PROJECTION,
    Candidate,
    Page,
    estimated_rows,
    group_open_runs,
    identity_projection,
)
from exporter.records.parse import run_identity
from exporter.records.runs import FINAL_STATUSES

_FINAL = sorted(FINAL_STATUSES)
_OPEN = ["PENDING", "RUNNING"]
_MAX_DEPTH = 32


class LegacyTable:
    """Runs inside ``<schema>.<session_table>.runs`` (agno 2.x), optionally deferring to a runs table."""

    def __init__(self, db: Database, schema: str, sessions_table: str, runs_table: str | None) -> None:
        self.db = db
        self.table = f"{schema}.{sessions_table}"
        self.key = f"{self.table}.runs"  # its cursor's name in the state
        self.runs_table = runs_table
        self.schema = schema
        self.sessions_table = sessions_table
        # what agno 2.x writes a run's final status to: its writers hold the watermark (exporter.ingest.cursor)
        self.written = (schema, sessions_table)
        self.appeared = False  # the column's runs appeared while the exporter ran (see AgnoSource.refresh)
        # jsonb in agno 2.x; the cast also accepts a json column, and anything but an array counts as empty
        elems = sql.SQL(
            "jsonb_array_elements(CASE WHEN jsonb_typeof(s.runs::jsonb) = 'array' THEN s.runs::jsonb"
            " ELSE '[]'::jsonb END)"
        )
        not_migrated = (
            sql.SQL(" AND NOT EXISTS (SELECT 1 FROM {r} r WHERE r.run_id = e.value->>'run_id')").format(
                r=sql.Identifier(schema, runs_table))
            if runs_table else sql.SQL("")
        )
        self._parts: dict[str, sql.Composable] = {
            "t": sql.Identifier(schema, sessions_table), "elems": elems, "not_migrated": not_migrated}

    def _q(self, text: str, **extra: sql.Composable) -> sql.Composed:
        return sql.SQL(text).format(**self._parts, **extra)

    async def _rows(self, query: sql.Composed, params: dict[str, Any]) -> list[dict[str, Any]]:
        async with self.db.statement() as conn:  # one statement: atomic on its own
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    async def _page(self, where: str, order: str, params: dict[str, Any], limit: int,
                    after: Callable[[dict[str, Any]], Any]) -> Page:
        """Final runs of up to ``limit`` sessions picked by ``where`` in ``order``; only run id and status
        leave the arrays. A session without final runs still moves the page key."""
        rows = await self._rows(self._q(
            "SELECT s.session_id, s.updated_at, e.run_id, e.status FROM ("
            " SELECT session_id, updated_at, runs FROM {t} WHERE runs IS NOT NULL AND {where}"
            " ORDER BY {order} LIMIT %(limit)s) s"
            " LEFT JOIN LATERAL (SELECT e.value->>'run_id' AS run_id, e.value->>'status' AS status"
            " FROM {elems} e WHERE true{not_migrated}) e ON true ORDER BY {order}",
            where=sql.SQL(where), order=sql.SQL(order)), {**params, "limit": limit})
        items = [
            Candidate(r["run_id"], int(r["updated_at"] or 0), r["status"], r["session_id"])
            for r in rows if r["run_id"] and r["status"] in FINAL_STATUSES
        ]
        sessions = len({r["session_id"] for r in rows})
        return Page(items, after(rows[-1]) if sessions >= limit else None, sessions)

    async def candidate_page(self, since: float, after: Any, limit: int) -> Page:
        """Final runs of the sessions updated at or after ``since``, ``limit`` sessions a page."""
        where = "updated_at >= %(since)s" + (" AND (updated_at, session_id) > (%(au)s, %(as)s)" if after else "")
        au, as_ = after or (None, None)
        return await self._page(where, "updated_at, session_id", {"since": int(since), "au": au, "as": as_},
                                limit, lambda last: (int(last["updated_at"] or 0), last["session_id"]))

    async def backfill(self, after: Any, limit: int) -> Page:
        """Every session holding runs, by primary key: an index range scan a page."""
        where = "session_id > %(after)s" if after is not None else "true"
        return await self._page(where, "session_id", {"after": after}, limit, lambda last: last["session_id"])

    async def backfill_size(self) -> tuple[int | None, str]:
        """About how many sessions a backfill lists (the sessions table's estimate), and their unit."""
        return await estimated_rows(self.db, self.schema, self.sessions_table), "sessions"

    async def fetch_runs(self, refs: Sequence[tuple[str, str | None]]) -> list[dict[str, Any]]:
        """(run id, session id) -> the session's columns a run record needs, with the element as run_data.

        Only the session's ``session_id``, ``user_id`` and ``updated_at`` are taken (the element has
        no ``updated_at`` of its own; the session's is when the finished run was saved). The run's
        own ``created_at``, ids and status come from the element. A run id without its session id
        (``runs show``) is looked for in every session (jsonb containment: a full scan).
        """
        if not refs:
            return []
        ids = sorted({rid for rid, _ in refs})
        by_session = all(sid for _, sid in refs)
        where = sql.SQL("s.session_id = ANY(%(sids)b)" if by_session else "s.runs::jsonb @> ANY(%(probes)s::jsonb[])")
        rows = await self._rows(
            self._q(
                "SELECT s.session_id, s.user_id, s.updated_at, {run_data} AS run_data FROM {t} s"
                " CROSS JOIN LATERAL {elems} e, LATERAL (SELECT e.value AS d OFFSET 0) AS x"
                " WHERE {where} AND e.value->>'run_id' = ANY(%(ids)b){not_migrated}",
                where=where, run_data=sql.SQL(RUN_DATA_PROJECTION),
            ),
            {"sids": sorted({sid for _, sid in refs if sid}), "ids": ids,
             "probes": [json.dumps([{"run_id": i}]) for i in ids]},
        )
        return [r for r in rows if isinstance(r["run_data"], dict)]

    async def session_runs(self, session_id: str) -> list[dict[str, Any]]:
        """Every run element of one session's array (``sessions show``), shaped like :meth:`fetch_runs`."""
        rows = await self._rows(
            self._q(
                "SELECT s.session_id, s.user_id, s.updated_at, {run_data} AS run_data FROM {t} s"
                " CROSS JOIN LATERAL {elems} e, LATERAL (SELECT e.value AS d OFFSET 0) AS x"
                " WHERE s.session_id = %(sid)s{not_migrated}",
                run_data=sql.SQL(RUN_DATA_PROJECTION),
            ),
            {"sid": session_id},
        )
        return [r for r in rows if isinstance(r["run_data"], dict)]

    async def fetch_children(self, parents: Sequence[tuple[str, str | None]]) -> list[dict[str, Any]]:
        """Like :meth:`fetch_runs`, for the finished elements whose ``parent_run_id`` is one of these
        (run id, session id): a team's member runs, in the team's session."""
        sessions = sorted({sid for _, sid in parents if sid})
        if not sessions:
            return []
        rows = await self._rows(
            self._q(
                "SELECT s.session_id, s.user_id, s.updated_at, {run_data} AS run_data FROM {t} s"
                " CROSS JOIN LATERAL {elems} e, LATERAL (SELECT e.value AS d OFFSET 0) AS x"
                " WHERE s.session_id = ANY(%(sids)b) AND e.value->>'parent_run_id' = ANY(%(ids)b)"
                " AND e.value->>'status' = ANY(%(final)s){not_migrated}",
                run_data=sql.SQL(RUN_DATA_PROJECTION),
            ),
            {"sids": sessions, "ids": sorted({rid for rid, _ in parents}), "final": _FINAL},
        )
        return [r for r in rows if isinstance(r["run_data"], dict)]

    async def row_ids(self, refs: Sequence[tuple[str, str | None]]) -> set[str]:
        """Which of these runs are elements of their sessions' arrays (runs-table copies left out)."""
        sessions = sorted({sid for _, sid in refs if sid})
        if not sessions:
            return set()
        rows = await self._rows(
            self._q("SELECT e.value->>'run_id' AS run_id FROM {t} s CROSS JOIN LATERAL {elems} e"
                    " WHERE s.session_id = ANY(%(sids)b) AND e.value->>'run_id' = ANY(%(ids)b){not_migrated}"),
            {"sids": sessions, "ids": sorted({rid for rid, _ in refs})},
        )
        return {r["run_id"] for r in rows}

    async def ancestors(self, refs: Sequence[tuple[str, str | None]]) -> dict[str, str]:
        """run id -> its top-level run id, following ``parent_run_id`` within the runs' sessions."""
        sessions = sorted({sid for _, sid in refs if sid})
        if not sessions:
            return {}
        rows = await self._rows(
            self._q(
                "SELECT e.value->>'run_id' AS run_id, e.value->>'parent_run_id' AS parent FROM {t} s"
                " CROSS JOIN LATERAL {elems} e WHERE s.session_id = ANY(%(sids)b)"
            ),
            {"sids": sessions},
        )
        parent = {r["run_id"]: r["parent"] for r in rows if r["run_id"]}
        out: dict[str, str] = {}
        for run_id, _ in refs:
            node = run_id
            for _ in range(_MAX_DEPTH):
                up = parent.get(node)
                if not up:
                    break
                node = up  # a parent missing from the array is the trace root (same rule as agno 3.x)
            out[run_id] = node
        return out

    async def open_runs(self, now: float, stuck_after: float, window: float, limit: int = 1000) -> list[dict[str, Any]]:
        """PENDING/RUNNING runs in sessions saved within ``window``, grouped like RunsTable.open_runs
        (by agno's names and ids in SQL, then by label, :func:`exporter.records.parse.run_identity`: the runs
        of unnamed agents, one id per instance, add up under one label).

        Finding them means reading the arrays, so only recently saved sessions are looked at: a run
        left RUNNING in a session nobody saved for longer than ``window`` drops out of the gauge.
        """
        created = "CASE WHEN e.value->>'created_at' ~ '^[0-9]+([.][0-9]*)?$' THEN (e.value->>'created_at')::numeric END"
        query = self._q(
            "SELECT {ident} AS run_data, e.value->>'status' AS status, count(*) AS n,"
            f" count(*) FILTER (WHERE {created} < %(cutoff)s) AS stuck, min({created}) AS oldest"
            " FROM {t} s CROSS JOIN LATERAL {elems} e WHERE s.updated_at >= %(since)s"
            " AND e.value->>'status' = ANY(%(open)s){not_migrated}"
            " GROUP BY 1, 2", ident=identity_projection("e.value"))
        rows = await self._rows(query, {"cutoff": int(now - stuck_after), "since": int(now - window), "open": _OPEN})
        labelled = []
        for r in rows:
            run_type, _, name = run_identity({}, r["run_data"])
            labelled.append({**r, "run_type": run_type, "name": name})
        return group_open_runs(labelled, limit)

    async def session_run_counts(self, session_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """session id -> (finished runs, open runs) in the sessions' arrays (runs-table copies left out)."""
        if not session_ids:
            return {}
        rows = await self._rows(
            self._q(
                "SELECT s.session_id, count(*) FILTER (WHERE e.value->>'status' = ANY(%(final)s)) AS final,"
                " count(*) FILTER (WHERE e.value->>'status' = ANY(%(open)s)) AS open FROM {t} s"
                " CROSS JOIN LATERAL {elems} e WHERE s.session_id = ANY(%(ids)b){not_migrated}"
                " GROUP BY s.session_id"
            ),
            {"final": _FINAL, "open": [*_OPEN, "PAUSED"], "ids": list(session_ids)},
        )
        return {r["session_id"]: (int(r["final"]), int(r["open"])) for r in rows}
