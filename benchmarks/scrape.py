"""Scrape: rendering ``/metrics`` with 10^4 series, against prometheus_client's own metric objects.

A series is what Prometheus stores as one: each sample line (every histogram bucket, ``_sum`` and
``_count`` included), not each label set.

The series come from real records: the captured agno rows under many agent/team names, turned
into observations by the exporter's own code, until the store holds the wanted number of series.
The baseline holds exactly the same series in prometheus_client's native Counter and Histogram
objects (the same observations, exemplars included); both are rendered by the same encoder, in
OpenMetrics (what Prometheus asks for first) and in the classic text format, ours the way
``/metrics`` does it (:func:`exporter.sinks.prometheus.exposition.render`). Before each timed render a poll's worth
of observations (``POLL_OBSERVATIONS``, random ones) is added, so the cache of unchanged series is
measured with the churn a scrape really sees.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.exposition import generate_latest as text
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

from exporter.records.parse import build_run_record
from exporter.sinks.prometheus import families as prom
from exporter.sinks.prometheus.exposition import render
from exporter.sinks.prometheus.series import Observation, SeriesStore

from .capture import Captured
from .harness import median

POLL_OBSERVATIONS = 100  # observations a poll adds between two scrapes


def prometheus_series(store: SeriesStore) -> int:
    n = 0
    for name, family in store.families.items():
        per = len(family.buckets) + 3 if family.kind == "histogram" else 1  # buckets, +Inf, _sum, _count
        n += per * len(store.series(name))
    return n


def observations(captured: list[Captured], series: int) -> tuple[list[Observation], int]:
    """Observations of renamed copies of the captured runs, up to ``series`` series."""
    store = prom.new_store(label_value_limit=100_000)
    rows = [r for c in captured for r in c.rows if r["status"] in ("COMPLETED", "ERROR")]
    out: list[Observation] = []
    i = 0
    while True:
        row = rows[i % len(rows)]
        data = dict(row["run_data"])
        for key in ("agent_name", "team_name"):
            if data.get(key):
                data[key] = f"{data[key]}-{i // len(rows)}"
        obs = list(prom.observations(build_run_record(row, data), f"{i:032x}"))
        before = prometheus_series(store)
        store.stage(obs, time.time()).apply()
        if prometheus_series(store) > series:
            return out, before
        out.extend(obs)
        i += 1


def native_registry(obs: list[Observation]) -> tuple[CollectorRegistry, dict[str, Any]]:
    registry = CollectorRegistry()
    metrics: dict[str, Any] = {}
    for f in prom.FAMILIES:
        if f.kind == "counter":
            metrics[f.name] = Counter(f.name, f.help, f.labels, registry=registry, unit=f.unit)
        else:
            metrics[f.name] = Histogram(f.name, f.help, f.labels, registry=registry, unit=f.unit, buckets=f.buckets)
    observe(metrics, obs)
    return registry, metrics


def observe(metrics: dict[str, Any], obs: list[Observation]) -> None:
    for o in obs:
        m = metrics[o.family].labels(*o.labels)
        if isinstance(m, Counter):
            m.inc(o.value)
        else:
            m.observe(o.value, {"trace_id": o.trace_id} if o.trace_id else None)


def render_seconds(render: Callable[[], bytes], between: Callable[[int], None], repeat: int) -> float:
    """Median render time, each render after a poll's worth of new observations (``between``)."""
    render()  # warm
    times = []
    for i in range(repeat):
        between(i)
        t0 = time.perf_counter()
        render()
        times.append(time.perf_counter() - t0)
    return median(times)


def measure(captured: list[Captured], series: int, repeat: int) -> dict[str, Any]:
    disable_created_metrics()  # type: ignore[no-untyped-call]  # our families have no _created samples: render the same lines
    obs, n = observations(captured, series)
    ours = prom.new_store(label_value_limit=100_000)
    ours.stage(obs, time.time()).apply()
    registry = CollectorRegistry()
    registry.register(ours)
    registry.register(prom.StoreStats(ours))
    native, native_metrics = native_registry(obs)
    rng = random.Random(1)

    def poll(store_side: bool) -> Callable[[int], None]:
        def between(i: int) -> None:
            batch = rng.sample(obs, POLL_OBSERVATIONS)
            if store_side:
                ours.stage(batch, time.time()).apply()
            else:
                observe(native_metrics, batch)
        return between

    out: dict[str, Any] = {"series": n, "observations": len(obs), "changed_per_scrape": POLL_OBSERVATIONS}
    for fmt, encoder in (("openmetrics", openmetrics), ("text", text)):
        out[fmt] = {"ours": render_seconds(partial(render, registry, encoder), poll(True), repeat),
                    "native": render_seconds(partial(encoder, native), poll(False), repeat),
                    "bytes": len(render(registry, encoder))}
    return out
