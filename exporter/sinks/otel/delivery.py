"""Delivery: :class:`TraceSink` exports what an outbox holds through a ``SpanExporter``, at least once, with one
backoff (:mod:`exporter.retry`); see the module docstring of :mod:`exporter.sinks.otel.traces` for why.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from exporter.records.runs import RunRecord, ToolCall
from exporter.retry import Backoff
from exporter.sinks.otel.exporters import RequestExporter
from exporter.sinks.otel.otlp import SpanEncoder
from exporter.sinks.otel.traces import SpanData, expected_span_count, readable, span_data

log = logging.getLogger("exporter.traces")  # the name it had before the package had subpackages


# ---------------------------------------------------------------------------------------------
# delivery


class Pending(Protocol):
    """One outbox entry whose spans wait for delivery; ``key`` names it to its outbox."""

    @property
    def key(self) -> str: ...

    def build(self, capture_content: bool) -> list[SpanData]:
        """Its spans; deterministic, so an error here is given up on (counted as dropped)."""
        ...

    def span_count(self) -> int:
        """How many spans :meth:`build` makes, also when it fails (for the dropped counter)."""
        ...


@dataclass(frozen=True, slots=True)
class PendingTrace:
    """A run collected but not yet exported as spans; ``root_run_id`` names its trace, ``parent_tool``
    and ``nested`` are as in :func:`build_spans`."""

    record: RunRecord
    root_run_id: str
    parent_tool: ToolCall | None = None
    nested: Mapping[str, Sequence[RunRecord]] | None = None

    @property
    def key(self) -> str:
        return self.record.run_id

    def build(self, capture_content: bool) -> list[SpanData]:
        return span_data(self.record, root_run_id=self.root_run_id, parent_run_id=self.record.parent_run_id,
                         capture_content=capture_content, parent_tool=self.parent_tool, nested=self.nested)

    def span_count(self) -> int:
        return expected_span_count(self.record)


class TraceOutbox(Protocol):
    """Durable list of entries whose spans are still to be exported (implemented on Postgres state)."""

    async def pending(self, limit: int) -> Sequence[Pending]:
        """At most ``limit`` entries not yet exported, oldest first."""
        ...

    async def mark_exported(self, keys: Sequence[str]) -> None: ...


ORIGIN_RUNS = "runs"  # spans built from agno's runs
ORIGIN_AGNO_TRACING = "agno_tracing"  # agno's own spans, forwarded as they are

_BACKLOG = {
    ORIGIN_RUNS: ("agno_exporter_trace_backlog_runs",
                  "Runs waiting for span export, as seen by the last pass (at most the batch size)."),
    ORIGIN_AGNO_TRACING: ("agno_exporter_agno_spans_backlog",
                          "Spans of agno's own tracing waiting to be forwarded, as seen by the last pass "
                          "(at most the batch size)."),
}


class DeliveryMetrics:
    """Span delivery self-metrics, registered once per registry and shared by every sink on it;
    the ``origin`` label tells the sinks apart. The backlog is a gauge per origin: its unit differs
    (runs, spans)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.exported = Counter("agno_exporter_spans_exported", "Spans the trace backend accepted.", ["origin"],
                                registry=registry)
        self.failed = Counter(
            "agno_exporter_spans_failed",
            "Spans in export attempts that failed (retried later; a span retried n times counts n times).",
            ["origin"], registry=registry)
        self.dropped = Counter(
            "agno_exporter_spans_dropped",
            "Spans given up on: spans that cannot be built or that the backend keeps rejecting.",
            ["origin"], registry=registry)
        self.errors = Counter("agno_exporter_trace_export_errors", "Span export requests that failed.", ["origin"],
                              registry=registry)
        self.duration = Histogram(
            "agno_exporter_trace_export_duration_seconds",
            "Duration of one span export request, failed ones included.",
            ["origin"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=registry,
        )
        self._backlogs: dict[str, Gauge] = {}

    def backlog(self, origin: str) -> Gauge:
        if origin not in self._backlogs:
            name, doc = _BACKLOG[origin]
            self._backlogs[origin] = Gauge(name, doc, registry=self.registry)
        return self._backlogs[origin]


class _Outcome(enum.Enum):
    OK = "ok"
    REJECTED = "rejected"  # the backend is up but refused something
    DOWN = "down"  # the backend does not answer or refuses everything


class _Pass(enum.Enum):
    IDLE = "idle"  # nothing pending
    DONE = "done"  # everything pending was exported
    MORE = "more"  # a full batch was exported: more may be waiting
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class _Built:
    key: str
    spans: list[SpanData]


class TraceSink:
    """Exports pending entries from an outbox through a ``SpanExporter``; see the module docstring.

    With an exporter that takes requests (:class:`~exporter.sinks.otel.exporters.RequestExporter`, what
    :func:`~exporter.sinks.otel.exporters.make_span_exporter` makes) the spans are encoded by
    :class:`~exporter.sinks.otel.otlp.SpanEncoder`; with any other ``SpanExporter`` they are handed over as SDK
    ``ReadableSpan`` objects. The bytes on the wire are the same."""

    def __init__(
        self,
        outbox: TraceOutbox,
        exporter: SpanExporter,
        *,
        resource: Resource,
        registry: CollectorRegistry | None = None,
        metrics: DeliveryMetrics | None = None,
        origin: str = ORIGIN_RUNS,
        batch_size: int = 256,
        max_backoff: float = 60.0,
        min_backoff: float = 0.5,
        capture_content: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        max_spans_per_export: int = 512,
        poll_interval: float = 30.0,
        drop_after_rejections: int = 3,
        rng: random.Random | None = None,
    ) -> None:
        if batch_size < 1 or max_spans_per_export < 1 or drop_after_rejections < 1:
            raise ValueError("batch_size, max_spans_per_export and drop_after_rejections must be >= 1")
        self._outbox = outbox
        self._exporter = exporter
        self._resource = resource
        self._requests = exporter if isinstance(exporter, RequestExporter) and exporter.accepts_requests else None
        self._encoder = SpanEncoder(resource)
        self._batch_size = batch_size
        if not 0 < min_backoff <= max_backoff:
            raise ValueError("need 0 < min_backoff <= max_backoff")
        self._backoff_policy = Backoff(min_backoff, max_backoff, rng=rng or random.Random())
        self._capture_content = capture_content
        self._clock = clock
        self._sleep = sleep
        self._max_spans = max_spans_per_export
        self._poll_interval = poll_interval
        self._drop_after = drop_after_rejections
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rejections: dict[str, int] = {}  # key -> consecutive rejections while the backend is up

        if metrics is None:
            if registry is None:
                raise ValueError("give a registry or the shared DeliveryMetrics")
            metrics = DeliveryMetrics(registry)
        if origin not in _BACKLOG:
            raise ValueError(f"unknown origin {origin!r}")
        self.origin = origin
        self.spans_exported = metrics.exported.labels(origin)
        self.spans_failed = metrics.failed.labels(origin)
        self.spans_dropped = metrics.dropped.labels(origin)
        self.export_errors = metrics.errors.labels(origin)
        self.export_duration = metrics.duration.labels(origin)
        self.backlog = metrics.backlog(origin)

    def notify(self) -> None:
        """New entries were committed to the outbox: start a pass now (callable from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._wake.set()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        """Export until cancelled: after each pass wait for :meth:`notify` (or ``poll_interval``);
        after a failed pass back off exponentially with jitter, up to ``max_backoff``."""
        self._loop = asyncio.get_running_loop()
        failures = 0
        while True:
            self._wake.clear()  # before the pass, so a notify during the pass is not lost
            try:
                _, result = await self._pass()
            except Exception:
                log.exception("span export pass failed (outbox)")
                result = _Pass.FAILED
            if result is _Pass.FAILED:
                failures += 1
                delay = self._backoff_policy.delay(failures)
                log.warning("span export failed %d time(s) in a row; retrying in %.2fs", failures, delay)
                await self._sleep(delay)
                continue
            failures = 0
            if result is _Pass.MORE:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll_interval)

    async def flush_once(self) -> int:
        """One pass over at most ``batch_size`` pending entries; returns how many were exported."""
        exported, _ = await self._pass()
        return exported

    async def _pass(self) -> tuple[int, _Pass]:
        async with self._lock:  # run() and flush_once() (shutdown) must never export concurrently
            batch = list(await self._outbox.pending(self._batch_size))
            self.backlog.set(len(batch))
            if not batch:
                self._rejections.clear()
                return 0, _Pass.IDLE
            full = len(batch) >= self._batch_size
            built, unbuildable = await asyncio.to_thread(self._build_batch, batch)
            del batch
            if unbuildable:
                await self._outbox.mark_exported([key for key, _ in unbuildable])
                self.spans_dropped.inc(sum(n for _, n in unbuildable))
            live = {b.key for b in built}
            self._rejections = {k: v for k, v in self._rejections.items() if k in live}

            exported = 0
            failed = False
            for chunk in self._chunks(built):
                outcome, n = await self._deliver(chunk)
                exported += n
                if outcome is _Outcome.DOWN:
                    failed = True
                    break
                if outcome is _Outcome.REJECTED:
                    failed = True
            if failed:
                return exported, _Pass.FAILED
            if not full:
                self.backlog.set(0)  # everything this pass saw was delivered (or dropped)
            return exported, _Pass.MORE if full else _Pass.DONE

    def _build_batch(self, batch: Sequence[Pending]) -> tuple[list[_Built], list[tuple[str, int]]]:
        built: list[_Built] = []
        unbuildable: list[tuple[str, int]] = []
        for item in batch:
            try:
                spans = item.build(self._capture_content)
            except Exception:
                # Building is deterministic: retrying gives the same error, so give up on this entry.
                log.exception("cannot build spans of %s %s; dropping them", self.origin, item.key)
                unbuildable.append((item.key, item.span_count()))
                continue
            built.append(_Built(item.key, spans))
        return built, unbuildable

    def _chunks(self, built: list[_Built]) -> list[list[_Built]]:
        """Whole entries per export request, at most ``max_spans_per_export`` spans (a bigger one alone)."""
        chunks: list[list[_Built]] = []
        current: list[_Built] = []
        size = 0
        for item in built:
            if current and size + len(item.spans) > self._max_spans:
                chunks.append(current)
                current, size = [], 0
            current.append(item)
            size += len(item.spans)
        if current:
            chunks.append(current)
        return chunks

    async def _deliver(self, items: list[_Built]) -> tuple[_Outcome, int]:
        spans = [span for item in items for span in item.spans]
        if await self._export(spans):
            await self._outbox.mark_exported([item.key for item in items])
            for item in items:
                self._rejections.pop(item.key, None)
            return _Outcome.OK, len(items)
        if not await self._probe():
            return _Outcome.DOWN, 0
        if len(items) == 1:
            item = items[0]
            rejections = self._rejections.get(item.key, 0) + 1
            if rejections >= self._drop_after:
                log.error(
                    "trace backend rejected the spans of %s %s %d times while accepting other requests; "
                    "dropping them",
                    self.origin,
                    item.key,
                    rejections,
                )
                await self._outbox.mark_exported([item.key])
                self.spans_dropped.inc(len(item.spans))
                self._rejections.pop(item.key, None)
            else:
                self._rejections[item.key] = rejections
            return _Outcome.REJECTED, 0
        # The backend is up but refused the batch: split it to find the entry it refuses.
        mid = len(items) // 2
        total = 0
        worst = _Outcome.OK
        for half in (items[:mid], items[mid:]):
            outcome, n = await self._deliver(half)
            total += n
            if outcome is _Outcome.DOWN:
                return outcome, total
            if outcome is _Outcome.REJECTED:
                worst = outcome
        return worst, total

    def _send(self, spans: list[SpanData]) -> SpanExportResult:
        """Encode and send (in a worker thread: both hold the GIL, but the event loop keeps turning)."""
        if self._requests is not None:
            return self._requests.export_request(self._encoder.request(spans))
        return self._exporter.export([readable(span, self._resource) for span in spans])

    async def _export(self, spans: list[SpanData]) -> bool:
        started = self._clock()
        try:
            result = await asyncio.to_thread(self._send, spans)
        except Exception:
            log.warning("span exporter raised", exc_info=True)
            result = SpanExportResult.FAILURE
        self.export_duration.observe(max(0.0, self._clock() - started))
        if result is SpanExportResult.SUCCESS:
            self.spans_exported.inc(len(spans))
            return True
        self.spans_failed.inc(len(spans))
        self.export_errors.inc()
        return False

    async def _probe(self) -> bool:
        """An empty export: succeeds when the backend is up and accepting requests."""
        try:
            result = await asyncio.to_thread(self._exporter.export, [])
        except Exception:
            return False
        return result is SpanExportResult.SUCCESS
