"""The poll loop: source -> records -> sinks, then commit state.

One poll: take the database snapshot, list candidate runs page by page (light), fetch the ones not
counted yet, turn them into records (malformed rows are counted and remembered, never retried and
never blocking), and count each page in one state transaction. After the last page the low
watermark advances (see :mod:`exporter.ingest.cursor`). Errors end the poll, not the process: the loop
reports ``agno_exporter_up 0``, backs off, reconnects and catches up.

No single run can stop the counting: a row that does not parse is a counted skip, and a page the
state refuses for a reason that belongs to a row (a value it cannot hold) is committed in parts
until the refused run is found and skipped; only a database fault retries the whole page.

The log is meant for an operator: each skipped run is logged once (when its skip is recorded,
never again on a retry or after a restart), at most ``SKIP_WARNINGS_PER_POLL`` of them at WARNING
per poll and the rest summarised; runs with inconsistent token numbers and sessions whose stored
totals disagree are summarised per poll with a few example ids (each one at DEBUG); backfill
progress is logged only when runs were counted since the last line, with the rate and what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any

import psycopg

from exporter.ingest.cursor import Watermark, WindowLog
from exporter.ingest.leader import Leadership
from exporter.ingest.metrics import CollectorMetrics
from exporter.ingest.notify import Wakeup
from exporter.ingest.poll import (
    BackfillProgress,
    CollectorOptions,
    FetchedChunk,
    LoadedChunk,
    OpenRuns,
    PollFailure,
    PollResult,
    settle_heap,
)
from exporter.ingest.readers import Reader, Source
from exporter.ingest.retention import LedgerPruner
from exporter.ingest.session_totals import SessionTotalsCheck
from exporter.ingest.source import Candidate, Page, Snapshot
from exporter.records.ids import trace_id_hex
from exporter.records.nesting import build_row_runs
from exporter.records.parse import row_parent_ref, row_run_id
from exporter.records.runs import BadRow, RunRecord
from exporter.retry import poll_backoff
from exporter.sink import Sink
from exporter.state.rows import TopSession
from exporter.state.store import PostgresState, StateNotWritable

log = logging.getLogger("agno_exporter.collector")

SKIP_WARNINGS_PER_POLL = 10  # skipped runs logged one by one at WARNING per poll; the rest at DEBUG
EXAMPLES = 3  # ids named in a summary line
# Errors of a state write that belong to a value of a record, not to the database: SQLSTATE class 22
# ("bigint out of range", a character the encoding cannot hold) and psycopg's own refusal to send a
# value. Anything else (OperationalError: the database is down) retries the whole page.
ROW_FAULTS: tuple[type[Exception], ...] = (psycopg.DataError, UnicodeEncodeError)
STATE_REJECTED = "state_rejected"  # the rows_skipped reason of a run the state refused
IDLE_CURSOR_SAVE = 300.0  # seconds between watermark saves while no run is counted


class RunCollector:
    """Reads finished runs from one agno database and counts each exactly once."""

    def __init__(
        self,
        source: Source,
        state: PostgresState,
        sink: Sink,
        metrics: CollectorMetrics,
        options: CollectorOptions,
        clock: Callable[[], float] = time.time,
        on_commit: Callable[[Sequence[RunRecord]], None] | None = None,
        leadership: Leadership | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rng: random.Random | None = None,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``sink``: where counted runs go (:class:`exporter.sink.Sinks` for several); ``clock``: unix seconds;
        ``timer``: seconds for durations; ``sleep`` and ``rng``: the loop's waits and its backoff's jitter;
        ``on_commit``: called with the runs each commit counted, after the sinks were told."""
        self.leadership = leadership or Leadership(None, 0, "")
        self.source = source
        self.state = state
        self.sink = sink
        self.m = metrics
        self.opts = options
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.timer = timer
        self.on_commit = on_commit
        self.watermarks: dict[str, Watermark] = {}  # per reader (agno 3.x table, 2.x column)
        self.top: list[TopSession] = []
        self.open_runs: list[OpenRuns] = []
        self.started = False
        self.ready = False
        self.last_success: float | None = None  # unix time of the last successful poll
        self.last_failure: PollFailure | None = None
        self._waiting_logged = False
        self._top_at = float("-inf")
        self._top_expires = float("-inf")  # database time the top-K may change without new counts
        self._top_due: float | None = None  # database time a refresh is owed from (runs counted since)
        self._cursor_saved: dict[str, float] = {}  # reader key -> when its watermark was last saved
        self._unsaved: set[str] = set()  # reader keys whose saved watermark is older than runs counted since
        self._window_logs: dict[str, WindowLog] = {}  # reader key -> what was said about its re-read window
        grace = options.max_lookback if options.forget_after is None else options.forget_after
        self.pruner = LedgerPruner(state, source, grace, options.prune_batch, options.prune_interval)
        self.session_totals = SessionTotalsCheck(source, state, sink, options.session_settle,
                                                 options.max_pending_session_checks)

    async def start(self) -> None:
        """Create/load the durable state. Safe to call again after a failure."""
        try:
            await self.state.setup()
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction) as exc:
            raise StateNotWritable(self.state.schema, str(exc)) from None
        self.watermarks.clear()
        self._cursor_saved.clear()
        self._top_expires = float("-inf")  # the state may have been counted into by another process
        rows = await self.state.load_series()
        self.sink.restore(rows)
        await self.source.refresh(force=True)
        self.source.forget_open()
        self.pruner.reload(fresh=not await self.state.ledger_page("", 1))
        self.started = True
        log.info("state loaded: %d series", len(rows))
        settle_heap()

    def _window_log(self, reader: Reader) -> WindowLog:
        wl = self._window_logs.get(reader.key)
        if wl is None:
            wl = self._window_logs[reader.key] = WindowLog(log, ".".join(reader.written), self.opts.max_lookback)
        return wl

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
        try:
            return await self._poll(result)
        finally:
            self._log_poll(result)  # also when the poll failed after counting some pages

    async def _poll(self, result: PollResult) -> PollResult:
        readers = await self.source.refresh()
        if not readers:
            # agno creates its tables on first use: an app that has not run yet is not an error (the
            # source says so every few minutes, agno_exporter_tables says 0).
            return result
        # The open runs are read from the same window as the candidates (exporter.ingest.openruns); none
        # before the first watermark (a backfill).
        since = {r.key: wm.low - self.opts.clock_skew for r in readers if (wm := await self._watermark(r)).low > 0}
        try:
            # After refresh: the snapshot watches the writers of every table about to be read; first
            # pages that can come with it do (one round trip for an idle poll).
            snap, first = await self.source.begin_poll(since, self.opts.batch_size)
            for reader in readers:
                await self._read(reader, await self._watermark(reader), snap, result, first.get(reader.key))
        except psycopg.errors.UndefinedTable as exc:
            # A table dropped (or a forced table missing) under us: look again next poll.
            if not self._waiting_logged:
                log.warning("an agno table is gone or not there yet (%s): looking for agno's tables again",
                            str(exc).strip().splitlines()[0])
                self._waiting_logged = True
            await self.source.refresh(force=True)
            return result
        self._waiting_logged = False
        if result.counted or result.skipped:
            self._unsaved.update(r.key for r in readers)
        for reader in readers:
            wm = self.watermarks[reader.key]
            adv = wm.advance(snap.now, snap.writers_of(reader.written))
            low = adv.low
            if adv.clamped:
                self.m.lookback_clamped.inc()
            self._window_log(reader).report(adv, snap.now)
            # An older saved watermark only makes a restart re-read (and skip) a few more runs, so it
            # is written every few seconds while runs are counted, not on every poll (a write and a flush
            # each time), and only every few minutes while none are: a window in which nothing was
            # counted is re-read by a restart for nothing but one short read.
            every = self.opts.cursor_save_interval
            if reader.key not in self._unsaved:
                every = max(every, IDLE_CURSOR_SAVE)
            if snap.now - self._cursor_saved.get(reader.key, float("-inf")) >= every:
                await self.state.save_cursor(low, reader.key)
                self._cursor_saved[reader.key] = snap.now
                self._unsaved.discard(reader.key)
        self.m.watermark.set(min(self.watermarks[r.key].low for r in readers))
        if result.counted and self.opts.top_sessions and self._top_due is None:
            self._top_due = self._top_at + self.opts.top_sessions_min_gap
        owed = self._top_due is not None and snap.now >= self._top_due
        if self.opts.top_sessions and (owed or snap.now >= self._top_expires):
            window = self.opts.top_sessions_window
            self.top = await self.state.top_sessions(snap.now - window, self.opts.top_sessions)
            self._top_at = snap.now
            self._top_due = None
            # Until runs are counted again the top-K changes only when one of its sessions leaves the window
            # (one more, outside it, then takes its place): no query before that.
            self._top_expires = min((t.last_seen for t in self.top), default=float("inf")) + window
        await self.session_totals.check(snap.now)
        self.open_runs = [
            OpenRuns(r["run_type"] or "", r["name"], r["status"], int(r["n"]), int(r["stuck"]),
                     max(0.0, snap.now - float(r["oldest"] or snap.now)))
            for r in await self.source.open_runs(snap.now, self.opts.stuck_after, since)
        ]
        if self.opts.prune_batch > 0:
            await self.pruner.step(snap.now)  # bounded: at most prune_batch ledger rows
        return result

    async def _read(self, reader: Reader, wm: Watermark, snap: Snapshot, result: PollResult,
                    first: Page | None = None) -> None:
        """Count the reader's new runs chunk by chunk, the source kept busy: a chunk's fetch (the
        longest step, in Postgres) starts before the chunk fetched before it is parsed and committed
        (the source and the state are two connections, so Postgres and Python work at the same time).

        Per chunk: list it, drop the ids the state knows, start fetching the rest; then parse the
        previous chunk and commit it. The early ``known`` filter of a chunk runs before the previous
        chunk commits, so it may miss ids that chunk just counted; it only saves fetches: the
        commit's insert of the run ids is what keeps each run counted once.
        """
        if wm.low == 0.0 and not self.opts.backfill and not reader.appeared:
            log.info("backfill disabled: counting runs of %s finished from now on", reader.key)
            return
        progress = None
        if wm.low == 0.0:
            size, unit = await reader.backfill_size()
            progress = BackfillProgress(reader.key, self.clock(), result.counted, result.skipped, size, unit)
        loading: asyncio.Task[FetchedChunk] | None = None  # the fetch of the last chunk listed
        async with contextlib.aclosing(self._chunks(reader, wm, result, progress, first)) as chunks:
            while True:
                fetched = await loading if loading is not None else None  # waiting to be parsed and committed
                loading = None
                chunk = await anext(chunks, None)
                try:
                    if chunk is not None:
                        result.pages += 1
                        known = await self.state.known([c.run_id for c in chunk])
                        todo = [(c.run_id, c.session_id) for c in chunk if c.run_id not in known]
                        if todo:
                            loading = asyncio.create_task(self._load(reader, todo))
                            await asyncio.sleep(0)  # let it send its query before parsing takes the CPU
                    if fetched is not None:
                        await self._commit(await self._parse(fetched), result)
                except BaseException as exc:
                    if loading is not None:  # never leave a query running on the source connection
                        if isinstance(exc, asyncio.CancelledError):
                            loading.cancel()
                        with contextlib.suppress(Exception, asyncio.CancelledError):
                            await loading
                    raise
                if chunk is None:
                    break
        if progress is not None:
            progress.done(result, self.clock())

    async def _chunks(self, reader: Reader, wm: Watermark, result: PollResult, progress: BackfillProgress | None,
                      first: Page | None = None) -> AsyncGenerator[list[Candidate], None]:
        """Candidate pages in listing order, cut to ``batch_size`` (a page of agno 2.x sessions can
        hold many more runs), the first one ``first`` when the poll read it with its snapshot. Advanced
        only when no chunk is loading: one query at a time per connection."""
        after: Any = None
        while True:
            if first is not None and progress is None:
                page, first = first, None
            elif progress is not None:
                page = await reader.backfill(after, self.opts.batch_size)
                progress.page(page, result, self.clock())
            else:
                page = await reader.candidate_page(wm.low - self.opts.clock_skew, after, self.opts.batch_size)
            for i in range(0, len(page.items), self.opts.batch_size):
                yield page.items[i:i + self.opts.batch_size]
            if page.after is None:
                return
            after = page.after

    async def _load(self, reader: Reader, todo: list[tuple[str, str | None]]) -> FetchedChunk:
        """Fetch runs not counted yet, and the trace roots of the rows that name a parent: asked right
        after the fetch, so that the source's next query is the next chunk's fetch, not this one's roots."""
        rows = await reader.fetch_runs(todo)
        refs = list(dict.fromkeys(ref for row in rows if (ref := row_parent_ref(row)) is not None))
        return FetchedChunk(rows, refs, await self.source.ancestors(refs) if refs else {})

    async def _parse(self, fetched: FetchedChunk) -> LoadedChunk:
        """Parse fetched runs: records (a row's own run and the runs agno nested in it), malformed rows,
        each record's trace root, and which records have rows of their own.

        A run id met twice in the chunk is counted once: a nested copy is preferred to the run's own
        row, because agno's own row of a nested run does not name its parent (see RowRuns).

        A malformed row is logged when its skip is recorded (:meth:`_commit`), not here: a page
        whose commit fails is loaded again on the retry.
        """
        loaded = LoadedChunk()
        seen: set[str] = set()
        chosen: dict[str, RunRecord] = {}
        for row in fetched.rows:
            run_id = str(row_run_id(row))
            if run_id in seen:  # an agno 2.x array can hold a run twice: count it once
                continue
            seen.add(run_id)
            try:
                runs = build_row_runs(row, row.get("run_data"), with_content=self.opts.with_content)
            except BadRow as exc:
                loaded.skipped.append((run_id, exc.reason))
                loaded.details[run_id] = str(exc)
                continue
            for key, reason in runs.skipped:
                loaded.skipped.append((key, reason))
                loaded.details[key] = f"nested in run {run_id}: {reason}"
            if not runs.run.final:
                continue
            for record in runs.records:
                if not record.final:
                    # The row is final, so agno will never finish this copy of a nested run.
                    loaded.skipped.append((record.run_id, "nested_not_final"))
                    loaded.details[record.run_id] = f"nested in run {run_id}: status {record.status}"
                    continue
                before = chosen.get(record.run_id)
                if before is None or (before.host_run_id is None and record.host_run_id is not None):
                    chosen[record.run_id] = record
        loaded.records = list(chosen.values())
        nested = [r for r in loaded.records if r.host_run_id]
        loaded.in_table = {r.run_id for r in loaded.records if not r.host_run_id}
        if nested:
            loaded.in_table |= await self.source.row_ids([(r.run_id, r.session_id) for r in nested])
        want = [(r.run_id, r.session_id) for r in loaded.records if r.parent_run_id and not r.host_run_id]
        # the roots asked with the fetch, unless a row did not become the record it was asked for
        # (malformed, not final, or counted from a nested copy): then exactly the records' roots,
        # asked after the next chunk's fetch (psycopg runs a connection's queries one at a time)
        loaded.roots = dict(fetched.roots) if set(want) == set(fetched.refs) else await self.source.ancestors(want)
        for r in nested:  # no row to follow: its host's trace
            loaded.roots[r.run_id] = loaded.roots.get(r.host_run_id or "", r.host_run_id or r.run_id)
        return loaded

    async def _commit(self, loaded: LoadedChunk, result: PollResult) -> None:
        """Count one chunk in one state transaction; if the state refuses it for a reason that belongs
        to a run (:data:`ROW_FAULTS`), commit it in halves, recursively, and skip each run the state
        refuses on its own (reason ``state_rejected``). The other runs are counted exactly once: each
        part is its own transaction, with the insert of its run ids as the dedupe, and memory is
        applied after each part's commit. A database fault is raised: the poll retries the page.
        """
        now = self.clock()
        try:
            await self._commit_part(loaded.records, loaded.skipped, loaded, now, result)
            return
        except ROW_FAULTS as exc:
            if not loaded.records:
                raise  # only skips were written: nothing of a run's can be at fault
            log.warning("the state refused a page of %d runs (%s): committing it in parts to find the runs it"
                        " refuses", len(loaded.records), _first_line(exc))
        parts: list[tuple[list[RunRecord], list[tuple[str, str]]]] = [(loaded.records, loaded.skipped)]
        while parts:
            records, skipped = parts.pop()
            try:
                await self._commit_part(records, skipped, loaded, now, result)
            except ROW_FAULTS as exc:
                if not records:
                    raise
                if len(records) == 1:
                    run_id = records[0].run_id
                    loaded.details[run_id] = f"the state refused it: {_first_line(exc)}"
                    parts.append(([], [*skipped, (run_id, STATE_REJECTED)]))
                else:
                    half = len(records) // 2
                    parts.append((records[half:], []))
                    parts.append((records[:half], skipped))  # popped first: listing order is kept

    async def _commit_part(self, records: list[RunRecord], skipped: list[tuple[str, str]], loaded: LoadedChunk,
                           now: float, result: PollResult) -> None:
        """Count ``records`` in one state transaction, then (only then) update memory and self-metrics."""
        roots = loaded.roots
        trace_ids = {r.run_id: trace_id_hex(roots.get(r.run_id, r.run_id)) for r in records}
        prepared = self.sink.prepare(records, trace_ids)  # before the transaction, so that it stays short
        batch = await self.state.commit_batch(
            records, roots, skipped, now, lambda fresh, new_sessions: prepared.stage(fresh, new_sessions, now),
            loaded.in_table, costs=prepared.costs)
        batch.staged.apply()  # only after the commit: memory never runs ahead of the state
        by_type: dict[str, int] = {}
        observe_lag = self.m.lag.observe
        note_session = self.session_totals.counted
        for rec in batch.new_records:
            by_type[rec.run_type] = by_type.get(rec.run_type, 0) + 1
            observe_lag(max(0.0, now - rec.updated_at))
            for reason in rec.sanitized:
                self.m.rows_sanitized.labels(reason).inc()
            if rec.anomalies:
                self._note_anomalies(rec, result)
            if rec.session_id:
                note_session(rec.session_id, now)
        for run_type, n in by_type.items():  # one increment per run type and page, not per run
            self.m.runs_collected.labels(run_type).inc(n)
        for run_id, reason in batch.new_skipped:
            self.m.rows_skipped.labels(reason).inc()
            result.skipped_by_reason[reason] = result.skipped_by_reason.get(reason, 0) + 1
            detail = loaded.details.get(run_id, reason)
            if result.skips_logged < SKIP_WARNINGS_PER_POLL:
                result.skips_logged += 1
                log.warning("skipping run %s: %s", run_id, detail)
            else:
                log.debug("skipping run %s: %s", run_id, detail)
        result.counted += len(batch.new_records)
        result.skipped += len(batch.new_skipped)
        if batch.new_records:
            self.sink.published(batch.new_records)
            if self.on_commit:
                self.on_commit(batch.new_records)

    @staticmethod
    def _note_anomalies(rec: RunRecord, result: PollResult) -> None:
        """Remember a counted run's token anomalies for the poll's summary line (each run at DEBUG)."""
        result.anomalous_runs += 1
        for kind in rec.anomaly_kinds:
            result.anomalies[kind] = result.anomalies.get(kind, 0) + 1
        line = f"run {rec.run_id} ({rec.provider} {rec.model}, {rec.name}): {', '.join(rec.anomaly_kinds)}"
        if len(result.anomaly_examples) < EXAMPLES:
            result.anomaly_examples.append(line)
        log.debug("inconsistent token numbers stored by agno: %s", line)

    @staticmethod
    def _log_poll(result: PollResult) -> None:
        """The poll's summary lines: skips beyond those logged one by one, and token anomalies."""
        more = result.skipped - result.skips_logged
        if more > 0:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(result.skipped_by_reason.items()))
            log.warning("%d more runs skipped in this poll (in all %s); each is logged at DEBUG", more, reasons)
        if result.anomalous_runs:
            kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(result.anomalies.items()))
            log.warning("%d runs counted with inconsistent token numbers stored by agno (%s), e.g. %s;"
                        " agno_token_anomalies_total counts them, each run is logged at DEBUG",
                        result.anomalous_runs, kinds, "; ".join(result.anomaly_examples))

    # --- the loop ------------------------------------------------------------------------------

    async def run(self, interval: float, max_backoff: float = 60.0, wake: Wakeup | None = None) -> None:
        """Poll forever; on failure report down, back off (:func:`exporter.retry.poll_backoff`) and retry.
        Between polls it waits ``interval`` seconds, or less when ``wake`` (the opt-in wake-up,
        :mod:`exporter.ingest.notify`) says agno committed a finished run: polls at any times keep
        exactly-once (:mod:`exporter.ingest.cursor`)."""
        backoff = poll_backoff(interval, max_backoff, self.rng)
        failures = 0
        told_state = False  # a state the role may not write is said once (it is counted every time)
        while True:
            t0 = self.timer()
            was_leader = self.leadership.is_leader
            if not await self.leadership.check():
                # standby: healthy, but neither counting nor exporting totals
                self.ready = True
                self.m.ready.set(1)
                self.m.leader.set(0)
                await self.sleep(interval)
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
                delay = backoff.delay(failures)
                self.last_failure = PollFailure(self.clock(), reason, str(exc).strip())
                if reason != "state":
                    log.error("poll failed (%s), retrying in %.1fs: %s", reason, delay, self.last_failure.message)
                elif not told_state:
                    told_state = True
                    log.error("state: %s; retrying until it may", self.last_failure.message)
                await self.sleep(delay)
                continue
            failures = 0
            told_state = False
            self.m.poll_duration.observe(self.timer() - t0)
            self.m.up.set(1)
            self.last_success = self.clock()
            self.m.last_success.set(self.last_success)
            self.ready = True
            self.m.ready.set(1)
            if result.counted or result.skipped:
                log.info("poll: %d runs counted, %d skipped", result.counted, result.skipped)
            # Polls start ``interval`` apart (as Prometheus scrapes do), not ``interval`` after the last
            # one ended: a run waits at most one interval for the poll that counts it, however long
            # polls take (a poll counting a burst, a slow database).
            rest = max(0.0, interval - (self.timer() - t0))
            if wake is None:
                await self.sleep(rest)
            else:
                await wake.wait(rest)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
