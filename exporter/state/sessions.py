"""Sessions: their totals summed from their runs, the top sessions, the sessions found disagreeing with agno's own
totals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from exporter.records.runs import RunRecord
from exporter.state.rows import Staged, StageDisagreements, TopSession
from exporter.state.series import SeriesState


class SessionState(SeriesState):
    async def top_sessions(self, since: float, limit: int) -> list[TopSession]:
        """The ``limit`` sessions with most tokens seen since ``since``: (session id, run type, name,
        tokens, reported cost, estimated cost, last seen)."""
        if limit <= 0:
            return []
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                self._q(
                    "SELECT session_id, run_type, name, tokens, cost, estimated_cost, last_seen FROM {s}.sessions"
                    " WHERE source = %s AND last_seen >= %s ORDER BY tokens DESC, session_id LIMIT %s"
                ),
                (self.source, since, limit),
            )
            return [TopSession(r["session_id"], r["run_type"], r["name"], r["tokens"], r["cost"], r["estimated_cost"],
                               r["last_seen"]) for r in await cur.fetchall()]

    async def sessions_by_id(self, session_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not session_ids:
            return {}
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                self._q("SELECT session_id, run_type, name, tokens, agno_tokens, runs, disagreement FROM {s}.sessions"
                        " WHERE source = %s AND session_id = ANY(%b)"),
                (self.source, list(session_ids)),
            )
            return {r["session_id"]: r for r in await cur.fetchall()}

    async def flag_disagreements(self, session_ids: Sequence[str], stage: StageDisagreements) -> Staged:
        """Mark sessions as disagreeing and write what ``stage`` makes of the newly marked ones in the same
        transaction; returns that, to apply once this returned (the commit is done)."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                self._q("UPDATE {s}.sessions SET disagreement = true WHERE source = %s AND session_id = ANY(%b)"
                        " AND NOT disagreement RETURNING session_id, run_type, name"),
                (self.source, list(session_ids)),
            )
            newly = [(r["session_id"], r["run_type"], r["name"]) for r in await cur.fetchall()]
            staged = stage(newly)
            await self._write_series(conn, staged.rows())
        return staged

    async def session_totals(self, session_id: str) -> dict[str, Any] | None:
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                self._q("SELECT * FROM {s}.sessions WHERE source = %s AND session_id = %s"),
                (self.source, session_id),
            )
            return await cur.fetchone()


    async def _sessions(
        self, conn: psycopg.AsyncConnection[dict[str, Any]], records: Sequence[RunRecord], now: float,
        costs: Mapping[str, tuple[float, float]],
        in_table: set[str] | None = None, taken_back: Sequence[RunRecord] = (),
    ) -> list[tuple[str, str]]:
        """Add the runs to their sessions' totals; return (run_type, name) of sessions that are new.

        ``runs`` counts the runs with rows of their own (``in_table``), ``agno_tokens`` what agno adds
        to its stored totals: a run counted from a nested copy adds nothing there, and ``taken_back``
        (nested copies of runs counted from their own rows) take back what those rows added.
        """
        agg: dict[str, list[Any]] = {}
        for back, r in (*((False, r) for r in records), *((True, r) for r in taken_back)):
            if not r.session_id:
                continue
            a = agg.get(r.session_id)
            if a is None:
                # A session is named after its top-level run (the member runs of a team share it).
                a = agg[r.session_id] = [r.run_type, r.name, 0, 0.0, 0.0, 0, False, 0]
            if back:
                a[7] -= r.session_tokens
                continue
            cost = costs.get(r.run_id)
            reported, estimated = cost if cost is not None else (r.cost_usd, 0.0)  # cost_usd only when needed
            a[2] += r.totals.get("input", 0) + r.totals.get("output", 0)
            a[3] += reported
            a[4] += estimated
            a[5] += in_table is None or r.run_id in in_table
            a[7] += 0 if r.host_run_id else r.session_tokens
            if not a[6] and r.parent_run_id is None:
                a[0], a[1], a[6] = r.run_type, r.name, True
        if not agg:
            return []
        ids = list(agg)
        cur = await conn.execute(
            self._q(
                "WITH up AS (INSERT INTO {s}.sessions AS s (source, session_id, run_type, name, tokens, cost,"
                " estimated_cost, runs, first_seen, last_seen, agno_tokens)"
                " SELECT %s, sid, rt, nm, tk, co, est, n, %s, %s, at"
                " FROM unnest(%b::text[], %b::text[], %b::text[], %b::int8[], %b::float8[], %b::float8[], %b::int[],"
                " %b::bool[], %b::int8[]) AS x(sid, rt, nm, tk, co, est, n, top, at)"
                " ON CONFLICT (source, session_id) DO UPDATE SET tokens = s.tokens + EXCLUDED.tokens,"
                " cost = s.cost + EXCLUDED.cost, estimated_cost = s.estimated_cost + EXCLUDED.estimated_cost,"
                " runs = s.runs + EXCLUDED.runs, last_seen = EXCLUDED.last_seen,"
                " agno_tokens = s.agno_tokens + EXCLUDED.agno_tokens"
                " RETURNING (xmax = 0) AS inserted, run_type, name)"
                # only the new sessions come back (most of a page's sessions are usually known)
                " SELECT run_type, name FROM up WHERE inserted"
            ),
            (
                self.source, now, now, ids,
                [agg[i][0] for i in ids], [agg[i][1] for i in ids], [int(agg[i][2]) for i in ids],
                [float(agg[i][3]) for i in ids], [float(agg[i][4]) for i in ids], [agg[i][5] for i in ids],
                [agg[i][6] for i in ids], [int(agg[i][7]) for i in ids],
            ),
        )
        return [(r["run_type"], r["name"]) for r in await cur.fetchall()]
