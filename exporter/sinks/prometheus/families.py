"""The Prometheus sink: which families exist, what one run adds to them, and the self-metrics.

Names follow the README's Metrics section: per model call and per tool call the OpenTelemetry GenAI
semantic conventions (Prometheus spelling), per run and per session ``agno_``, about the exporter
``agno_exporter_``. ``session_id``, ``user_id`` and ``run_id`` are never labels of these families;
they go on spans (and the trace id on exemplars).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.ingest.poll import OpenRuns
from exporter.records.runs import RunRecord, TokenUsage
from exporter.sinks.prometheus.prices import PriceTable
from exporter.sinks.prometheus.series import Family, Observation, SeriesStore, exponential, gauge
from exporter.state.rows import TopSession

TOKEN_BUCKETS = exponential(1, 4, 14)  # 1 .. 67108864
DURATION_BUCKETS = exponential(0.01, 2, 14)  # 0.01 .. 81.92
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0)
RUN_DURATION_BUCKETS = (*exponential(0.01, 2, 14), 163.84, 327.68, 655.36, 1310.72)

_GENAI = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_agent_name")

FAMILIES: tuple[Family, ...] = (
    Family("agno_runs", "counter", "Finished agno runs, counted once when they reach a final status.",
           ("run_type", "name", "status")),
    Family("agno_tokens", "counter",
           "Tokens used, summed from agno's stored run metrics (details by model role); "
           "equals agno's own run totals.",
           ("run_type", "name", "model", "provider", "model_role", "token_type")),
    Family("agno_cost_usd", "counter",
           "Cost in US dollars: as reported by the provider (source=reported) or estimated from the "
           "price table (source=estimated).",
           ("run_type", "name", "model", "provider", "source")),
    Family("agno_cost_unpriced_runs", "counter",
           "Runs with tokens of a model that has neither a reported cost nor a price in the price table.",
           ("model", "provider")),
    Family("agno_run_duration_seconds", "histogram", "Run duration as agno measured it.",
           ("run_type", "name", "status"), RUN_DURATION_BUCKETS, "seconds"),
    Family("agno_run_time_to_first_token_seconds", "histogram",
           "Time to first token of a run as agno measured it: the first chunk of a streamed run "
           "(stream=\"true\"), the whole first response of a non-streamed one (stream=\"false\").",
           ("run_type", "name", "stream"), TTFT_BUCKETS, "seconds"),
    Family("agno_model_calls", "counter",
           "Model calls of runs, by the model, provider and model role (agno's details key) that made them.",
           ("run_type", "name", "model", "provider", "model_role")),
    Family("agno_tool_calls", "counter", "Tool calls executed by runs.", ("name", "tool")),
    Family("agno_tool_call_errors", "counter", "Tool calls that agno marked as failed.", ("name", "tool")),
    Family("agno_token_anomalies", "counter",
           "Runs whose stored token numbers are inconsistent under their provider's meaning "
           "(e.g. total != input + output), by kind and the model whose numbers they are.",
           ("kind", "provider", "model")),
    Family("agno_session_disagreements", "counter",
           "Sessions whose totals stored by agno (session_metrics) disagree with the sum of their runs.",
           ("run_type", "name")),
    Family("agno_sessions", "counter", "Sessions seen for the first time (by the run type and name that opened them).",
           ("run_type", "name")),
    Family("gen_ai_client_token_usage", "histogram", "Tokens per model call (OpenTelemetry GenAI).",
           (*_GENAI[:3], "gen_ai_token_type", "gen_ai_agent_name"), TOKEN_BUCKETS),
    Family("gen_ai_client_operation_duration_seconds", "histogram",
           "Duration of one model call (OpenTelemetry GenAI).", (*_GENAI, "error_type"),
           DURATION_BUCKETS, "seconds"),
    Family("gen_ai_server_time_to_first_token_seconds", "histogram",
           "Time to first token of one streamed model call (OpenTelemetry GenAI); non-streamed calls are "
           "in gen_ai_client_operation_duration_seconds only.", _GENAI, TTFT_BUCKETS, "seconds"),
    Family("gen_ai_execute_tool_duration_seconds", "histogram",
           "Duration of one tool call, exact as agno measured it.",
           ("gen_ai_tool_name", "gen_ai_agent_name", "error_type"), DURATION_BUCKETS, "seconds"),
)

# Labels whose values come from a fixed set of ours or agno's: never folded into __other__.
BOUNDED_LABELS = ("kind", "run_type", "status", "token_type", "gen_ai_token_type", "gen_ai_operation_name",
                  "source", "error_type", "model_role", "stream")


def new_store(label_value_limit: int) -> SeriesStore:
    return SeriesStore(FAMILIES, label_value_limit, BOUNDED_LABELS)


def observations(record: RunRecord, trace_id: str | None, prices: PriceTable | None = None) -> Iterator[Observation]:
    """Everything one finished run adds to the persisted families."""
    out: list[Observation] = []
    run_observations(record, trace_id, prices, out)
    return iter(out)


# Observation's own constructor is a Python function (NamedTuple.__new__); a run makes about twenty
# of them, and building the tuple directly was a tenth of preparing a page.
_obs = tuple.__new__


def run_observations(record: RunRecord, trace_id: str | None, prices: PriceTable | None,
                     out: list[Observation]) -> tuple[float, float]:
    """Append what one finished run adds to the persisted families to ``out``; return what
    :func:`cost_of` returns for those observations: (reported, estimated) US dollars, summed in the
    order the observations are made."""
    rt, name = record.run_type, record.name
    add = out.append
    ob = Observation
    add(_obs(ob, ("agno_runs", (rt, name, record.status), 1, None)))
    for t in record.tokens:
        add(_obs(ob, ("agno_tokens", (rt, name, t.model, t.provider, t.model_role, t.token_type), t.count, None)))
    for a in record.anomalies:
        add(_obs(ob, ("agno_token_anomalies", (a.kind, a.provider, a.model), 1, None)))
    reported = estimated = 0.0
    for c in record.costs:
        add(_obs(ob, ("agno_cost_usd", (rt, name, c.model, c.provider, "reported"), c.usd, None)))
        reported += c.usd
    if prices is not None:
        estimated = _estimated_cost(record, prices, out)
    if record.duration is not None:
        add(_obs(ob, ("agno_run_duration_seconds", (rt, name, record.status), record.duration, trace_id)))
    if record.time_to_first_token is not None:
        add(_obs(ob, ("agno_run_time_to_first_token_seconds", (rt, name, "true" if record.streamed else "false"),
                      record.time_to_first_token, trace_id)))
    for call in record.model_calls:
        provider, model = call.provider, call.model
        add(_obs(ob, ("agno_model_calls", (rt, name, model, provider, call.model_role), 1, None)))
        if call.input_tokens:
            add(_obs(ob, ("gen_ai_client_token_usage", ("chat", provider, model, "input", name), call.input_tokens,
                          trace_id)))
        if call.output_tokens:
            add(_obs(ob, ("gen_ai_client_token_usage", ("chat", provider, model, "output", name), call.output_tokens,
                          trace_id)))
        if call.duration is not None:
            add(_obs(ob, ("gen_ai_client_operation_duration_seconds", ("chat", provider, model, name, ""),
                          call.duration, trace_id)))
        # OpenTelemetry GenAI: time to first chunk "SHOULD be reported for streaming calls and SHOULD
        # NOT be reported otherwise"; agno stores a non-streamed call's whole duration as its TTFT.
        if call.streamed and call.time_to_first_token is not None:
            add(_obs(ob, ("gen_ai_server_time_to_first_token_seconds", ("chat", provider, model, name),
                          call.time_to_first_token, trace_id)))
    for tool in record.tool_calls:
        add(_obs(ob, ("agno_tool_calls", (name, tool.name), 1, None)))
        if tool.error:
            add(_obs(ob, ("agno_tool_call_errors", (name, tool.name), 1, None)))
        if tool.duration is not None:
            add(_obs(ob, ("gen_ai_execute_tool_duration_seconds",
                          (tool.name, name, "ToolCallError" if tool.error else ""), tool.duration, trace_id)))
    return reported, estimated


def _estimated_cost(record: RunRecord, prices: PriceTable, out: list[Observation]) -> float:
    """Estimate the cost of each model's tokens that no reported cost covers; append the observations
    to ``out`` and return the estimated US dollars (summed in the order they are appended)."""
    reported = {(c.model, c.provider) for c in record.costs} if record.costs else ()
    per_model: dict[tuple[str, str], list[TokenUsage]] = {}
    for t in record.tokens:
        key = (t.model, t.provider)
        if key not in reported:
            group = per_model.get(key)
            if group is None:
                per_model[key] = [t]
            else:
                group.append(t)
    estimated = 0.0
    for (model, provider), usages in per_model.items():
        usd = prices.estimate(usages)
        if usd is None:
            out.append(_obs(Observation, ("agno_cost_unpriced_runs", (model, provider), 1, None)))
        elif usd > 0:
            out.append(_obs(Observation, ("agno_cost_usd", (record.run_type, record.name, model, provider, "estimated"),
                                          usd, None)))
            estimated += usd
    return estimated


def cost_of(observations: Iterable[Observation]) -> tuple[float, float]:
    """(reported, estimated) US dollars among one run's observations: what it adds to
    ``agno_cost_usd_total``. The session figures (``agno_session_top_cost_usd``) sum these, so a
    session's cost always equals its runs' exported cost, whatever the price table does."""
    reported = estimated = 0.0
    for o in observations:
        if o.family == "agno_cost_usd":
            if o.labels[-1] == "reported":
                reported += o.value
            else:
                estimated += o.value
    return reported, estimated


def new_session_observations(new_sessions: Iterable[tuple[str, str]]) -> Iterator[Observation]:
    for run_type, name in new_sessions:
        yield Observation("agno_sessions", (run_type, name), 1)


class SelfMetrics:
    """The exporter's own health, on the registry it is given (never the global one)."""

    def __init__(self, registry: CollectorRegistry, agno_version: str) -> None:
        r = registry
        Info("agno_exporter_build", "Build information.", registry=r).info(
            {"version": __version__, "agno_version": agno_version, "python_version": platform.python_version()}
        )
        self.up = Gauge("agno_exporter_up", "1 when the last poll of agno's database succeeded.", registry=r)
        self.leader = Gauge("agno_exporter_leader",
                            "1 on the replica that collects (always 1 without ha.enabled), 0 on standbys.",
                            registry=r)
        self.ready = Gauge("agno_exporter_ready", "1 once a first poll succeeded and the database is reachable.",
                           registry=r)
        self.poll_duration = Histogram("agno_exporter_poll_duration_seconds", "Duration of one poll.",
                                       buckets=exponential(0.001, 2, 16), registry=r)
        self.last_success = Gauge("agno_exporter_last_success_timestamp_seconds",
                                  "When the last poll succeeded (unix time).", registry=r)
        self.poll_errors = Counter("agno_exporter_poll_errors", "Polls that failed.", ["reason"], registry=r)
        self.runs_collected = Counter("agno_exporter_runs_collected", "Runs collected and counted.",
                                      ["run_type"], registry=r)
        self.rows_skipped = Counter("agno_exporter_rows_skipped", "Rows skipped as malformed, by reason.",
                                    ["reason"], registry=r)
        self.rows_sanitized = Counter("agno_exporter_rows_sanitized",
                                      "Rows whose label values had to be cleaned, by reason.", ["reason"],
                                      registry=r)
        self.lag = Histogram("agno_exporter_lag_seconds",
                             "Seconds between a run's last update in agno and its export.",
                             buckets=exponential(0.05, 2, 16), registry=r)
        self.lookback_clamped = Counter(
            "agno_exporter_lookback_clamped",
            "Polls where a transaction that may write agno's runs was older than collector.max_lookback "
            "(runs it commits with older stamps may be missed).",
            registry=r)
        self.watermark = Gauge("agno_exporter_cursor_low_watermark_seconds",
                               "The collector's low watermark (unix time): runs updated after it are re-checked.",
                               registry=r)
        for reason in ("database", "query", "state"):
            self.poll_errors.labels(reason)


