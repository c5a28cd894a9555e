"""Totals that outlive the process: counters and histograms kept by us, rendered for Prometheus.

agno's runs are counted once, ever; a restart must not reset ``agno_tokens_total`` to zero nor
count history again. So exported totals are values we keep (and persist through the state store)
and expose with a custom collector, as client_python recommends for values kept elsewhere.

Changes are staged on copies (:meth:`SeriesStore.stage`), written to the state store in the same
transaction that marks the runs as counted, and only then applied to memory (:meth:`Staged.apply`):
memory never runs ahead of what is durable.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar

from exporter.sinks.prometheus.exposition import Encoder, LazyFamily, encode, encoder_key
from exporter.state.rows import SeriesRow

OTHER = "__other__"


@dataclass(frozen=True)
class Family:
    """One exported metric family: the contract users build dashboards on."""

    name: str  # without _total for counters (prometheus_client adds it)
    kind: str  # "counter" | "histogram"
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()
    unit: str = ""


@dataclass(slots=True)
class Series:
    """Value of one label set. Counters use ``total``; histograms use all three."""

    total: float = 0.0
    count: int = 0
    buckets: list[int] = field(default_factory=list)  # per bucket, not cumulative; last is +Inf
    # bucket index -> (trace id, value, time) of its latest observation, memory only; made into an
    # Exemplar when rendered (most are overwritten before a scrape sees them)
    exemplars: dict[int, tuple[str, float, float]] = field(default_factory=dict)
    # encoder -> this series' formatted lines; a changed series is a new object (see copy), so never stale
    rendered: dict[Any, bytes] | None = None

    def copy(self) -> Series:
        return Series(self.total, self.count, list(self.buckets), dict(self.exemplars))


class Observation(NamedTuple):
    """One value for one series (a tuple: a run makes about twenty of them)."""

    family: str
    labels: tuple[str, ...]
    value: float
    trace_id: str | None = None  # exemplar


class LabelLimiter:
    """Caps the distinct values of each label of each family; the rest fold into ``__other__``.

    A folding decision is sticky for the life of the series store (values already seen stay
    themselves), and the seen values are rebuilt from persisted series on start, so a restart
    folds the same way.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: dict[tuple[str, int], set[str]] = {}
        self.folded: dict[tuple[str, str], int] = {}

    def learn(self, family: Family, labels: Sequence[str]) -> None:
        for i, value in enumerate(labels):
            self._seen.setdefault((family.name, i), set()).add(value)

    def apply(self, family: Family, labels: tuple[str, ...], bounded: frozenset[int],
              delta: LimiterDelta | None = None) -> tuple[str, ...]:
        """Fold ``labels``; with ``delta``, new values and fold counts go there until :meth:`commit`."""
        d = delta if delta is not None else LimiterDelta()
        out = list(labels)
        for i, value in enumerate(labels):
            if i in bounded:
                continue
            key = (family.name, i)
            seen = self._seen.setdefault(key, set())
            new = d.seen.setdefault(key, set())
            if value in seen or value in new:
                continue
            if len(seen) + len(new) >= self.limit:  # disjoint but for __other__, which comes after the cap
                out[i] = OTHER
                fk = (family.name, family.labels[i])
                d.folded[fk] = d.folded.get(fk, 0) + 1
                new.add(OTHER)
            else:
                new.add(value)
        if delta is None:
            self.commit(d)
        return tuple(out)

    def commit(self, delta: LimiterDelta) -> None:
        for key, values in delta.seen.items():
            self._seen.setdefault(key, set()).update(values)
        for fk, n in delta.folded.items():
            self.folded[fk] = self.folded.get(fk, 0) + n


@dataclass
class LimiterDelta:
    """Label values admitted and folds counted by a staged batch, not yet applied."""

    seen: dict[tuple[str, int], set[str]] = field(default_factory=dict)
    folded: dict[tuple[str, str], int] = field(default_factory=dict)


class Staged:
    """Changes computed for one batch, not yet visible to scrapes."""

    def __init__(self, store: SeriesStore, changed: dict[tuple[str, tuple[str, ...]], Series],
                 limits: LimiterDelta) -> None:
        self._store = store
        self._changed = changed
        self._limits = limits

    def rows(self) -> list[SeriesRow]:
        return [
            SeriesRow(fam, labels, s.total, s.count, tuple(s.buckets))
            for (fam, labels), s in self._changed.items()
        ]

    def apply(self) -> None:
        self._store.commit(self._changed, self._limits)


