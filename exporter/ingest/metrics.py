"""The collector's own health signals, as the collector needs them: counters, gauges, histograms.

A protocol, not a metrics library: the collecting core imports no ``prometheus_client``. The
Prometheus sink's ``SelfMetrics`` (:mod:`exporter.sinks.prometheus.families`) has this shape and is
what the service passes in; a test can pass any object of the same shape.
"""

from __future__ import annotations

from typing import Protocol


class Counts(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Sets(Protocol):
    def set(self, value: float) -> None: ...


class Observes(Protocol):
    def observe(self, amount: float) -> None: ...


class CountsBy(Protocol):
    """A counter with labels: ``labels(value)`` is the child to increment."""

    def labels(self, *values: str) -> Counts: ...


class CollectorMetrics(Protocol):
    """Gauges: ``up``, ``leader``, ``ready`` (0 or 1), ``last_success`` and ``watermark`` (unix seconds).
    Histograms: ``poll_duration`` and ``lag`` (seconds). Counters: ``lookback_clamped``; by one label:
    ``poll_errors`` (reason), ``runs_collected`` (run_type), ``rows_skipped`` and ``rows_sanitized`` (reason).
    """

    @property
    def up(self) -> Sets: ...
    @property
    def leader(self) -> Sets: ...
    @property
    def ready(self) -> Sets: ...
    @property
    def last_success(self) -> Sets: ...
    @property
    def watermark(self) -> Sets: ...
    @property
    def poll_duration(self) -> Observes: ...
    @property
    def lag(self) -> Observes: ...
    @property
    def lookback_clamped(self) -> Counts: ...
    @property
    def poll_errors(self) -> CountsBy: ...
    @property
    def runs_collected(self) -> CountsBy: ...
    @property
    def rows_skipped(self) -> CountsBy: ...
    @property
    def rows_sanitized(self) -> CountsBy: ...


class WakeMetrics(Protocol):
    """The wake-up's (:mod:`exporter.ingest.notify`): ``wakeups`` counts the polls started, by one label,
    the reason (interval, notify, listen); ``notifications`` counts the notifications received;
    ``listening`` is 1 while the LISTEN connection is open, else 0."""

    @property
    def wakeups(self) -> CountsBy: ...
    @property
    def notifications(self) -> Counts: ...
    @property
    def listening(self) -> Sets: ...