class WakeSelfMetrics:
    """The wake-up's self-metrics (the shape of :class:`exporter.ingest.metrics.WakeMetrics`), on the
    registry given: ``agno_exporter_wakeups_total{reason}``, ``agno_exporter_notifications_total`` and
    ``agno_exporter_notify_listening``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.wakeups = Counter(
            "agno_exporter_wakeups",
            "What started each poll: interval (collector.poll_interval passed), notify (agno committed a finished"
            " run, see create-notify-trigger) or listen (the LISTEN connection was (re)opened: notifications"
            " may have been missed).", ["reason"], registry=registry)
        for reason in ("interval", "notify", "listen"):
            self.wakeups.labels(reason)
        self.notifications = Counter(
            "agno_exporter_notifications",
            "Notifications received from the wake-up trigger (a burst of them starts one poll).", registry=registry)
        self.listening = Gauge(
            "agno_exporter_notify_listening",
            "1 while the collector listens for the wake-up trigger's notifications, else 0 (no trigger,"
            " collector.wake_on_notify false, a standby, or the connection is down).", registry=registry)


class TablesRead(Collector):
    """``agno_exporter_tables``: how many agno tables the collector reads, 0 when it found none.

    The signal for "connected, healthy, but nothing to read" (a schema typo, an app's custom
    session_table under an explicit one): ``/readyz`` stays 200 then, since a sidecar must be ready
    before its app writes agno's tables. Absent until the first discovery.
    """

    def __init__(self, tables: Callable[[], Mapping[str, int] | None]) -> None:
        self.tables = tables

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        counts = self.tables()
        if counts is None:
            return
        yield gauge("agno_exporter_tables",
                    "agno tables read at the last discovery: runs tables (layout=v3) and session tables whose"
                    " runs column holds agno 2.x runs (layout=v2); 0 when none was found in database.schema.",
                    ["layout"], [((layout,), n) for layout, n in sorted(counts.items())])


class StoreStats(Collector):
    """Self-metrics derived from the series store at scrape time."""

    def __init__(self, store: SeriesStore) -> None:
        self.store = store

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        yield gauge("agno_exporter_series", "Series held per metric family.", ["metric"],
                    [((name,), len(self.store.series(name))) for name in self.store.families])
        folded = self.store.limiter.folded
        from prometheus_client.core import CounterMetricFamily

        c = CounterMetricFamily("agno_exporter_label_values_folded",
                                "Observations whose label value was folded into __other__ (cap reached).",
                                labels=["metric", "label"])
        for (metric, label), n in sorted(folded.items()):
            c.add_metric([metric, label], n)
        yield c


def open_runs_metrics(rows: Sequence[OpenRuns], stuck_after: float) -> Iterator[Metric]:
    """Runs agno has not finished: in progress, stuck (older than collector.stuck_after), oldest age."""
    labels = ["run_type", "name", "status"]
    yield gauge("agno_runs_in_progress", "Runs PENDING or RUNNING in agno's table at the last poll.", labels,
                [((rt, nm, st), n) for rt, nm, st, n, _, _ in rows])
    yield gauge("agno_runs_stuck", f"Runs PENDING or RUNNING for longer than {stuck_after:g}s "
                "(collector.stuck_after) at the last poll.", labels,
                [((rt, nm, st), stuck) for rt, nm, st, _, stuck, _ in rows])
    yield gauge("agno_runs_oldest_in_progress_age_seconds",
                "Age of the oldest PENDING or RUNNING run (since its creation) at the last poll.", labels,
                [((rt, nm, st), age) for rt, nm, st, _, _, age in rows])


def top_sessions_metrics(rows: Sequence[TopSession]) -> Iterator[Metric]:
    """The K sessions with the most tokens: rank, session id, their tokens, and their cost by source."""
    labels = ["rank", "session_id", "run_type", "name"]
    yield gauge("agno_session_top_tokens", "Tokens of the K sessions with the most tokens in the window "
                "(sum of their runs, member runs included).", labels,
                (((str(i + 1), r.session_id, r.run_type, r.name), r.tokens) for i, r in enumerate(rows)))
    yield gauge("agno_session_top_cost_usd", "Cost in USD of the same K sessions: the sum of their runs' "
                "agno_cost_usd_total, by the same source (reported by the provider, or estimated from the price "
                "table); sum without (source) for the total.", [*labels, "source"],
                (((str(i + 1), r.session_id, r.run_type, r.name, source), usd)
                 for i, r in enumerate(rows)
                 for source, usd in (("reported", r.cost), ("estimated", r.estimated_cost))))
