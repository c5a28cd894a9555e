"""The one interface through which the collector publishes what it counts: :class:`Sink`.

The collector (:mod:`exporter.ingest.collector`) knows no sink by name. For each page of runs it
asks every sink to :meth:`~Sink.prepare` the runs (before the transaction: the work that may be
slow), then, inside the transaction that counts them, to stage the runs really counted; the state
writes the staged rows in that transaction, and the collector applies them after the commit, then
tells the sinks with :meth:`~Sink.published`. Prometheus (:mod:`exporter.sinks.prometheus`) and
OpenTelemetry (:mod:`exporter.sinks.otel`) are peers behind it; a new sink is a package under
``exporter/sinks/`` with a class that has these methods, added where the service assembles the
sinks (:mod:`exporter.commands.service`), with no change to the collector.

Nothing here imports a sink, ``prometheus_client`` or ``opentelemetry``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from exporter.records.runs import RunRecord
from exporter.state.rows import SeriesRow, Staged

# run id -> (reported, estimated) US dollars the run adds to the cost totals; the state sums it into
# the run's session (the session's cost in agno_session_cost_usd and the top sessions)
Costs = Mapping[str, tuple[float, float]]


class Prepared(Protocol):
    """A sink's work on one page of runs, done before the counting transaction."""

    @property
    def costs(self) -> Costs:
        """What each run costs, by this sink's prices; empty for a sink without prices."""
        ...

    def stage(self, fresh: Sequence[RunRecord], new_sessions: Sequence[tuple[str, str]], now: float) -> Staged:
        """Inside the transaction: the changes of the runs really counted (``fresh``, a subset of the
        prepared runs) and of sessions seen for the first time ((run_type, name)); ``now`` unix seconds."""
        ...


class Sink(Protocol):
    """Where counted runs go. Every method is called from the collector's task, never concurrently."""

    def restore(self, rows: Iterable[SeriesRow]) -> None:
        """On (re)start: the durable rows the state holds; replaces the sink's memory."""
        ...

    def prepare(self, records: Sequence[RunRecord], trace_ids: Mapping[str, str]) -> Prepared:
        """Before the transaction that counts ``records``; ``trace_ids``: run id -> 32 hex digits."""
        ...

    def stage_disagreements(self, sessions: Sequence[tuple[str, str, str]], now: float) -> Staged:
        """Inside a transaction: sessions (session_id, run_type, name) newly found disagreeing with their runs."""
        ...

    def published(self, records: Sequence[RunRecord]) -> None:
        """After the commit that counted ``records`` (never empty)."""
        ...


@dataclass(frozen=True)
class NothingStaged:
    """What a sink without durable rows stages: nothing to write, nothing to apply."""

    def rows(self) -> Sequence[SeriesRow]:
        return ()

    def apply(self) -> None:
        return None


@dataclass(frozen=True)
class _AllStaged:
    parts: tuple[Staged, ...]

    def rows(self) -> Sequence[SeriesRow]:
        return [row for part in self.parts for row in part.rows()]

    def apply(self) -> None:
        for part in self.parts:
            part.apply()


@dataclass(frozen=True)
class _AllPrepared:
    parts: tuple[Prepared, ...]
    costs: Costs = field(default_factory=dict)

    def stage(self, fresh: Sequence[RunRecord], new_sessions: Sequence[tuple[str, str]], now: float) -> Staged:
        return _AllStaged(tuple(p.stage(fresh, new_sessions, now) for p in self.parts))


class Sinks:
    """Several sinks as one, in the order given. Costs: the first sink that prices a run wins."""

    def __init__(self, sinks: Iterable[Sink]) -> None:
        self.sinks = tuple(sinks)

    def restore(self, rows: Iterable[SeriesRow]) -> None:
        kept = list(rows)
        for sink in self.sinks:
            sink.restore(kept)

    def prepare(self, records: Sequence[RunRecord], trace_ids: Mapping[str, str]) -> Prepared:
        parts = tuple(sink.prepare(records, trace_ids) for sink in self.sinks)
        costs: dict[str, tuple[float, float]] = {}
        for part in reversed(parts):
            costs.update(part.costs)
        return _AllPrepared(parts, costs)

    def stage_disagreements(self, sessions: Sequence[tuple[str, str, str]], now: float) -> Staged:
        return _AllStaged(tuple(sink.stage_disagreements(sessions, now) for sink in self.sinks))

    def published(self, records: Sequence[RunRecord]) -> None:
        for sink in self.sinks:
            sink.published(records)
