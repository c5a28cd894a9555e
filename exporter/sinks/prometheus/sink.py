"""The Prometheus sink: counted runs become observations of the metric families, kept in a series store.

Each run's observations are built before the counting transaction (with its cost, from the price
table); the store stages those of the runs really counted, the state writes the staged series in the
transaction, and scrapes see them once it committed (:mod:`exporter.state.rows`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from exporter.records.runs import RunRecord
from exporter.sink import Costs
from exporter.sinks.prometheus import families
from exporter.sinks.prometheus.prices import PriceTable
from exporter.sinks.prometheus.series import Observation, SeriesStore, Staged
from exporter.state.rows import SeriesRow


@dataclass(frozen=True)
class _Prepared:
    store: SeriesStore
    per_run: dict[str, list[Observation]]
    costs: Costs

    def stage(self, fresh: Sequence[RunRecord], new_sessions: Sequence[tuple[str, str]], now: float) -> Staged:
        obs: list[Observation] = [o for rec in fresh for o in self.per_run[rec.run_id]]
        obs.extend(families.new_session_observations(new_sessions))
        return self.store.stage(obs, now)


class PrometheusSink:
    """Implements :class:`exporter.sink.Sink` on a :class:`SeriesStore`; ``prices`` estimate the cost of
    runs whose provider reported none (None: reported costs only)."""

    def __init__(self, store: SeriesStore, prices: PriceTable | None = None) -> None:
        self.store = store
        self.prices = prices

    def restore(self, rows: Iterable[SeriesRow]) -> None:
        self.store.load(rows)

    def prepare(self, records: Sequence[RunRecord], trace_ids: Mapping[str, str]) -> _Prepared:
        # A session's cost is summed from the very cost observations that go to agno_cost_usd_total
        # (estimates included); built before the transaction so that it stays short.
        per_run: dict[str, list[Observation]] = {}
        costs: dict[str, tuple[float, float]] = {}
        prices = self.prices
        for r in records:
            obs: list[Observation] = []
            costs[r.run_id] = families.run_observations(r, trace_ids[r.run_id], prices, obs)  # = cost_of(obs)
            per_run[r.run_id] = obs
        return _Prepared(self.store, per_run, costs)

    def stage_disagreements(self, sessions: Sequence[tuple[str, str, str]], now: float) -> Staged:
        return self.store.stage([Observation("agno_session_disagreements", (rt, nm), 1) for _, rt, nm in sessions],
                                now)

    def published(self, records: Sequence[RunRecord]) -> None:
        return None
