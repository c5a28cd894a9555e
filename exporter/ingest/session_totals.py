"""Comparing agno's stored session totals with what the session's runs add up to (agno can lose updates).

:class:`SessionTotalsCheck` is told of each session a counted run belongs to (:meth:`~SessionTotalsCheck.counted`)
and compares them in later polls (:meth:`~SessionTotalsCheck.check`): the collector's counters come from the
runs; a disagreeing session is flagged in the state (``agno_session_disagreements_total``) and logged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any

from exporter.ingest.readers import Source
from exporter.records.runs import BadRow, SessionRecord, SessionRun
from exporter.records.sessions import build_session_record, build_session_run, session_claim_tokens
from exporter.sink import Sink
from exporter.state.store import PostgresState

log = logging.getLogger("agno_exporter.collector")  # its lines are the poll's (operators filter on this name)

EXAMPLES = 3  # session ids named in a summary line
MAX_RULE_CHECKS = 100  # sessions whose runs are read per poll to check their totals run by run
SESSION_ROWS_PER_READ = 500  # agno session rows per read when their totals are checked


class SessionTotalsCheck:
    """Sessions waiting to be compared, and the comparison (see :meth:`check`).

    ``settle``: seconds after a session's last counted run before it is compared (agno writes a
    session's totals after the run's row); ``max_pending``: sessions remembered at most (more are
    not compared: after a backfill of a large table, the most recent ones are).
    """

    def __init__(self, source: Source, state: PostgresState, sink: Sink, settle: float = 5.0,
                 max_pending: int = 10_000) -> None:
        self.source = source
        self.state = state
        self.sink = sink
        self.settle = settle
        self.max_pending = max_pending
        self.pending: dict[str, float] = {}  # session id -> when a run of it was last counted (unix seconds)

    def counted(self, session_id: str, now: float) -> None:
        """A run of ``session_id`` was counted at ``now`` (unix seconds): compare the session later."""
        if session_id in self.pending or len(self.pending) < self.max_pending:
            self.pending[session_id] = now

    async def check(self, now: float) -> None:
        """Compare agno's stored session totals with the session's runs (agno can lose updates).

        A session is compared once all its runs are finished and counted, and a settle time after
        its last run was counted. Its totals should equal what its runs add up to by agno's own
        conventions: a workflow session sums its runs' ``metrics.steps`` (RunRecord.session_tokens,
        kept per session in the state), and agno 2.3.5-2.5.3 add only a team run's own metrics, not
        its member runs' (see records.TEAM_TOTALS, the README's agno release table). Only a session
        whose totals differ from the state's sum has its runs read, to apply the release rules run by
        run (a session may have been saved by several releases). A session whose stored runs are
        fewer than the runs counted (agno 2.x rewrote its runs blob from an older copy and dropped
        finished runs) disagrees. Each disagreeing session is counted once; a poll logs one summary
        line (each session at DEBUG).
        """
        due = [sid for sid, t in self.pending.items() if now - t >= self.settle]
        if not due:
            return
        counts = await self.source.session_run_counts(due)
        ours = await self.state.sessions_by_id(due)
        complete = [sid for sid in due
                    if sid in ours and counts.get(sid, (0, 1))[1] == 0 and counts[sid][0] <= ours[sid]["runs"]]
        disagreeing: dict[str, str] = {}  # session id -> what is wrong, for the log
        by_rules: dict[str, SessionRecord] = {}  # sessions to compare run by run
        async for row in self._session_rows(complete):
            try:
                stored = build_session_record(row)
            except BadRow as exc:
                log.warning("session %s: unreadable session_metrics: %s", row.get("session_id"), exc)
                continue
            mine = ours[stored.session_id]
            # agno's own convention where known (a workflow session sums its runs' metrics.steps);
            # sessions counted before the state kept it compare with the sum of the runs' tokens
            summed = int(mine["tokens"] if mine["agno_tokens"] is None else mine["agno_tokens"])
            if mine["disagreement"] or stored.claimed_tokens == summed:
                continue
            dropped = int(mine["runs"]) - counts[stored.session_id][0]
            if dropped > 0:
                disagreeing[stored.session_id] = (
                    f"agno's stored session_metrics claim {stored.claimed_tokens} tokens, the runs counted sum to"
                    f" {summed}; agno no longer holds {dropped} of those finished runs (agno 2.x: a concurrent save"
                    " of the session rewrote its runs from an older copy)")
            else:
                by_rules[stored.session_id] = stored
        # Each is a read of the session's runs: a backfill of an agno 2.3 database (every team session
        # here) must not hold up the poll, so the rest wait for the next polls.
        later = set(list(by_rules)[MAX_RULE_CHECKS:])
        if by_rules:
            await self._check_by_rules({sid: by_rules[sid] for sid in list(by_rules)[:MAX_RULE_CHECKS]}, ours,
                                       disagreeing)
        for sid in due:
            if sid not in later:
                self.pending.pop(sid, None)
        if not disagreeing:
            return
        staged = await self.state.flag_disagreements(
            list(disagreeing), lambda newly: self.sink.stage_disagreements(newly, now))
        staged.apply()
        for sid, why in disagreeing.items():
            log.debug("session %s: %s", sid, why)
        examples = "; ".join(f"{sid} ({why})" for sid, why in list(disagreeing.items())[:EXAMPLES])
        log.warning("%d sessions whose stored session_metrics disagree with their runs (exported totals come from"
                    " the runs), e.g. %s; each is logged at DEBUG and shown by `agno-exporter sessions show ID`",
                    len(disagreeing), examples)

    async def _session_rows(self, session_ids: list[str]) -> AsyncGenerator[dict[str, Any], None]:
        """agno's session rows, read :data:`SESSION_ROWS_PER_READ` at a time: a row holds the session's
        JSON (agent, team and session data), and after a backfill up to ``max_pending_session_checks``
        sessions are due at once (10^4 rows read in one go raised the peak RSS by about 20 MB)."""
        for i in range(0, len(session_ids), SESSION_ROWS_PER_READ):
            for row in await self.source.sessions(session_ids[i:i + SESSION_ROWS_PER_READ]):
                yield row

    async def _check_by_rules(self, stored: dict[str, SessionRecord], ours: dict[str, dict[str, Any]],
                              disagreeing: dict[str, str]) -> None:
        """What each session's totals should claim by the rules of the releases that saved its runs."""
        for sid, record in stored.items():
            runs: dict[str, SessionRun] = {}
            try:
                for row in await self.source.session_runs(sid):  # one run once, whichever table holds it
                    run = build_session_run(row, row.get("run_data"))
                    if run.final:
                        runs[run.run_id] = run
            except BadRow as exc:  # the run itself is counted as skipped where it is read
                log.warning("session %s: a run is unreadable, the session is not compared: %s", sid, exc)
                continue
            expected = session_claim_tokens(list(runs.values()))
            if record.claimed_tokens == expected:
                log.debug("session %s: agno's stored totals leave out member runs, as the agno release that"
                          " saved them does (%d tokens of %d)", sid, expected, ours[sid]["tokens"])
                continue
            summed = int(ours[sid]["tokens"])
            rule = "" if expected == summed else f" (by the rules of the agno release that saved them: {expected})"
            cause = ("lost updates: runs of the session ran concurrently" if record.claimed_tokens < expected else
                     "tokens of runs agno did not store, e.g. the members of a team inside a team")
            disagreeing[sid] = (f"agno's stored session_metrics claim {record.claimed_tokens} tokens, its runs sum"
                                f" to {summed}{rule}; likely {cause}")

