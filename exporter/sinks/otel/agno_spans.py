"""Forwarding agno's own spans: what ``agno.tracing`` / AgentOS tracing wrote to ``agno_spans``, as it is.

agno's tracing records real spans in the app (OpenInference instrumentation; exact start and end
times, its own trace and span ids) and stores them in its database. With
``traces.forward_agno_spans`` the exporter sends those rows to the OTLP backend unchanged, beside
(not instead of) the spans it builds from runs: the two have different trace ids.

Exactly once, the way runs are counted:

* **Finding new spans** (:class:`SpanPoller`). agno inserts each span once and never updates it;
  ``created_at`` (ISO text, app clock) is stamped just before its insert transaction starts, and
  those transactions commit out of order. That is the situation :mod:`exporter.ingest.cursor` solves for
  runs: each poll reads the clock and the transactions holding a write lock on ``agno_spans``, and
  re-reads from the low watermark (minus ``collector.clock_skew``, which also covers agno's
  stamp-to-insert delay), which only passes a moment once no transaction that could still insert an
  older ``created_at`` is in progress.
* **Sending each once.** A span found is queued in the state schema (``forwarded_spans``, primary
  key = span id) in one statement: re-reading it later, after a restart or on another replica,
  is a no-op. The watermark is persisted only after every page of the poll is queued, so a crash
  re-reads rather than skips.
* **Delivery** is the runs' path (:class:`exporter.sinks.otel.traces.TraceSink`, ``origin="agno_tracing"``):
  a span is marked exported only after the backend accepted it; while the backend is down the
  queue waits in Postgres, retries back off, and the failures are counted. A crash between the
  backend's answer and the mark re-sends those spans with the same ids (at least once there).
* **Malformed rows** (bad ids or times) are a counted skip (``agno_exporter_rows_skipped_total``,
  reason ``agno_span_malformed``; ``agno_span_gone`` when agno deleted the row meanwhile), marked
  done and never retried, so they never block the queue.
* **No tracing tables** (agno's tracing is off, or has not written yet): logged once, polled again;
  the watermark does not move until the table exists, so nothing written later is missed.
* With ``ha.enabled`` only the leader polls and delivers; a new leader reloads the durable cursor.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from prometheus_client import CollectorRegistry, Counter

from exporter.ingest.cursor import Watermark, WindowLog
from exporter.ingest.source import Snapshot
from exporter.ingest.spans_table import SpanCandidate, SpansTable
from exporter.retry import poll_backoff
from exporter.sinks.otel.agno_rows import span_data_from_agno_row
from exporter.sinks.otel.traces import SpanData
from exporter.state.store import PostgresState

log = logging.getLogger("agno_exporter.agno_spans")

SKIP_MALFORMED = "agno_span_malformed"
SKIP_GONE = "agno_span_gone"


def since_text(seconds: float) -> str:
    """A watermark as a lower bound for agno's ``created_at`` text: whole seconds (floored), no zone,
    so it is a prefix of every ``created_at`` stamped in that second (agno writes UTC)."""
    return datetime.fromtimestamp(math.floor(max(0.0, seconds)), UTC).strftime("%Y-%m-%dT%H:%M:%S")


@dataclass(frozen=True, slots=True)
class PendingSpan:
    """One of agno's spans, read and converted by the outbox (the sink adds its resource)."""

    key: str  # agno's span id
    span: SpanData

    def build(self, capture_content: bool) -> list[SpanData]:
        return [self.span]  # agno's attributes are forwarded as agno stored them

    def span_count(self) -> int:
        return 1


class SpanOutbox:
    """The :class:`~exporter.sinks.otel.traces.TraceOutbox` of agno's spans: ids queued in the state, rows re-read
    from agno's table by id (the queue holds ids, not spans: memory stays at one batch)."""

    def __init__(self, state: PostgresState, source: SpansTable, skipped: Counter,
                 active: Callable[[], bool] = lambda: True) -> None:
        self.state = state
        self.source = source
        self.skipped = skipped  # agno_exporter_rows_skipped{reason}
        self.active = active

    async def pending(self, limit: int) -> Sequence[PendingSpan]:
        if not self.active():
            return []
        ids = await self.state.pending_spans(limit)
        rows = {str(r["span_id"]): r for r in await self.source.fetch(ids)}
        out: list[PendingSpan] = []
        skipped: list[str] = []
        for span_id in ids:
            row = rows.get(span_id)
            reason = SKIP_GONE
            if row is not None:
                try:
                    out.append(PendingSpan(span_id, span_data_from_agno_row(row)))
                    continue
                except (ValueError, TypeError, OverflowError) as exc:
                    log.warning("skipping agno span %s: %s", span_id, exc)
                    reason = SKIP_MALFORMED
            else:
                log.warning("skipping agno span %s: its row was deleted from %s", span_id, self.source.key)
            skipped.append(span_id)
            self.skipped.labels(reason).inc()
        await self.state.mark_spans_exported(skipped)
        return out

    async def mark_exported(self, keys: Sequence[str]) -> None:
        await self.state.mark_spans_exported(keys)


@dataclass(frozen=True)
class PollerOptions:
    batch_size: int = 500
    clock_skew: float = 10.0
    max_lookback: float = 3600.0
    backfill: bool = True
    # forwarded_spans rows of delivered spans that left the re-read window are deleted, at most this
    # many per poll, every forget_interval seconds (and on every poll while a full batch went)
    forget_batch: int = 5000
    forget_interval: float = 60.0


