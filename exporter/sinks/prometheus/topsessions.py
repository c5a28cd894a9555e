"""``agno_session_top_*`` and ``agno_runs_in_progress``/``_stuck``/``_oldest_*``: what the collector's last
poll saw, exposed at scrape time (the collector refreshes it every poll; nothing here queries)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector as PromCollector

from exporter.ingest.collector import RunCollector
from exporter.sinks.prometheus import families as prom


class TopSessions(PromCollector):
    """Exposes the collector's latest top-K sessions (refreshed every poll)."""

    def __init__(self, collector: RunCollector) -> None:
        self.collector = collector

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        yield from prom.top_sessions_metrics(self.collector.top)
        yield from prom.open_runs_metrics(self.collector.open_runs, self.collector.opts.stuck_after)
