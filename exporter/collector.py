"""The poll loop: source -> records -> sinks, then commit state.

One poll: take the database snapshot, list candidate runs page by page (light), fetch the ones not
counted yet, turn them into records (malformed rows are counted and remembered, never retried and
never blocking), and count each page in one state transaction. After the last page the low
watermark advances (see :mod:`exporter.cursor`). Errors end the poll, not the process: the loop
reports ``agno_exporter_up 0``, backs off, reconnects and catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from prometheus_client.core import Metric
from prometheus_client.registry import Collector as PromCollector

from . import prom
from .cursor import Watermark
from .ids import trace_id_hex
from .leader import Leadership
from .prices import PriceTable
from .readers import AgnoSource, Reader
from .records import (
    BadRow,
    RunRecord,
    SessionRecord,
    SessionRun,
    build_run_record,
    build_session_record,
    build_session_run,
    row_run_id,
    session_claim_tokens,
)
from .series import Observation, SeriesRow, SeriesStore
from .source import Candidate, Snapshot
from .state import PostgresState, StateNotWritable

log = logging.getLogger("agno_exporter.collector")

MAX_RULE_CHECKS = 100  # sessions whose runs are read per poll to check their totals run by run


@dataclass(frozen=True)
class CollectorOptions:
    batch_size: int = 500
    clock_skew: float = 10.0
    max_lookback: float = 3600.0
    backfill: bool = True
    top_sessions: int = 10
    top_sessions_window: float = 86400.0
    # The top-K query sorts every session active in the window: repeat it when runs were counted, else
    # only this often (so an idle poll stays cheap; a session leaves the window at most this late).
    top_sessions_refresh: float = 60.0
    with_content: bool = False
    prices: PriceTable | None = None
    stuck_after: float = 900.0
    # agno writes a session's totals after the run's row; compare only once they have had time to settle
    session_settle: float = 5.0
    max_pending_session_checks: int = 10_000
    cursor_save_interval: float = 10.0


@dataclass
class _Loaded:
    records: list[RunRecord] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (run id, reason)
    roots: dict[str, str] = field(default_factory=dict)  # run id -> its trace's root run id


@dataclass(frozen=True)
class PollFailure:
    """The last failed poll, for the landing page."""

    at: float  # unix time
    reason: str  # database, query, state (agno_exporter_poll_errors_total's reason)
    message: str  # as logged (connection errors have their URL's password masked, see db.connect)


@dataclass
class PollResult:
    counted: int = 0
    skipped: int = 0
    pages: int = 0


def _settle_heap() -> None:
    """Keep the cyclic garbage collector off the hot path (a fifth of the time counting a large table).

    What exists once the state is loaded (modules, config, the series) lives as long as the process,
    so it is frozen out of the collector's scans. A poll allocates tens of thousands of short-lived
    dicts and tuples per chunk (parsed JSON, records, observations), nearly all freed by reference
    counting; a first-generation threshold of 50,000 live new objects instead of 700 stops the
    collector from rescanning the chunk in flight over and over. Cyclic garbage is still collected.
    """
    gc.collect()  # so that only live objects are frozen
    gc.freeze()
    if gc.get_threshold()[0] < 50_000:
        gc.set_threshold(50_000, 20, 20)


class RunCollector:
    """Reads finished runs from one agno database and counts each exactly once."""

    def __init__(
        self,
        source: AgnoSource,
        state: PostgresState,
        store: SeriesStore,
        metrics: prom.SelfMetrics,
        options: CollectorOptions,
        clock: Callable[[], float] = time.time,
        on_commit: Callable[[Sequence[RunRecord]], None] | None = None,
        leadership: Leadership | None = None,
    ) -> None:
        self.leadership = leadership or Leadership(None, 0, "")
        self.source = source
        self.state = state
        self.store = store
        self.m = metrics
        self.opts = options
        self.clock = clock
        self.on_commit = on_commit
        self.watermarks: dict[str, Watermark] = {}  # per reader (agno 3.x table, 2.x column)
        self.top: list[tuple[str, str, str, int, float, float]] = []
        self.open_runs: list[tuple[str, str, str, int, int, float]] = []  # type, name, status, n, stuck, age
        self.started = False
        self.ready = False
        self.last_success: float | None = None  # unix time of the last successful poll
        self.last_failure: PollFailure | None = None
        self._waiting_logged = False
        self._session_checks: dict[str, float] = {}  # session id -> when a run of it was counted
        self._top_at = float("-inf")
        self._cursor_saved: dict[str, float] = {}  # reader key -> when its watermark was last saved

    async def start(self) -> None:
        """Create/load the durable state. Safe to call again after a failure."""
        try:
            await self.state.setup()
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction) as exc:
            raise StateNotWritable(self.state.schema, str(exc)) from None
        self.watermarks.clear()
        self._cursor_saved.clear()
        self.store.load(await self.state.load_series())
        await self.source.refresh(force=True)
        self.started = True
        log.info("state loaded: %d series", self.store.series_count())
        _settle_heap()

    async def _watermark(self, reader: Reader) -> Watermark:
        wm = self.watermarks.get(reader.key)
        if wm is None:
            wm = Watermark(low=await self.state.load_cursor(reader.key), max_lookback=self.opts.max_lookback)
            self.watermarks[reader.key] = wm
        return wm

    # --- one poll ------------------------------------------------------------------------------

    async def poll_once(self) -> PollResult:
        if not self.started:
            await self.start()
        result = PollResult()
        snap = await self.source.snapshot()
        readers = await self.source.refresh()
        if not readers:
            # agno creates its tables on first use: an app that has not run yet is not an error (the
            # source says so every few minutes, agno_exporter_tables says 0).
            return result
        try:
            for reader in readers:
                await self._read(reader, await self._watermark(reader), snap, result)
        except psycopg.errors.UndefinedTable as exc:
            # A table dropped (or a forced table missing) under us: look again next poll.
            if not self._waiting_logged:
                log.warning("an agno table is gone or not there yet (%s): looking for agno's tables again",
                            str(exc).strip().splitlines()[0])
                self._waiting_logged = True
            await self.source.refresh(force=True)
            return result
        self._waiting_logged = False
        for reader in readers:
            wm = self.watermarks[reader.key]
            low, clamped = wm.advance(snap)
            if clamped:
                self.m.lookback_clamped.inc()
                log.warning("an open transaction is older than collector.max_lookback; the re-read window is"
                            " clamped")
            # An older saved watermark only makes a restart re-read (and skip) a few more runs, so it
            # is written every few seconds, not on every poll (a write and a flush each time).
            if snap.now - self._cursor_saved.get(reader.key, float("-inf")) >= self.opts.cursor_save_interval:
                await self.state.save_cursor(low, reader.key)
                self._cursor_saved[reader.key] = snap.now
        self.m.watermark.set(min(self.watermarks[r.key].low for r in readers))
        if self.opts.top_sessions and (result.counted or snap.now - self._top_at >= self.opts.top_sessions_refresh):
            self.top = await self.state.top_sessions(snap.now - self.opts.top_sessions_window,
                                                     self.opts.top_sessions)
            self._top_at = snap.now
        await self._check_sessions(snap.now)
        self.open_runs = [
            (r["run_type"] or "", r["name"], r["status"], int(r["n"]), int(r["stuck"]),
             max(0.0, snap.now - float(r["oldest"] or snap.now)))
            for r in await self.source.open_runs(snap.now, self.opts.stuck_after)
        ]
        return result

    async def _read(self, reader: Reader, wm: Watermark, snap: Snapshot, result: PollResult) -> None:
        """Count the reader's new runs chunk by chunk, two chunks in flight: while one is committed to
        the state, the next is fetched from agno's table and parsed (the source and the state are two
        connections, and Postgres and Python then work at the same time).

        The early ``known`` filter of a chunk runs before the previous chunk commits, so it may miss
        ids that chunk just counted; it only saves fetches: the commit's insert of the run ids is
        what keeps each run counted once.
        """
        if wm.low == 0.0 and not self.opts.backfill and not reader.appeared:
            log.info("backfill disabled: counting runs of %s finished from now on", reader.key)
            return
        ready: _Loaded | None = None  # fetched and parsed, waiting for its commit
        async with contextlib.aclosing(self._chunks(reader, wm, result)) as chunks:
            async for chunk in chunks:
                result.pages += 1
                known = await self.state.known([c.run_id for c in chunk])
                todo = [(c.run_id, c.session_id) for c in chunk if c.run_id not in known]
                loading = asyncio.create_task(self._load(reader, todo)) if todo else None
                try:
                    if ready is not None:
                        await self._commit(ready, result)
                except BaseException as exc:
                    if loading is not None:  # never leave a query running on the source connection
                        if isinstance(exc, asyncio.CancelledError):
                            loading.cancel()
                        with contextlib.suppress(Exception, asyncio.CancelledError):
                            await loading
                    raise
                ready = await loading if loading is not None else None
        if ready is not None:
            await self._commit(ready, result)

    async def _chunks(self, reader: Reader, wm: Watermark, result: PollResult) -> AsyncGenerator[list[Candidate], None]:
        """Candidate pages in listing order, cut to ``batch_size`` (a page of agno 2.x sessions can
        hold many more runs). Advanced only when no chunk is loading: one query at a time per
        connection."""
        after: Any = None
        while True:
            if wm.low == 0.0:
                page = await reader.backfill(after, self.opts.batch_size)
            else:
                page = await reader.candidate_page(wm.low - self.opts.clock_skew, after, self.opts.batch_size)
            for i in range(0, len(page.items), self.opts.batch_size):
                yield page.items[i:i + self.opts.batch_size]
            if wm.low == 0.0 and page.items:
                log.info("backfill of %s: %d runs counted so far", reader.key, result.counted)
            if page.after is None:
                return
            after = page.after

    async def _load(self, reader: Reader, todo: list[tuple[str, str | None]]) -> _Loaded:
        """Fetch and parse runs not counted yet: records, malformed rows, and each record's trace root."""
        loaded = _Loaded()
        seen: set[str] = set()
        for row in await reader.fetch_runs(todo):
            run_id = str(row_run_id(row))
            if run_id in seen:  # an agno 2.x array can hold a run twice: count it once
                continue
            seen.add(run_id)
            try:
                record = build_run_record(row, row.get("run_data"), with_content=self.opts.with_content)
            except BadRow as exc:
                log.warning("skipping run %s: %s", run_id, exc)
                loaded.skipped.append((run_id, exc.reason))
                continue
            if record.final:
                loaded.records.append(record)
        loaded.roots = await self.source.ancestors(
            [(r.run_id, r.session_id) for r in loaded.records if r.parent_run_id])
        return loaded

    async def _commit(self, loaded: _Loaded, result: PollResult) -> None:
        """Count one chunk in one state transaction, then (only then) update memory and self-metrics."""
        records, skipped, roots = loaded.records, loaded.skipped, loaded.roots
        trace_ids = {r.run_id: trace_id_hex(roots.get(r.run_id, r.run_id)) for r in records}
        now = self.clock()
        staged_box: list[Any] = []
        # Built before the transaction: a session's cost is summed from the very cost observations
        # that go to agno_cost_usd_total (estimates included), and the transaction stays short.
        per_run = {r.run_id: list(prom.observations(r, trace_ids[r.run_id], self.opts.prices)) for r in records}
        costs = {run_id: prom.cost_of(obs) for run_id, obs in per_run.items()}

        def compute(fresh: list[RunRecord], new_sessions: list[tuple[str, str]]) -> list[SeriesRow]:
            obs: list[Observation] = [o for rec in fresh for o in per_run[rec.run_id]]
            obs.extend(prom.new_session_observations(new_sessions))
            staged = self.store.stage(obs, now)
            staged_box.append(staged)
            return staged.rows()

        batch = await self.state.commit_batch(records, roots, skipped, now, compute, costs=costs)
        staged_box[-1].apply()  # only after the commit: memory never runs ahead of the state
        for rec in batch.new_records:
            self.m.runs_collected.labels(rec.run_type).inc()
            self.m.lag.observe(max(0.0, now - rec.updated_at))
            for reason in rec.sanitized:
                self.m.rows_sanitized.labels(reason).inc()
            if rec.anomalies:
                log.warning("run %s (%s %s, %s): inconsistent token numbers stored by agno: %s",
                            rec.run_id, rec.provider, rec.model, rec.name, ", ".join(rec.anomaly_kinds))
        for _, reason in skipped:
            self.m.rows_skipped.labels(reason).inc()
        for rec in batch.new_records:
            if rec.session_id and len(self._session_checks) < self.opts.max_pending_session_checks:
                self._session_checks[rec.session_id] = now
        result.counted += len(batch.new_records)
        result.skipped += len(skipped)
        if self.on_commit and batch.new_records:
            self.on_commit(batch.new_records)

    async def _check_sessions(self, now: float) -> None:
        """Compare agno's stored session totals with the session's runs (agno can lose updates).

        A session is compared once all its runs are finished and counted, and a settle time after
        its last run was counted. Its totals should equal its runs' sum, except where the agno
        release that saved the session left runs out: agno 2.3.5-2.5.3 add only a team run's own
        metrics, not its member runs' (see records.TEAM_TOTALS, the README's agno release table).
        Only a session whose totals differ from its runs' sum has its runs read, to apply those
        rules run by run (a session may have been saved by several releases). A session whose stored
        runs are fewer than the runs counted (agno 2.x rewrote its runs blob from an older copy and
        dropped finished runs) disagrees. Each disagreeing session is counted once and logged once.
        """
        due = [sid for sid, t in self._session_checks.items() if now - t >= self.opts.session_settle]
        if not due:
            return
        counts = await self.source.session_run_counts(due)
        ours = await self.state.sessions_by_id(due)
        complete = [sid for sid in due
                    if sid in ours and counts.get(sid, (0, 1))[1] == 0 and counts[sid][0] <= ours[sid]["runs"]]
        disagreeing: dict[str, str] = {}  # session id -> what is wrong, for the log
        by_rules: dict[str, SessionRecord] = {}  # sessions to compare run by run
        for row in await self.source.sessions(complete):
            try:
                stored = build_session_record(row)
            except BadRow as exc:
                log.warning("session %s: unreadable session_metrics: %s", row.get("session_id"), exc)
                continue
            mine = ours[stored.session_id]
            summed = int(mine["tokens"])
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
                self._session_checks.pop(sid, None)
        if not disagreeing:
            return
        staged_box: list[Any] = []

        def compute(newly: list[tuple[str, str, str]]) -> list[SeriesRow]:
            staged = self.store.stage(
                [Observation("agno_session_disagreements", (rt, nm), 1) for _, rt, nm in newly], now)
            staged_box.append(staged)
            return staged.rows()

        await self.state.flag_disagreements(list(disagreeing), compute)
        staged_box[-1].apply()
        for sid, why in disagreeing.items():
            log.warning("session %s: %s (exported totals come from the runs)", sid, why)

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

    # --- the loop ------------------------------------------------------------------------------

    async def run(self, interval: float, max_backoff: float = 60.0,
                  wake: asyncio.Event | None = None) -> None:
        """Poll forever; on failure report down, back off (with jitter) and retry."""
        failures = 0
        told_state = False  # a state the role may not write is said once (it is counted every time)
        while True:
            t0 = time.perf_counter()
            was_leader = self.leadership.is_leader
            if not await self.leadership.check():
                # standby: healthy, but neither counting nor exporting totals
                self.ready = True
                self.m.ready.set(1)
                self.m.leader.set(0)
                await asyncio.sleep(interval)
                continue
            self.m.leader.set(1)
            if not was_leader and self.started:
                self.started = False  # promoted: reload the state the old leader left
            try:
                result = await self.poll_once()
            except (psycopg.Error, OSError) as exc:
                failures += 1
                reason = ("state" if isinstance(exc, StateNotWritable)
                          else "database" if isinstance(exc, (psycopg.OperationalError, OSError)) else "query")
                self.m.poll_errors.labels(reason).inc()
                self.m.up.set(0)
                # A commit may have succeeded without us hearing so: reload memory from the durable state.
                self.started = False
                self.ready = False
                self.m.ready.set(0)
                delay = min(max_backoff, interval * 2 ** min(failures, 10)) * random.uniform(0.5, 1.0)
                self.last_failure = PollFailure(self.clock(), reason, str(exc).strip())
                if reason != "state":
                    log.error("poll failed (%s), retrying in %.1fs: %s", reason, delay, self.last_failure.message)
                elif not told_state:
                    told_state = True
                    log.error("state: %s; retrying until it may", self.last_failure.message)
                await asyncio.sleep(delay)
                continue
            failures = 0
            told_state = False
            self.m.poll_duration.observe(time.perf_counter() - t0)
            self.m.up.set(1)
            self.last_success = self.clock()
            self.m.last_success.set(self.last_success)
            self.ready = True
            self.m.ready.set(1)
            if result.counted or result.skipped:
                log.info("poll: %d runs counted, %d skipped", result.counted, result.skipped)
            if wake is None:
                await asyncio.sleep(interval)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), interval)
                wake.clear()


class TopSessions(PromCollector):
    """Exposes the collector's latest top-K sessions (refreshed every poll)."""

    def __init__(self, collector: RunCollector) -> None:
        self.collector = collector

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        yield from prom.top_sessions_metrics(self.collector.top)
        yield from prom.open_runs_metrics(self.collector.open_runs, self.collector.opts.stuck_after)