class SpanPoller:
    """Finds new rows in agno's spans table and queues them, each once (see the module docstring)."""

    def __init__(
        self,
        source: SpansTable,
        state: PostgresState,
        registry: CollectorRegistry,
        options: PollerOptions,
        active: Callable[[], bool] = lambda: True,
        on_queued: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.sleep = sleep
        self.rng = rng or random.Random()  # the backoff's jitter
        self.source = source
        self.state = state  # bound to source.key: its cursor row is this table's
        self.opts = options
        self.active = active
        self.on_queued = on_queued
        self.clock = clock
        self.watermark = Watermark(max_lookback=options.max_lookback)
        self.window_log = WindowLog(log, source.key, options.max_lookback)
        self.started = False
        self._forget_at = float("-inf")
        self.forgotten = 0  # forwarded_spans rows this process deleted
        self.polls = 0  # successful polls, table present or not (tests wait on it)
        self.table_missing = False
        self.queued = Counter("agno_exporter_agno_spans_queued",
                              "Spans found in agno's tracing table and queued for forwarding (each once).",
                              registry=registry)
        self.poll_errors = Counter("agno_exporter_agno_spans_poll_errors",
                                   "Polls of agno's tracing table that failed.", ["reason"], registry=registry)
        self.clamped = Counter(
            "agno_exporter_agno_spans_lookback_clamped",
            "Polls of agno's tracing table where a transaction that may insert spans was older than "
            "collector.max_lookback (its spans may be missed).", registry=registry)
        for reason in ("database", "query"):
            self.poll_errors.labels(reason)

    async def start(self) -> None:
        await self.state.setup()
        self.watermark = Watermark(low=await self.state.load_cursor(), max_lookback=self.opts.max_lookback)
        self.started = True

    async def poll_once(self) -> int:
        """One poll; returns how many spans were queued."""
        if not self.started:
            await self.start()
        snap = await self.source.snapshot()
        try:
            queued = await self._read(snap)
        except psycopg.errors.UndefinedTable:
            if not self.table_missing:
                log.warning("no table %s: agno's tracing is off or has not written yet (setup_tracing(db=...) or "
                            "AgentOS tracing=True); checking again every poll", self.source.key)
                self.table_missing = True
            self.polls += 1
            return 0
        if self.table_missing:
            log.info("found %s: forwarding agno's spans", self.source.key)
            self.table_missing = False
        adv = self.watermark.advance(snap.now, snap.writers_of(self.source.written))
        if adv.clamped:
            self.clamped.inc()
        self.window_log.report(adv, snap.now)
        await self.state.save_cursor(adv.low)
        await self._forget(snap.now)
        self.polls += 1
        return queued

    async def _forget(self, now: float) -> None:
        """Keep ``forwarded_spans`` as small as the re-read window. agno inserts a span once and never
        updates it, so a span stamped before the window (``low - clock_skew``) is never listed again
        and its dedupe row can go once delivered. Rows hold when they were queued (the exporter's
        clock), after the span's stamp: ``max_lookback`` more covers an app clock ahead of it."""
        if (self.watermark.low == 0.0 or self.opts.forget_batch <= 0
                or now - self._forget_at < self.opts.forget_interval):
            return
        before = self.watermark.low - self.opts.clock_skew - self.opts.max_lookback
        n = await self.state.forget_spans(before, self.opts.forget_batch)
        self.forgotten += n
        # a full batch: more are due, so the next poll goes on (bounded per poll)
        self._forget_at = float("-inf") if n == self.opts.forget_batch else now

    async def _read(self, snap: Snapshot) -> int:
        if self.watermark.low == 0.0:
            if not self.opts.backfill:
                log.info("backfill disabled: forwarding agno spans written from now on")
                return 0
            total, after = 0, None
            while page := await self.source.backfill_page(after, self.opts.batch_size):
                total += await self._queue(page)
                after = page[-1].span_id
            return total
        since = since_text(self.watermark.low - self.opts.clock_skew)
        total, cursor = 0, None
        while page := await self.source.candidates(since, cursor, self.opts.batch_size):
            total += await self._queue(page)
            if len(page) < self.opts.batch_size:
                break
            cursor = (page[-1].created_at, page[-1].span_id)
        return total

    async def _queue(self, page: Sequence[SpanCandidate]) -> int:
        new = await self.state.queue_spans([c.span_id for c in page], self.clock())
        if new:
            self.queued.inc(len(new))
            if self.on_queued is not None:
                self.on_queued()
        return len(new)

    async def run(self, interval: float, max_backoff: float = 60.0) -> None:
        """Poll forever while this replica leads; on failure back off (:func:`exporter.retry.poll_backoff`)
        and retry."""
        backoff = poll_backoff(interval, max_backoff, self.rng)
        failures = 0
        while True:
            if not self.active():
                self.started = False  # on promotion, reload the cursor the old leader left
                await self.sleep(interval)
                continue
            try:
                await self.poll_once()
            except (psycopg.Error, OSError) as exc:
                failures += 1
                reason = "database" if isinstance(exc, (psycopg.OperationalError, OSError)) else "query"
                self.poll_errors.labels(reason).inc()
                self.started = False
                delay = backoff.delay(failures)
                log.error("polling %s failed (%s), retrying in %.1fs: %s", self.source.key, reason, delay,
                          str(exc).strip())
                await self.sleep(delay)
                continue
            failures = 0
            await self.sleep(interval)

