"""The OpenTelemetry sink as the collector sees it.

Spans need no rows of their own in the counting transaction: the state queues each counted run in its
trace outbox in that very transaction (``PostgresState(traces=True)``), and the trace sink
(:class:`exporter.sinks.otel.traces.TraceSink`) delivers from there. Told that runs were published, it
wakes the delivery at once instead of at its next poll.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from exporter.records.runs import RunRecord
from exporter.sink import Costs, NothingStaged
from exporter.state.rows import SeriesRow, Staged


@dataclass(frozen=True)
class _Prepared:
    costs: Costs = field(default_factory=dict)

    def stage(self, fresh: Sequence[RunRecord], new_sessions: Sequence[tuple[str, str]], now: float) -> Staged:
        return NothingStaged()


class OtelSink:
    """Implements :class:`exporter.sink.Sink`: ``wake`` is called with the runs each commit counted."""

    def __init__(self, wake: Callable[[Sequence[RunRecord]], None]) -> None:
        self.wake = wake

    def restore(self, rows: Iterable[SeriesRow]) -> None:
        return None

    def prepare(self, records: Sequence[RunRecord], trace_ids: Mapping[str, str]) -> _Prepared:
        return _Prepared()

    def stage_disagreements(self, sessions: Sequence[tuple[str, str, str]], now: float) -> Staged:
        return NothingStaged()

    def published(self, records: Sequence[RunRecord]) -> None:
        self.wake(records)
