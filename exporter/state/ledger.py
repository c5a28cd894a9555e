"""The ledger of counted runs: one transaction counts a batch exactly once (the insert of the run ids is the
dedupe), with its sessions' totals and the sinks' staged rows; and its bounding: the rows of runs agno no
longer holds are marked, then forgotten (:mod:`exporter.ingest.retention` decides, these methods write).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from exporter.records.runs import RunRecord
from exporter.state.rows import Staged, StageRuns
from exporter.state.sessions import SessionState


@dataclass(frozen=True, slots=True)
class BatchResult:
    new_records: list[RunRecord]
    new_sessions: list[tuple[str, str]]  # (run_type, name) of sessions seen for the first time
    staged: Staged  # what the sinks made of the batch: apply it (the commit is done)
    # (run id, reason) of the skips recorded by this batch: a skip already recorded (by an earlier
    # process or a replica) is not in it, so each skip is counted and logged once
    new_skipped: list[tuple[str, str]] = field(default_factory=list)

@dataclass(frozen=True, slots=True)
class LedgerRow:
    """A row of the run ledger as a retention sweep sees it (:mod:`exporter.ingest.retention`)."""

    run_id: str
    host_run_id: str | None  # the run whose row holds this run's copy (nested runs)
    traces_exported: bool  # its spans are delivered (or traces are off): the outbox no longer needs it
    missing_since: float | None  # unix seconds a sweep first found agno not holding it; None: held


class Ledger(SessionState):
    async def known(self, run_ids: Sequence[str]) -> set[str]:
        """Which of these runs were already counted (or skipped as malformed)."""
        if not run_ids:
            return set()
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                self._q("SELECT run_id FROM {s}.runs WHERE source = %s AND run_id = ANY(%b)"),
                (self.source, list(run_ids)),
            )
            return {r["run_id"] for r in await cur.fetchall()}

    async def roots(self, run_ids: Sequence[str]) -> dict[str, str]:
        if not run_ids:
            return {}
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                self._q("SELECT run_id, root_run_id FROM {s}.runs WHERE source = %s AND run_id = ANY(%b)"),
                (self.source, list(run_ids)),
            )
            return {r["run_id"]: r["root_run_id"] for r in await cur.fetchall()}

    async def commit_batch(
        self,
        records: Sequence[RunRecord],
        roots: dict[str, str],
        skipped: Sequence[tuple[str, str]],
        now: float,
        stage: StageRuns,
        in_table: set[str] | None = None,
        costs: Mapping[str, tuple[float, float]] | None = None,
    ) -> BatchResult:
        """Count ``records`` (and mark ``skipped`` (run_id, reason) as seen) in one transaction, with the rows
        of what ``stage`` makes of the runs really counted (see :mod:`exporter.state.rows`).

        ``records`` hold each run id once. ``in_table`` are the ids of those that have a row of their
        own in agno's table (all of them when None): only those count towards a session's number of
        runs, which the session check compares with agno's rows. A nested copy met after its run was
        counted from its own row takes back what that row claimed for agno's session totals
        (:attr:`RunRecord.session_tokens`): agno counts such a run through its workflow only.

        ``costs``: run id -> (reported, estimated) US dollars, what the run adds to
        ``agno_cost_usd_total`` (:func:`exporter.sinks.prometheus.families.cost_of`), summed into its session; a run
        missing from it adds its reported cost only.

        Raises what psycopg raises; nothing is written then. A value the state cannot hold (e.g.
        ``psycopg.DataError`` "bigint out of range") belongs to a record: the collector commits the
        page in parts to find it (:meth:`exporter.ingest.collector.RunCollector._commit`).
        """
        async with self.db.transaction() as conn:
            new_ids: set[str] = set()
            if records:
                cur = await conn.execute(
                    self._q(
                        "INSERT INTO {s}.runs (source, run_id, root_run_id, status, session_id, counted_at,"
                        " host_run_id, parent_run_id, traces_exported)"
                        " SELECT %s, id, root, st, sid, %s, host, parent, %s"
                        " FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[])"
                        " AS x(id, root, st, sid, host, parent) ON CONFLICT DO NOTHING RETURNING run_id"
                    ),
                    (
                        self.source,
                        float(now),
                        not self.traces,
                        [r.run_id for r in records],
                        [roots.get(r.run_id, r.run_id) for r in records],
                        [r.status for r in records],
                        [r.session_id for r in records],
                        [r.host_run_id for r in records],
                        [r.parent_run_id for r in records],
                    ),
                )
                new_ids = {r["run_id"] for r in await cur.fetchall()}
            new_skipped: list[tuple[str, str]] = []
            # Nested copies of runs that also have rows of their own and were counted from those rows:
            # they take back the row's claim, once (the run is then marked as held by this host).
            again = [r for r in records if r.host_run_id and r.run_id not in new_ids
                     and (in_table is None or r.run_id in in_table)]
            from_rows: set[str] = set()
            if again:
                cur = await conn.execute(
                    self._q("UPDATE {s}.runs r SET host_run_id = x.host FROM unnest(%b::text[], %b::text[])"
                            " AS x(id, host) WHERE r.source = %s AND r.run_id = x.id AND r.host_run_id IS NULL"
                            " RETURNING r.run_id"),
                    ([r.run_id for r in again], [r.host_run_id for r in again], self.source))
                from_rows = {r["run_id"] for r in await cur.fetchall()}
            if skipped:
                # Malformed rows are remembered so they are neither re-parsed every poll nor counted later.
                cur = await conn.execute(
                    self._q(
                        "INSERT INTO {s}.runs (source, run_id, root_run_id, status, counted_at, traces_exported)"
                        " SELECT %s, id, id, 'SKIPPED:' || reason, %s, true"
                        " FROM unnest(%b::text[], %b::text[]) AS t(id, reason) ON CONFLICT DO NOTHING"
                        " RETURNING run_id, substr(status, 9) AS reason"
                    ),
                    (self.source, now, [s[0] for s in skipped], [s[1] for s in skipped]),
                )
                new_skipped = [(r["run_id"], r["reason"]) for r in await cur.fetchall()]
            fresh = [r for r in records if r.run_id in new_ids]
            taken_back = [r for r in records if r.run_id in from_rows]
            new_sessions = await self._sessions(conn, fresh, now, costs or {}, in_table, taken_back)
            staged = stage(fresh, new_sessions)
            await self._write_series(conn, staged.rows())
        await self._grew("runs", len(new_ids) + len(new_skipped))
        await self._grew("sessions", len(new_sessions))
        return BatchResult(fresh, new_sessions, staged, new_skipped)

    # --- the bounded ledger (exporter.ingest.retention) ---------------------------------------------

    async def ledger_page(self, after: str, limit: int) -> list[LedgerRow]:
        """Rows of the run ledger after ``after`` in run id order (the primary key: a range scan)."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                self._q("SELECT run_id, host_run_id, traces_exported, missing_since FROM {s}.runs"
                        " WHERE source = %s AND run_id > %s ORDER BY run_id LIMIT %s"),
                (self.source, after, limit))
            return [LedgerRow(r["run_id"], r["host_run_id"], r["traces_exported"], r["missing_since"])
                    for r in await cur.fetchall()]

    async def oldest_missing(self) -> float | None:
        """When the longest-missing run still in the ledger was first found gone (None: none is)."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                self._q("SELECT min(missing_since) AS t FROM {s}.runs WHERE source = %s AND missing_since IS NOT NULL"),
                (self.source,))
            row = await cur.fetchone()
        return None if row is None or row["t"] is None else float(row["t"])

    async def sweep_ledger(self, gone: Sequence[str], back: Sequence[str], forget: Sequence[str], now: float,
                           before: float) -> int:
        """One sweep step in one transaction: mark ``gone`` runs missing since ``now`` (unless marked
        already), clear the mark of runs agno holds again (``back``), and delete the ``forget`` rows
        still marked before ``before`` whose spans are delivered; returns the rows deleted."""
        async with self.db.transaction() as conn:
            if gone:
                await conn.execute(self._q("UPDATE {s}.runs SET missing_since = %s WHERE source = %s"
                                           " AND run_id = ANY(%b) AND missing_since IS NULL"),
                                   (now, self.source, list(gone)))
            if back:
                await conn.execute(self._q("UPDATE {s}.runs SET missing_since = NULL WHERE source = %s"
                                           " AND run_id = ANY(%b)"), (self.source, list(back)))
            if not forget:
                return 0
            cur = await conn.execute(self._q("DELETE FROM {s}.runs WHERE source = %s AND run_id = ANY(%b)"
                                             " AND missing_since < %s AND traces_exported"),
                                     (self.source, list(forget), before))
            return cur.rowcount
