"""Wiring: build the components from settings and run them on one asyncio loop.

Dependencies are created here and passed in (database, registry, clock), so every component can be
driven alone in tests. The service is what `collect`, `run` and `demo` start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import Metric
from prometheus_client.registry import Collector as PromCollector

from exporter.config import ConfigError, Settings, parse_listen
from exporter.db import ConnectOptions, Database, redact
from exporter.ingest.collector import RunCollector
from exporter.ingest.leader import Leadership
from exporter.ingest.notify import NotifyListener, Wakeup
from exporter.ingest.poll import CollectorOptions
from exporter.ingest.readers import AgnoSource
from exporter.records.runs import RunRecord
from exporter.sink import Sinks
from exporter.sinks.otel.sink import OtelSink
from exporter.sinks.prometheus import families as prom
from exporter.sinks.prometheus.prices import Price, PriceTable
from exporter.sinks.prometheus.sink import PrometheusSink
from exporter.sinks.prometheus.topsessions import TopSessions
from exporter.state.store import PostgresState
from exporter.web.app import Health, Status, bound_port, build_app, serve
from exporter.web.config import WebConfig, load_web_config

log = logging.getLogger("agno_exporter")

TOP_SESSIONS_MIN_GAP = 1.0  # seconds; CollectorOptions.top_sessions_min_gap at most this


def agno_version() -> str:
    try:
        return version("agno")
    except PackageNotFoundError:
        return "unknown"


def database_url(settings: Settings) -> str:
    if settings.database.url is None:
        raise ConfigError("database.url: not set (use --db-url, DATABASE_URL or the config file)")
    return settings.database.url.get_secret_value()


# source.Layout.version -> what the landing page says
LAYOUTS = {"v3": "agno 3.x (a row per run in the runs table)",
           "v2": "agno 2.x (runs in the sessions table's runs column)",
           "mixed": "agno 2.x and 3.x mid-migration (runs table first, then the legacy column)",
           "none": "no agno tables found yet"}


def metric_value(metric: Counter | Gauge) -> float:
    """A metric's current value, summed over its label values (through its public collect())."""
    return sum(x.value for m in metric.collect() for x in m.samples if not x.name.endswith("_created"))


class LeaderOnly(PromCollector):
    """agno totals are exported by the leader only, so summing over replicas never counts twice."""

    def __init__(self, inner: PromCollector, leadership: Leadership) -> None:
        self.inner = inner
        self.leadership = leadership

    def describe(self) -> Iterator[Metric]:
        return iter(self.inner.describe()) if hasattr(self.inner, "describe") else iter(())

    def collect(self) -> Iterator[Metric]:
        if self.leadership.is_leader:
            yield from self.inner.collect()


