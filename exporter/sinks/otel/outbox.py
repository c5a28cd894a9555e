"""The durable trace outbox: runs counted but not yet delivered as spans, kept in the state store.

A run enters the outbox in the same transaction that counts it; the trace sink marks it exported
only after the backend accepted its spans. The outbox holds ids, not spans, so memory stays bounded
however long the backend is down. The records the collector just counted are handed over in memory
(:meth:`StateOutbox.offer`, at most ``keep`` of them): an agent run of its own row is built from there,
with no second read of agno's table, and so is any agent or team row a delivery needs (a team's own row, a
member's team, a team's member rows found by the member query): those are not parsed again. Everything
else — after a restart, a failed export, a cache that was full, a workflow run (whose layout needs the
runs nested in it) — is re-read from agno's table by run id, as the durable outbox always allows; a
team's member rows are always looked up in agno's table (which of them exist is agno's to say), but
parsed only when not in memory. A run
nested in another run's row (a workflow's step, see records.build_row_runs) is re-read through
that row. A run with a parent waits until its parent is counted (at most ``hold`` seconds): a team
member's span hangs under the team's tool call that started it, which only the team's row tells.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from exporter.ingest.readers import AgnoSource
from exporter.records.nesting import MAX_NESTING, RowRuns, build_row_runs, delegating_tool
from exporter.records.parse import row_run_id
from exporter.records.runs import BadRow, RunRecord
from exporter.sinks.otel.delivery import PendingTrace
from exporter.state.outbox import Counted
from exporter.state.store import PostgresState

log = logging.getLogger("agno_exporter.traces")


class StateOutbox:
    def __init__(self, state: PostgresState, source: AgnoSource, with_content: bool = False,
                 active: Callable[[], bool] = lambda: True, hold: float = 900.0,
                 clock: Callable[[], float] = time.time, keep: int = 4096) -> None:
        self.state = state
        self.source = source
        self.with_content = with_content
        self.active = active  # with ha.enabled only the leader delivers spans
        self.hold = hold  # the longest a run waits for its parent to be counted (collector.stuck_after)
        self.clock = clock
        self.keep = keep  # records held for delivery: about 1-3 KB each without content
        self._recent: dict[str, RunRecord] = {}  # run id -> the record counted, oldest first
        # Member runs already delivered, kept for their team's layout: a member is counted (and so delivered)
        # before its team most of the time. At most keep // 8 of them, the oldest dropped first.
        self._members: dict[str, RunRecord] = {}

    def offer(self, records: Iterable[RunRecord]) -> None:
        """Records the collector has just committed (so queued here): kept until exported, for the
        :meth:`pending` that delivers them. When ``keep`` are held, newer ones are not kept (the
        oldest are delivered first; the others are re-read)."""
        for record in records:
            if len(self._recent) >= self.keep:
                return
            if record.host_run_id is None:  # nested runs are built from their host's row
                self._recent[record.run_id] = record

    def _in_memory(self, c: Counted) -> PendingTrace | None:
        """``c`` built from the record the collector counted, when that gives what a re-read gives: an
        agent run that is its own row (its spans depend on that row alone, no nested or member runs),
        whose parent, if any, is in memory too (a team's record says which tool call started it)."""
        record = self._recent.get(c.run_id)
        if record is None or record.run_type != "agent" or c.host_run_id is not None:
            return None
        tool = None
        if c.parent_run_id:
            if c.parent_row_run_id != c.parent_run_id:
                return None  # the parent is nested in another row (or not counted): read it
            team = self._recent.get(c.parent_run_id)
            if team is None:
                return None
            if team.run_type == "team":
                tool = delegating_tool(team, record)
        return PendingTrace(record, c.root_run_id, tool, {})

    async def pending(self, limit: int) -> Sequence[PendingTrace]:
        if not self.active():
            return []
        listed = await self.state.pending_traces(limit, self.clock(), self.hold)
        out: dict[str, PendingTrace] = {}
        counted = []
        for c in listed:
            if (built := self._in_memory(c)) is not None:
                out[c.run_id] = built
            else:
                counted.append(c)
        if counted:
            await self.source.refresh()
        refs: dict[str, str | None] = {}  # row run id -> session id
        rows: dict[str, RowRuns | BadRow] = {}
        for c in counted:
            for row_id in (c.row_run_id, c.parent_row_run_id):
                if row_id and row_id not in rows and (held := self._held_row(row_id)) is not None:
                    rows[row_id] = held
                elif row_id:
                    refs.setdefault(row_id, c.session_id)
        for row in await self.source.fetch_runs(list(refs.items())):
            rows[str(row_run_id(row))] = self._row_runs(row)
        tree = await self._tree([r for r in rows.values() if isinstance(r, RowRuns)])
        gone: list[str] = []
        for c in counted:
            try:
                record = _find(_held(rows, c.row_run_id), c.run_id)
                if record is None:
                    raise BadRow("run_gone", f"run {c.run_id} is no longer in the row of run {c.row_run_id}")
                tool = None
                parent = rows.get(c.parent_row_run_id or "")
                if c.parent_run_id and isinstance(parent, RowRuns):
                    team = _find(parent, c.parent_run_id)
                    if team is not None and team.run_type == "team":
                        tool = delegating_tool(team, record)
                out[c.run_id] = PendingTrace(record, c.root_run_id, tool, tree)
            except BadRow as exc:
                log.warning("no spans for run %s: %s", c.run_id, exc)
                gone.append(c.run_id)
        await self.mark_exported(gone)
        return [out[c.run_id] for c in listed if c.run_id in out]  # oldest first, as listed

    async def _tree(self, held: Sequence[RowRuns]) -> dict[str, tuple[RunRecord, ...]]:
        """run id -> the runs nested directly in it: what the rows hold nested, and the member runs of
        teams that are rows of their own (rows of their own too, read by their parent)."""
        tree: dict[str, dict[str, RunRecord]] = {}
        for runs in held:
            for record in runs.nested:
                if record.parent_run_id:
                    tree.setdefault(record.parent_run_id, {}).setdefault(record.run_id, record)
        teams = [r.run for r in held if r.run.run_type == "team"]
        for _ in range(MAX_NESTING):  # a member that is a team has members of its own
            if not teams:
                break
            members = []
            for row in await self.source.fetch_children([(t.run_id, t.session_id) for t in teams]):
                member_row = self._row_runs(row)
                if isinstance(member_row, BadRow):
                    continue  # the member's own trace says so; its team's layout does without it
                members.append(member_row.run)
            teams = []
            for member in members:
                if member.parent_run_id and member.run_id not in tree.setdefault(member.parent_run_id, {}):
                    tree[member.parent_run_id][member.run_id] = member
                    if member.run_type == "team":
                        teams.append(member)
        return {k: tuple(v.values()) for k, v in tree.items()}

    def _held_row(self, row_id: str) -> RowRuns | None:
        """The runs of a row as the counted record in memory gives them: an agent or team run that is a row of its
        own holds no nested runs (build_row_runs reads those only in workflows and in teams nested in a row)."""
        record = self._recent.get(row_id) or self._members.get(row_id)
        if record is None or record.host_run_id is not None or record.run_type not in ("agent", "team"):
            return None
        return RowRuns(record)

    def _row_runs(self, row: Mapping[str, Any]) -> RowRuns | BadRow:
        """A row read again: from the record counted in memory when there is one (see :meth:`_held_row`; parsing
        run_data again is most of a re-read's cost), else parsed."""
        held = self._held_row(str(row_run_id(row)))
        if held is not None:
            return held
        try:
            return build_row_runs(row, row.get("run_data"), with_content=self.with_content)
        except BadRow as exc:
            return exc

    async def mark_exported(self, run_ids: Sequence[str]) -> None:
        await self.state.mark_traces_exported(run_ids)
        for run_id in run_ids:
            record = self._recent.pop(run_id, None)
            if record is not None and record.parent_run_id and self.keep >= 8:
                if len(self._members) >= self.keep // 8:
                    del self._members[next(iter(self._members))]
                self._members[run_id] = record


def _held(rows: dict[str, RowRuns | BadRow], row_id: str) -> RowRuns:
    found = rows.get(row_id)
    if found is None:
        raise BadRow("row_gone", f"the row of run {row_id} was deleted from agno's table")
    if isinstance(found, BadRow):
        raise found
    return found


def _find(held: RowRuns, run_id: str) -> RunRecord | None:
    for record in held.records:
        if record.run_id == run_id:
            return record
    return None