class SeriesStore(Collector):
    """All persisted families and their series; a prometheus_client collector."""

    def __init__(self, families: Iterable[Family], label_value_limit: int,
                 bounded_labels: Iterable[str] = ()) -> None:
        self.families = {f.name: f for f in families}
        self._data: dict[str, dict[tuple[str, ...], Series]] = {name: {} for name in self.families}
        self.limiter = LabelLimiter(label_value_limit)
        # labels whose value set is fixed by us (token_type, status, ...): never folded
        bounded = set(bounded_labels)
        self._bounded = {
            f.name: frozenset(i for i, label in enumerate(f.labels) if label in bounded)
            for f in self.families.values()
        }
        self.version = 0

    # --- loading and staging -------------------------------------------------------------------

    def load(self, rows: Iterable[SeriesRow]) -> int:
        """Replace memory with persisted rows (on start). Unknown families are ignored."""
        n = 0
        for row in rows:
            family = self.families.get(row.family)
            if family is None or len(row.labels) != len(family.labels):
                continue
            buckets = list(row.buckets)
            if family.kind == "histogram" and len(buckets) != len(family.buckets) + 1:
                continue  # bucket layout changed between versions: start that series afresh
            self._data[row.family][row.labels] = Series(row.total, row.count, buckets)
            self.limiter.learn(family, row.labels)
            n += 1
        self.version += 1
        return n

    def commit(self, changed: dict[tuple[str, tuple[str, ...]], Series], limits: LimiterDelta) -> None:
        """Make a staged batch visible (:meth:`Staged.apply`, after the state committed it)."""
        for (fam, labels), series in changed.items():
            self._data[fam][labels] = series
        self.limiter.commit(limits)
        self.version += 1

    def stage(self, observations: Iterable[Observation], now: float | None = None) -> Staged:
        changed: dict[tuple[str, tuple[str, ...]], Series] = {}
        limits = LimiterDelta()
        ts = now if now is not None else time.time()
        for fam_name, obs_labels, value, trace_id in observations:
            family = self.families[fam_name]
            # Fast path: a series that exists (in memory or staged) holds only admitted label values,
            # so there is no folding decision to take for it.
            key = (fam_name, obs_labels)
            series = changed.get(key)
            if series is None:
                current = self._data[fam_name].get(obs_labels)
                if current is None:
                    labels = self.limiter.apply(family, obs_labels, self._bounded[fam_name], limits)
                    key = (fam_name, labels)
                    series = changed.get(key)
                    current = self._data[fam_name].get(labels) if series is None else None
                if series is None:
                    series = current.copy() if current is not None else self._new(family)
                    changed[key] = series
            series.total += value
            if family.kind != "counter":
                i = bisect.bisect_left(family.buckets, value)
                series.buckets[i] += 1
                series.count += 1
                if trace_id:
                    series.exemplars[i] = (trace_id, value, ts)
        return Staged(self, changed, limits)

    @staticmethod
    def _new(family: Family) -> Series:
        return Series(buckets=[0] * (len(family.buckets) + 1) if family.kind == "histogram" else [])

    # --- reading -------------------------------------------------------------------------------

    def value(self, family: str, labels: Sequence[str]) -> Series | None:
        return self._data[family].get(tuple(labels))

    def series(self, family: str) -> dict[tuple[str, ...], Series]:
        return self._data[family]

    def series_count(self) -> int:
        return sum(len(v) for v in self._data.values())

    def describe(self) -> Iterator[Metric]:
        # Declares the families so registration never has to read data.
        for family in self.families.values():
            yield self._empty(family)

    def _empty(self, family: Family) -> Metric:
        if family.kind == "counter":
            return CounterMetricFamily(family.name, family.help, labels=family.labels, unit=family.unit)
        return HistogramMetricFamily(family.name, family.help, labels=family.labels, unit=family.unit)

    def collect(self) -> Iterator[Metric]:
        for family in self.families.values():
            yield LazyFamily(self._empty(family), partial(self._build, family, None),
                             partial(self._parts, family))

    def _build(self, family: Family, only: Iterable[tuple[tuple[str, ...], Series]] | None) -> Metric:
        """The family as a prometheus_client metric: all its series, or ``only`` these."""
        metric = self._empty(family)
        data = self._data[family.name].items() if only is None else only
        if family.kind == "counter":
            assert isinstance(metric, CounterMetricFamily)
            for labels, s in data:
                metric.add_metric(labels, s.total)
        else:
            assert isinstance(metric, HistogramMetricFamily)
            bounds = [*(_fmt(b) for b in family.buckets), "+Inf"]
            for labels, s in data:
                cumulative = 0
                buckets: list[tuple[str, float] | tuple[str, float, Exemplar]] = []
                for i, n in enumerate(s.buckets):
                    cumulative += n
                    ex = s.exemplars.get(i)
                    buckets.append((bounds[i], cumulative, Exemplar({"trace_id": ex[0]}, ex[1], ex[2])) if ex
                                   else (bounds[i], cumulative))
                metric.add_metric(labels, buckets, s.total)  # type: ignore[arg-type,unused-ignore]
        return metric

    def _parts(self, family: Family, encoder: Encoder) -> list[bytes]:
        """The family as ``encoder`` formats it: its header, then each series' cached lines (those
        objects, not copies; see exporter.sinks.prometheus.exposition)."""
        key = encoder_key(encoder)
        header = encode(encoder, [self._empty(family)])
        parts = [header]
        for labels, s in self._data[family.name].items():
            if s.rendered is None:
                s.rendered = {}
            lines = s.rendered.get(key)
            if lines is None:
                whole = encode(encoder, [self._build(family, [(labels, s)])])
                lines = s.rendered[key] = whole[len(header):] if whole.startswith(header) else whole
            parts.append(lines)
        return parts


def _fmt(b: float) -> str:
    return str(int(b)) if b == int(b) and abs(b) < 1e15 else repr(b)


def exponential(start: float, factor: float, count: int) -> tuple[float, ...]:
    return tuple(start * factor**i for i in range(count))


def gauge(name: str, help: str, labels: Sequence[str], values: Iterable[tuple[Sequence[str], float]]) -> Metric:
    g = GaugeMetricFamily(name, help, labels=labels)
    for lv, v in values:
        if math.isfinite(v):
            g.add_metric(list(lv), v)
    return g
