"""The outboxes: counted runs whose spans are not delivered yet, and agno's own spans queued for forwarding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from exporter.state.schema import StateBase


@dataclass(frozen=True, slots=True)
class Counted:
    """A run as the state knows it."""

    run_id: str
    root_run_id: str
    status: str
    session_id: str | None = None
    host_run_id: str | None = None  # the run whose row holds this run's copy (records.build_row_runs)
    parent_run_id: str | None = None
    parent_row_run_id: str | None = None  # the row to read the parent by; None while it is not counted

    @property
    def row_run_id(self) -> str:
        """The run id to read this run's row by."""
        return self.host_run_id or self.run_id

class Outboxes(StateBase):
    # --- trace outbox --------------------------------------------------------------------------

    async def pending_traces(self, limit: int, now: float = float("inf"), hold: float = 0.0) -> list[Counted]:
        """Runs counted but not yet exported as spans, oldest first.

        A run whose parent is not counted yet waits for it (a team member finishes before its team,
        whose tool call it nests under), for at most ``hold`` seconds after it was counted.
        """
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                self._q(
                    "SELECT r.run_id, r.root_run_id, r.status, r.session_id, r.host_run_id, r.parent_run_id,"
                    " coalesce(p.host_run_id, p.run_id) AS parent_row_run_id FROM {s}.runs r"
                    " LEFT JOIN {s}.runs p ON p.source = r.source AND p.run_id = r.parent_run_id"
                    " WHERE r.source = %s AND NOT r.traces_exported"
                    " AND (r.parent_run_id IS NULL OR p.run_id IS NOT NULL OR r.counted_at < %s)"
                    " ORDER BY r.counted_at, r.run_id LIMIT %s"
                ),
                (self.source, now - hold, limit),
            )
            return [Counted(r["run_id"], r["root_run_id"], r["status"], r["session_id"], r["host_run_id"],
                            r["parent_run_id"], r["parent_row_run_id"])
                    for r in await cur.fetchall()]

    async def mark_traces_exported(self, run_ids: Sequence[str]) -> None:
        if not run_ids:
            return
        async with self.db.transaction() as conn:
            await conn.execute(
                self._q("UPDATE {s}.runs SET traces_exported = true WHERE source = %s AND run_id = ANY(%b)"),
                (self.source, list(run_ids)),
            )

    async def has_pending_traces(self, ready_only: bool = False) -> bool:
        """Whether a counted run is not exported as spans yet. ``ready_only`` leaves out the runs waiting
        for their parent to be counted (:meth:`pending_traces` holds them back, up to its ``hold``: at
        ``now`` 0 none has waited long enough). :meth:`pending_traces`'s first row: the outbox's partial
        index in order, a primary-key probe per run for its parent. (An EXISTS with the parent check as
        a subquery was planned as a hash of every counted run: 40 ms at 10^5 runs.)"""
        return bool(await self.pending_traces(1, now=0.0 if ready_only else float("inf")))

    # --- agno's own spans (exporter.sinks.otel.agno_spans) ------------------------------------------------

    async def queue_spans(self, span_ids: Sequence[str], now: float) -> list[str]:
        """Queue spans for forwarding; returns the ids that were new (the primary key is the dedupe:
        a span queued once is never queued again, across restarts and replicas)."""
        if not span_ids:
            return []
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                self._q(
                    "INSERT INTO {s}.forwarded_spans (source, span_id, queued_at)"
                    " SELECT %s, id, %s FROM unnest(%b::text[]) AS t(id) ON CONFLICT DO NOTHING RETURNING span_id"
                ),
                (self.source, now, list(span_ids)),
            )
            queued = [r["span_id"] for r in await cur.fetchall()]
        await self._grew("forwarded_spans", len(queued))
        return queued

    async def pending_spans(self, limit: int) -> list[str]:
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                self._q(
                    "SELECT span_id FROM {s}.forwarded_spans WHERE source = %s AND NOT exported"
                    " ORDER BY queued_at, span_id LIMIT %s"
                ),
                (self.source, limit),
            )
            return [r["span_id"] for r in await cur.fetchall()]

    async def mark_spans_exported(self, span_ids: Sequence[str]) -> None:
        if not span_ids:
            return
        async with self.db.transaction() as conn:
            await conn.execute(
                self._q("UPDATE {s}.forwarded_spans SET exported = true WHERE source = %s AND span_id = ANY(%b)"),
                (self.source, list(span_ids)),
            )

    async def forget_spans(self, before: float, limit: int) -> int:
        """Delete up to ``limit`` delivered spans queued before ``before`` (unix seconds); returns how
        many. Only for spans no poll can list again (:class:`exporter.sinks.otel.agno_spans.SpanPoller`)."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                self._q("DELETE FROM {s}.forwarded_spans WHERE source = %s AND span_id IN (SELECT span_id"
                        " FROM {s}.forwarded_spans WHERE source = %s AND exported AND queued_at < %s LIMIT %s)"),
                (self.source, self.source, before, limit))
            return cur.rowcount