@dataclass
class Service:
    """The collector, its sinks and the web server, sharing one registry."""

    settings: Settings
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        s = self.settings
        url = database_url(s)
        self.source_db = Database(ConnectOptions(
            url, s.database.application_name, s.database.statement_timeout, s.database.connect_timeout,
            read_only=True))
        state_url = s.state.url.get_secret_value() if s.state.url else url
        self.state_db = Database(ConnectOptions(
            state_url, s.database.application_name + "-state", s.database.statement_timeout,
            s.database.connect_timeout))
        self.source = AgnoSource.from_settings(self.source_db, s.database, s.collector.discovery_interval)
        self.state = PostgresState(self.state_db, s.state.schema_name, self.source.key, traces=s.traces_enabled)
        self.store = prom.new_store(s.metrics.label_value_limit)
        self.metrics = prom.SelfMetrics(self.registry, agno_version())
        self.wake = Wakeup(prom.WakeSelfMetrics(self.registry), s.collector.wake_min_interval)
        self.trace_sink: Any = None
        self.trace_outbox: Any = None
        self.agno_span_sink: Any = None
        self.span_poller: Any = None
        self.forwarding_dbs: tuple[Database, ...] = ()
        prices = PriceTable({k.lower(): Price(p.input, p.output, p.cached_input, p.cache_write)
                             for k, p in s.metrics.prices.items()}, defaults=s.metrics.default_prices)
        # The sinks, peers: Prometheus series counted in the state transaction, spans queued in the state's
        # outbox by the same transaction and delivered by the trace sink (woken here).
        self.sinks = Sinks([PrometheusSink(self.store, prices), OtelSink(self._committed)])
        self.collector = RunCollector(
            self.source, self.state, self.sinks, self.metrics,
            CollectorOptions(
                batch_size=s.collector.batch_size, clock_skew=s.collector.clock_skew,
                max_lookback=s.collector.max_lookback, backfill=s.collector.backfill,
                top_sessions=s.metrics.top_sessions, top_sessions_window=s.metrics.top_sessions_window,
                # polls the wake-up starts may come many a second: the top-K query at most once a second
                top_sessions_min_gap=min(TOP_SESSIONS_MIN_GAP, s.collector.poll_interval),
                with_content=s.traces.capture_content,
                stuck_after=s.collector.stuck_after,
                session_settle=s.collector.session_check_delay,
            ),
            leadership=Leadership(
                Database(ConnectOptions(state_url, s.database.application_name + "-leader",
                                        s.database.statement_timeout, s.database.connect_timeout))
                if s.ha.enabled else None,
                s.ha.lock_key, self.source.key),
        )
        self.registry.register(LeaderOnly(self.store, self.collector.leadership))
        self.registry.register(prom.StoreStats(self.store))
        self.registry.register(LeaderOnly(TopSessions(self.collector), self.collector.leadership))
        self.registry.register(LeaderOnly(prom.TablesRead(self.source.tables_read), self.collector.leadership))
        self.web_config = load_web_config(s.web.config_file) if s.web.config_file else WebConfig()
        self.runner: Any = None
        self.port = 0

    def _committed(self, records: Sequence[RunRecord]) -> None:
        if self.trace_sink is not None:
            self.trace_outbox.offer(records)  # the records in memory: delivery need not read them again
            self.trace_sink.notify()

    def health(self) -> Health:
        return Health(ready=lambda: self.collector.ready, status=self.status, tables=self.source.table_report)

    def status(self) -> Status:
        """The landing page's numbers, read from the running components (no database query)."""
        s, c = self.settings, self.collector
        url = database_url(s)
        state_url = s.state.url.get_secret_value() if s.state.url else None
        if not s.collector.enabled:
            collector = "off (collector.enabled: false)"
        elif s.ha.enabled and not c.leadership.is_leader:
            collector = "standby (ha.enabled: another replica collects)"
        else:
            collector = "ready" if c.ready else "not ready (no successful poll yet, or the database is unreachable)"
        layout = self.source.layout
        failure = c.last_failure
        if failure is not None:  # defence in depth: libpq may quote a URL's parts in its messages
            failure = replace(failure, message=redact(redact(failure.message, url), state_url))
        backlog = agno_backlog = None
        if s.traces_enabled and self.trace_sink is not None:
            from exporter.sinks.otel.delivery import ORIGIN_AGNO_TRACING, ORIGIN_RUNS

            backlog = round(metric_value(self.delivery_metrics.backlog(ORIGIN_RUNS)))
            if self.agno_span_sink is not None:
                agno_backlog = round(metric_value(self.delivery_metrics.backlog(ORIGIN_AGNO_TRACING)))
        return Status(
            now=time.time(),
            collector=collector,
            database=redact(url, url),
            state=redact(state_url, state_url) if state_url and state_url != url else None,
            layout=LAYOUTS.get(layout.version, layout.version) if layout else "not discovered yet",
            tables=layout.describe() if layout and self.source.readers else self.source.describe_reading(),
            last_success=c.last_success,
            runs_counted=round(sum(v.total for v in self.store.series("agno_runs").values())),
            runs_counted_here=round(metric_value(self.metrics.runs_collected)),
            series=self.store.series_count(),
            last_error=failure,
            trace_backlog=backlog,
            agno_spans_backlog=agno_backlog,
        )

    async def start(self) -> None:
        host, port = parse_listen(self.settings.web.listen)
        app = build_app(self.registry, self.health(), self.web_config)
        self.runner = await serve(app, host, port, self.web_config.tls)
        self.port = bound_port(self.runner)
        log.info("serving /metrics on %s:%d", host, self.port)
        if self.settings.collector.enabled:
            self.tasks.append(asyncio.create_task(
                self.collector.run(self.settings.collector.poll_interval, self.settings.collector.max_backoff,
                                   self.wake), name="collector"))
            if self.settings.collector.wake_on_notify is not False:
                self.tasks.append(asyncio.create_task(self._listener().run(), name="notify-listener"))
        if self.settings.traces_enabled:
            self.trace_sink = self._trace_sink()
            self.tasks.append(asyncio.create_task(self._run_sink(self.trace_state, self.trace_sink), name="traces"))
            if self.settings.traces.forward_agno_spans:
                self.span_poller, self.agno_span_sink, outbox_state = self._agno_span_forwarding()
                self.tasks.append(asyncio.create_task(
                    self.span_poller.run(self.settings.collector.poll_interval, self.settings.collector.max_backoff),
                    name="agno-spans-poller"))
                self.tasks.append(asyncio.create_task(self._run_sink(outbox_state, self.agno_span_sink),
                                                      name="agno-spans"))

    def _listener(self) -> NotifyListener:
        """The wake-up's LISTEN connection (exporter.ingest.notify): on agno's database, the leader only."""
        c = self.settings.collector
        leadership = self.collector.leadership
        return NotifyListener(
            self.source_db.opts, self.wake, lambda: [r.written for r in self.source.readers],
            lambda: leadership.is_leader, c.wake_on_notify, c.discovery_interval, c.poll_interval, c.max_backoff)

    async def _run_sink(self, state: PostgresState, sink: Any) -> None:
        """The outbox lives in the state schema, which may not exist yet on a fresh database: create it
        (idempotent, serialised with the collector's setup) before the first pass."""
        delay = 0.5
        while True:
            try:
                await state.setup()
                break
            except (psycopg.Error, OSError) as exc:
                log.warning("traces: state schema not ready (%s); retrying in %.1fs", str(exc).strip(), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        await sink.run()

    def _trace_sink(self) -> Any:
        from exporter.sinks.otel.delivery import DeliveryMetrics, TraceSink
        from exporter.sinks.otel.exporters import make_span_exporter
        from exporter.sinks.otel.outbox import StateOutbox
        from exporter.sinks.otel.traces import make_resource

        t = self.settings.traces
        self.delivery_metrics = DeliveryMetrics(self.registry)
        self.span_exporter = make_span_exporter(t.endpoint, t.protocol, timeout=t.timeout)
        # The sink runs concurrently with the collector: it gets connections of its own, since
        # transactions of two tasks on one connection would interleave.
        self.trace_dbs = (Database(self.source_db.opts), Database(self.state_db.opts))
        source = AgnoSource.from_settings(self.trace_dbs[0], self.settings.database,
                                          self.settings.collector.discovery_interval, quiet=True)
        state = PostgresState(self.trace_dbs[1], self.state.schema, self.source.key, traces=True)
        self.trace_state = state
        self.trace_outbox = StateOutbox(state, source, with_content=t.capture_content,
                                        active=lambda: self.collector.leadership.is_leader,
                                        hold=self.settings.collector.stuck_after)
        return TraceSink(
            self.trace_outbox,
            self.span_exporter,
            resource=make_resource(t.resource_attributes),
            metrics=self.delivery_metrics,
            batch_size=t.batch_size,
            capture_content=t.capture_content,
            min_backoff=t.min_backoff,
            max_backoff=t.max_backoff,
            poll_interval=t.poll_interval,
        )

    def _agno_span_forwarding(self) -> tuple[Any, Any, PostgresState]:
        """agno's own spans: a poller that queues them and a sink of their own (same delivery path,
        origin="agno_tracing"), each on its own connections since they run concurrently."""
        from exporter.ingest.spans_table import SpansTable
        from exporter.sinks.otel.agno_spans import PollerOptions, SpanOutbox, SpanPoller
        from exporter.sinks.otel.delivery import ORIGIN_AGNO_TRACING, TraceSink
        from exporter.sinks.otel.exporters import make_span_exporter
        from exporter.sinks.otel.traces import make_resource

        s, t = self.settings, self.settings.traces
        poll_db, poll_state_db, send_db, send_state_db = (
            Database(opts) for opts in (self.source_db.opts, self.state_db.opts) * 2)
        self.forwarding_dbs = (poll_db, poll_state_db, send_db, send_state_db)
        leader = self.collector.leadership

        def source(db: Database) -> SpansTable:
            return SpansTable(db, s.database.schema_name, s.database.spans_table, s.database.traces_table)

        key = source(poll_db).key  # names this table's cursor row and queue in the state
        poller = SpanPoller(
            source(poll_db), PostgresState(poll_state_db, s.state.schema_name, key), self.registry,
            PollerOptions(batch_size=s.collector.batch_size, clock_skew=s.collector.clock_skew,
                          max_lookback=s.collector.max_lookback, backfill=s.collector.backfill),
            active=lambda: leader.is_leader)
        outbox_state = PostgresState(send_state_db, s.state.schema_name, key)
        resource = make_resource(t.resource_attributes)
        # An exporter of its own: the two sinks export concurrently from worker threads.
        self.agno_span_exporter = make_span_exporter(t.endpoint, t.protocol, timeout=t.timeout)
        sink = TraceSink(
            SpanOutbox(outbox_state, source(send_db), self.metrics.rows_skipped,
                       active=lambda: leader.is_leader),
            self.agno_span_exporter,
            resource=resource,
            metrics=self.delivery_metrics,
            origin=ORIGIN_AGNO_TRACING,
            batch_size=t.batch_size,
            min_backoff=t.min_backoff,
            max_backoff=t.max_backoff,
            poll_interval=t.poll_interval,
        )
        poller.on_queued = sink.notify
        return poller, sink, outbox_state

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks.clear()
        if self.trace_sink is not None:
            self.span_exporter.shutdown()
            self.trace_sink = None
            for db in self.trace_dbs:
                await db.close()
        if self.agno_span_sink is not None:
            self.agno_span_exporter.shutdown()
            self.agno_span_sink = self.span_poller = None
            for db in self.forwarding_dbs:
                await db.close()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        await self.collector.leadership.release()
        await self.source_db.close()
        await self.state_db.close()
