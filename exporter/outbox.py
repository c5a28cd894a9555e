"""The durable trace outbox: runs counted but not yet delivered as spans, kept in the state store.

A run enters the outbox in the same transaction that counts it; the trace sink marks it exported
only after the backend accepted its spans. Records are re-read from agno's table by run id, so the
outbox holds ids, not spans, and memory stays bounded however long the backend is down.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from .readers import AgnoSource
from .records import BadRow, build_run_record, row_run_id
from .state import PostgresState
from .traces import PendingTrace

log = logging.getLogger("agno_exporter.traces")


class StateOutbox:
    def __init__(self, state: PostgresState, source: AgnoSource, with_content: bool = False,
                 active: Callable[[], bool] = lambda: True) -> None:
        self.state = state
        self.source = source
        self.with_content = with_content
        self.active = active  # with ha.enabled only the leader delivers spans

    async def pending(self, limit: int) -> Sequence[PendingTrace]:
        if not self.active():
            return []
        counted = await self.state.pending_traces(limit)
        if counted:
            await self.source.refresh()
        fetched = await self.source.fetch_runs([(c.run_id, c.session_id) for c in counted])
        rows = {row_run_id(r): r for r in fetched}
        out: list[PendingTrace] = []
        gone: list[str] = []
        for c in counted:
            row = rows.get(c.run_id)
            try:
                if row is None:
                    raise BadRow("row_gone", "the run's row was deleted from agno's table")
                out.append(PendingTrace(build_run_record(row, row.get("run_data"), with_content=self.with_content),
                                        c.root_run_id))
            except BadRow as exc:
                log.warning("no spans for run %s: %s", c.run_id, exc)
                gone.append(c.run_id)
        await self.state.mark_traces_exported(gone)
        return out

    async def mark_exported(self, run_ids: Sequence[str]) -> None:
        await self.state.mark_traces_exported(run_ids)
