"""Generate the Grafana dashboards in grafana/dashboards/ from one readable description.

Why a generator: two dashboards share the same panel shapes (percentile panels with exemplars,
per-label rates, stats), units and layout rules; writing them by hand drifts. The JSON it writes is
committed (Grafana provisions it as is) and tests/test_stack.py checks that this script reproduces
it byte for byte and that every query in it returns data from a real Prometheus scraping a real
exporter. Metric names and labels are exactly those of the README's metric table.

    python grafana/generate.py            # rewrite grafana/dashboards/*.json
    python grafana/generate.py --check    # exit 1 if the committed JSON is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24
OVERVIEW_UID = "agno-overview"
DRILLDOWN_UID = "agno-drilldown"
DRILLDOWN_LINK = (f"/d/{DRILLDOWN_UID}/agno-drill-down?var-run_type=${{__field.labels.run_type}}"
                  "&var-name=${__field.labels.name}&${__url_time_range}&${datasource:queryparam}")

Json = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# building blocks


def target(expr: str, legend: str = "", *, instant: bool = False, exemplar: bool = False,
           table: bool = False) -> Json:
    out: Json = {"datasource": DS, "editorMode": "code", "expr": expr, "legendFormat": legend or "__auto",
                 "range": not instant, "instant": instant}
    if exemplar:
        out["exemplar"] = True
    if table:
        out["format"] = "table"
    return out


def quantiles(bucket: str, selector: str = "", by: str = "", window: str = "$__rate_interval",
              qs: tuple[float, ...] = (0.5, 0.95, 0.99), exemplar: bool = True) -> list[Json]:
    """p50/p95/p99 of a histogram; exemplars on the first query (they are the same for all three)."""
    group = ", ".join(["le", *([by] if by else [])])
    out = []
    for i, q in enumerate(qs):
        legend = f"p{round(q * 100)}" + (f" {{{{{by}}}}}" if by else "")
        expr = f"histogram_quantile({q}, sum by ({group}) (rate({bucket}{selector}[{window}])))"
        out.append(target(expr, legend, exemplar=exemplar and i == 0))
    return out


def _thresholds(*steps: tuple[float | None, str]) -> Json:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


def timeseries(title: str, description: str, targets: list[Json], unit: str, *, axis: str = "",
               stack: bool = False, bars: bool = False, no_value: str | None = None,
               links: list[Json] | None = None) -> Json:
    custom: Json = {"drawStyle": "bars" if bars else "line", "lineWidth": 1, "fillOpacity": 20 if stack else 10,
                    "showPoints": "never", "spanNulls": False, "axisLabel": axis,
                    "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    defaults: Json = {"unit": unit, "min": 0, "custom": custom, "color": {"mode": "palette-classic"}}
    if no_value is not None:
        defaults["noValue"] = no_value
    if links:
        defaults["links"] = links
    return {
        "type": "timeseries", "title": title, "description": description, "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                               "calcs": ["mean", "max", "lastNotNull"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": targets,
    }


def stat(title: str, description: str, expr: str, unit: str, *, thresholds: Json | None = None,
         mappings: list[Json] | None = None, no_value: str | None = None, decimals: int | None = None) -> Json:
    defaults: Json = {"unit": unit, "color": {"mode": "thresholds"},
                      "thresholds": thresholds or _thresholds((None, "blue"))}
    if mappings:
        defaults["mappings"] = mappings
    if no_value is not None:
        defaults["noValue"] = no_value
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "stat", "title": title, "description": description, "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value", "graphMode": "area", "justifyMode": "auto", "textMode": "auto",
                    "orientation": "auto"},
        "targets": [target(expr, instant=True)],
    }


# Appended to the query of a stat that counts something that may not have happened (spans dropped,
# tool errors, ...): Prometheus has no series for it until it happens, and the panel should say 0,
# not "No data". tests/test_stack.py checks such panels return 0 on a fresh exporter.
ZERO = " or vector(0)"


def count(title: str, description: str, expr: str, *, thresholds: Json | None = None) -> Json:
    """A stat of how many times something happened; 0 when it never did."""
    return stat(title, description, expr + ZERO, "short", decimals=0, thresholds=thresholds)


def table(title: str, description: str, targets: list[Json], *, rename: dict[str, str],
          hide: tuple[str, ...] = ("Time", "__name__", "job", "instance"), units: dict[str, str] | None = None,
          sort_by: str | None = None, links: dict[str, list[Json]] | None = None,
          no_value: str | None = None) -> Json:
    """An instant table; several queries are merged on their common labels."""
    transformations: list[Json] = []
    if len(targets) > 1:
        transformations.append({"id": "merge", "options": {}})
    transformations.append({"id": "organize", "options": {
        "excludeByName": dict.fromkeys(hide, True), "renameByName": rename, "indexByName": {}}})
    if sort_by:
        transformations.append({"id": "sortBy", "options": {"sort": [{"field": sort_by, "desc": True}]}})
    overrides = [{"matcher": {"id": "byName", "options": name},
                  "properties": [{"id": "unit", "value": unit}]} for name, unit in (units or {}).items()]
    overrides += [{"matcher": {"id": "byName", "options": name}, "properties": [{"id": "links", "value": value}]}
                  for name, value in (links or {}).items()]
    defaults: Json = {"custom": {"align": "auto", "cellOptions": {"type": "auto"}}}
    if no_value is not None:
        defaults["noValue"] = no_value
    return {
        "type": "table", "title": title, "description": description, "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": overrides},
        "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
        "targets": [{**t, "format": "table", "instant": True, "range": False} for t in targets],
        "transformations": transformations,
    }


@dataclass
class Layout:
    """Places panels left to right in rows of 24 grid units; a section starts a row panel."""

    panels: list[Json] = field(default_factory=list)
    x: int = 0
    y: int = 0
    row_height: int = 0

    def section(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                            "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": self.y}})
        self.y += 1

    def add(self, panel: Json, w: int, h: int) -> None:
        if self.x + w > GRID_WIDTH:
            self._newline()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_height = max(self.row_height, h)

    def _newline(self) -> None:
        self.y += self.row_height
        self.x = self.row_height = 0

    def numbered(self) -> list[Json]:
        for i, p in enumerate(self.panels, start=1):
            p["id"] = i
        return self.panels


def datasource_variable() -> Json:
    return {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
            "current": {"selected": False, "text": "Prometheus", "value": "prometheus"},
            "hide": 0, "refresh": 1, "regex": "", "options": [], "includeAll": False, "multi": False}


def label_variable(name: str, label: str, query: str, *, include_all: bool) -> Json:
    """A ``label_values(...)`` variable, refreshed when the time range changes."""
    out: Json = {"name": name, "label": label, "type": "query", "datasource": DS,
                 "definition": query, "query": {"query": query, "refId": f"{name}-variable-query"},
                 "refresh": 2, "sort": 1, "regex": "", "hide": 0, "multi": False,
                 "includeAll": include_all, "current": {}, "options": []}
    if include_all:
        out["allValue"] = ".*"
    return out


def dashboard(uid: str, title: str, description: str, panels: list[Json], variables: list[Json]) -> Json:
    return {
        "uid": uid, "title": title, "description": description,
        "tags": ["agno", "agno-exporter", "genai"],
        "editable": True, "graphTooltip": 1, "id": None, "liveNow": False, "fiscalYearStartMonth": 0,
        "refresh": "30s", "schemaVersion": 39, "version": 1, "timezone": "browser", "weekStart": "",
        "time": {"from": "now-1h", "to": "now"}, "timepicker": {},
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [{"title": "agno dashboards", "type": "dashboards", "tags": ["agno"], "asDropdown": False,
                   "includeVars": False, "keepTime": True, "icon": "external link", "targetBlank": False}],
        "templating": {"list": variables},
        "panels": panels,
    }


def session_targets(selector: str) -> list[Json]:
    """Tokens, total cost (both sources) and the estimated part of the top sessions, one row each."""
    sel = f"{{{selector}}}" if selector else ""
    est = f'{{{selector + ", " if selector else ""}source="estimated"}}'
    return [target(f"agno_session_top_tokens{sel}"),
            target(f"sum without (source) (agno_session_top_cost_usd{sel})"),
            target(f"sum without (source) (agno_session_top_cost_usd{est})")]


SESSION_COLUMNS = {"rank": "Rank", "session_id": "Session", "run_type": "Type", "name": "Name",
                   "Value #A": "Tokens", "Value #B": "Cost", "Value #C": "of which estimated"}
SESSION_UNITS = {"Tokens": "short", "Cost": "currencyUSD", "of which estimated": "currencyUSD"}

UP_MAPPINGS = [{"type": "value", "options": {"0": {"text": "DOWN", "color": "red", "index": 0},
                                             "1": {"text": "UP", "color": "green", "index": 1}}}]
RED_ABOVE_ZERO = _thresholds((None, "green"), (1e-9, "red"))
ORANGE_ABOVE_ZERO = _thresholds((None, "green"), (1e-9, "orange"))


# ---------------------------------------------------------------------------------------------
# the fleet overview


def overview() -> Json:
    L = Layout()
    rate = "$__rate_interval"
    L.section("Fleet (selected time range)")
    L.add(count("Runs", "Finished runs (agno_runs_total) in the time range, all agents, teams and workflows.",
                "sum(increase(agno_runs_total[$__range]))"), 4, 4)
    L.add(stat("Error ratio", "Share of finished runs that ended in status ERROR in the time range.",
               '(sum(increase(agno_runs_total{status="ERROR"}[$__range])) or vector(0))'
               " / sum(increase(agno_runs_total[$__range]))", "percentunit",
               thresholds=_thresholds((None, "green"), (0.01, "orange"), (0.1, "red")), no_value="no runs"), 4, 4)
    L.add(count("Tokens", "Tokens of all types (input, output, cache, reasoning, audio) in the time range.",
                "sum(increase(agno_tokens_total[$__range]))"), 4, 4)
    L.add(stat("Cost", "US dollars in the time range: reported by the provider, or estimated from the price "
               "table. \"none priced\": no provider reported cost and no model has a price (see Unpriced runs).",
               "sum(increase(agno_cost_usd_total[$__range]))", "currencyUSD", no_value="none priced"), 4, 4)
    L.add(stat("TTFT p95", "95th percentile of the streamed runs' time to first token over the time range "
               "(a non-streamed run's first token comes with its whole first answer: see Run duration).",
               "histogram_quantile(0.95, sum by (le) (rate(agno_run_time_to_first_token_seconds_bucket"
               '{stream="true"}[$__range])))', "s", no_value="no streamed runs"), 4, 4)
    L.add(stat("Run duration p95", "95th percentile of run duration over the time range.",
               "histogram_quantile(0.95, sum by (le) (rate(agno_run_duration_seconds_bucket[$__range])))",
               "s", no_value="no runs"), 4, 4)
    L.add(count("Errored runs", "Runs that ended in status ERROR in the time range.",
                'sum(increase(agno_runs_total{status="ERROR"}[$__range]))', thresholds=RED_ABOVE_ZERO), 4, 4)
    L.add(count("Tool calls", "Tool executions in the time range.",
                "sum(increase(agno_tool_calls_total[$__range]))"), 4, 4)
    L.add(count("Tool errors", "Tool executions agno marked as failed in the time range.",
                "sum(increase(agno_tool_call_errors_total[$__range]))", thresholds=RED_ABOVE_ZERO), 4, 4)
    L.add(count("Token anomalies", "Runs whose stored token numbers are inconsistent (e.g. total != input + "
                "output) in the time range; see the table below.",
                "sum(increase(agno_token_anomalies_total[$__range]))", thresholds=ORANGE_ABOVE_ZERO), 4, 4)
    L.add(count("Unpriced runs", "Runs with tokens of a model that has neither a reported cost nor a price in "
                "the price table (their cost is not in Cost; add the model under metrics.prices).",
                "sum(increase(agno_cost_unpriced_runs_total[$__range]))", thresholds=ORANGE_ABOVE_ZERO), 4, 4)
    L.add(count("New sessions", "Sessions seen for the first time in the time range.",
                "sum(increase(agno_sessions_total[$__range]))"), 4, 4)

    L.section("Runs")
    L.add(timeseries("Runs/s by status", "Finished runs per second, by agno's final status.",
                     [target(f"sum by (status) (rate(agno_runs_total[{rate}]))", "{{status}}")],
                     "short", axis="runs/s", stack=True), 12, 8)
    L.add(timeseries("Runs/s by agent and team", "Finished runs per second by run type and name. Click a "
                     "series to open the drill-down for it.",
                     [target(f"sum by (run_type, name) (rate(agno_runs_total[{rate}]))", "{{run_type}} {{name}}")],
                     "short", axis="runs/s", links=[{"title": "Drill down", "url": DRILLDOWN_LINK}]), 12, 8)
    L.add(timeseries("Time to first token (runs)", "Percentiles of the streamed runs' time to first token as "
                     "agno measured it (stream=\"true\"). Exemplars (dots) link to the run's trace.",
                     quantiles("agno_run_time_to_first_token_seconds_bucket", '{stream="true"}'), "s"), 12, 8)
    L.add(timeseries("Run duration", "Percentiles of run duration (metrics.duration). Exemplars link to the "
                     "run's trace.", quantiles("agno_run_duration_seconds_bucket"), "s"), 12, 8)

    L.section("Tokens and cost")
    L.add(timeseries("Tokens/s by type", "Tokens per second by type; cache_read is part of input, as agno "
                     "stores it.",
                     [target(f"sum by (token_type) (rate(agno_tokens_total[{rate}]))", "{{token_type}}")],
                     "short", axis="tokens/s"), 8, 8)
    L.add(timeseries("Tokens/s by model", "Tokens per second (all types) by model.",
                     [target(f"sum by (model) (rate(agno_tokens_total[{rate}]))", "{{model}}")],
                     "short", axis="tokens/s"), 8, 8)
    L.add(timeseries("Cost per hour by model", "US dollars per hour at the current rate, by model and "
                     "source (reported by the provider, or estimated from the price table).",
                     [target(f"sum by (model, source) (rate(agno_cost_usd_total[{rate}])) * 3600",
                             "{{model}} ({{source}})")], "currencyUSD", axis="$/h"), 8, 8)
    L.add(table("Token anomalies", "Runs whose stored token numbers are inconsistent (e.g. total != input + "
                "output, cache above input), all time, by kind, provider and model. Empty is good.",
                [target("sum by (kind, provider, model) (agno_token_anomalies_total)")],
                rename={"kind": "Kind", "provider": "Provider", "model": "Model", "Value": "Runs"},
                sort_by="Runs", no_value="none"), 12, 6)
    L.add(timeseries("Token anomalies/s", "Rate of runs with inconsistent token numbers, by kind.",
                     [target(f"sum by (kind) (rate(agno_token_anomalies_total[{rate}]))", "{{kind}}")],
                     "short", axis="runs/s", no_value="0"), 12, 6)

    L.section("Models and tools")
    L.add(timeseries("Model calls/s by model", "Model calls by the model and role that made them (fallback, "
                     "output, parser, memory, ... models included).",
                     [target(f"sum by (model, model_role) (rate(agno_model_calls_total[{rate}]))",
                             "{{model}} ({{model_role}})")],
                     "short", axis="calls/s"), 8, 8)
    L.add(timeseries("Model call duration", "p50/p95 of one model call's duration by model "
                     "(gen_ai_client_operation_duration_seconds; agno stores none for streamed calls).",
                     quantiles("gen_ai_client_operation_duration_seconds_bucket", by="gen_ai_request_model",
                               qs=(0.5, 0.95)), "s"), 8, 8)
    L.add(timeseries("Model time to first token", "p50/p95 of one streamed model call's time to first token "
                     "by model (gen_ai_server_time_to_first_token_seconds).",
                     quantiles("gen_ai_server_time_to_first_token_seconds_bucket", by="gen_ai_request_model",
                               qs=(0.5, 0.95)), "s"), 8, 8)
    L.add(timeseries("Tool calls/s by tool", "Tool executions per second.",
                     [target(f"sum by (tool) (rate(agno_tool_calls_total[{rate}]))", "{{tool}}")],
                     "short", axis="calls/s"), 8, 8)
    L.add(timeseries("Tool errors/s by tool", "Tool executions agno marked as failed.",
                     [target(f"sum by (tool) (rate(agno_tool_call_errors_total[{rate}]))", "{{tool}}")],
                     "short", axis="errors/s", no_value="0"), 8, 8)
    L.add(timeseries("Tool duration p95 by tool", "95th percentile of a tool call's duration, exact as agno "
                     "measured it.",
                     quantiles("gen_ai_execute_tool_duration_seconds_bucket", by="gen_ai_tool_name", qs=(0.95,)),
                     "s"), 8, 8)

    L.section("Sessions")
    L.add(table("Top sessions by tokens", "The sessions with the most tokens (input + output, member runs "
                "included) active in the exporter's window (metrics.top_sessions_window), with their cost: the "
                "sum of their runs' cost as in Cost (reported, or estimated from the price table), and the "
                "estimated part.",
                session_targets(""),
                rename=SESSION_COLUMNS, units=SESSION_UNITS, sort_by="Tokens",
                links={"Name": [{"title": "Drill down", "url": DRILLDOWN_LINK.replace(
                    "${__field.labels.run_type}", "${__data.fields.Type}").replace(
                    "${__field.labels.name}", "${__data.fields.Name}")}]}), 16, 8)
    L.add(timeseries("New sessions/s", "Sessions seen for the first time, by the agent or team that opened "
                     "them.",
                     [target(f"sum by (run_type, name) (rate(agno_sessions_total[{rate}]))",
                             "{{run_type}} {{name}}")], "short", axis="sessions/s"), 8, 8)

    L.section("Exporter health")
    L.add(stat("Exporter up", "1 when the exporter's last poll of agno's database succeeded.",
               "min(agno_exporter_up)", "none", mappings=UP_MAPPINGS,
               thresholds=_thresholds((None, "red"), (1, "green"))), 4, 4)
    L.add(stat("Since last successful poll", "Seconds since the last successful poll (should stay below a "
               "few poll intervals); \"never\" until the first one.",
               "time() - max(agno_exporter_last_success_timestamp_seconds > 0)", "s",
               thresholds=_thresholds((None, "green"), (60, "orange"), (300, "red")), no_value="never"), 4, 4)
    L.add(count("Runs collected", "Runs counted by the running exporter process(es) in the time range.",
                "sum(increase(agno_exporter_runs_collected_total[$__range]))"), 4, 4)
    L.add(count("Poll errors", "Failed polls of agno's database in the time range (any reason; see Poll "
                "errors and skipped rows).", "sum(increase(agno_exporter_poll_errors_total[$__range]))",
                thresholds=RED_ABOVE_ZERO), 4, 4)
    L.add(count("Rows skipped", "Malformed rows skipped in the time range (each logged with its run id, never "
                "retried).", "sum(increase(agno_exporter_rows_skipped_total[$__range]))",
                thresholds=ORANGE_ABOVE_ZERO), 4, 4)
    L.add(stat("Series held", "Series held in the exporter's metric families (bounded by the label caps).",
               "sum(agno_exporter_series)", "short", decimals=0), 4, 4)
    L.add(count("Trace backlog", "Runs waiting for span delivery (last pass, capped at the batch size); 0 "
                "with traces off.", "sum(agno_exporter_trace_backlog_runs)",
                thresholds=_thresholds((None, "green"), (100, "orange"))), 6, 4)
    L.add(count("Spans failed", "Spans in export attempts that failed in the time range (retried later).",
                "sum(increase(agno_exporter_spans_failed_total[$__range]))", thresholds=ORANGE_ABOVE_ZERO), 6, 4)
    L.add(count("Spans dropped", "Spans given up on in the time range (cannot be built, or rejected by the "
                "backend again and again).", "sum(increase(agno_exporter_spans_dropped_total[$__range]))",
                thresholds=RED_ABOVE_ZERO), 6, 4)
    L.add(count("Re-read window clamped", "Polls in the time range where an open transaction was older than "
                "collector.max_lookback, so runs it commits later may be missed.",
                "sum(increase(agno_exporter_lookback_clamped_total[$__range]))", thresholds=RED_ABOVE_ZERO), 6, 4)
    L.add(timeseries("Export lag", "Seconds from a run's last update in agno to its export (p50/p95).",
                     quantiles("agno_exporter_lag_seconds_bucket", qs=(0.5, 0.95), exemplar=False), "s"), 6, 8)
    L.add(timeseries("Poll duration", "Duration of one poll of agno's database (p50/p95).",
                     quantiles("agno_exporter_poll_duration_seconds_bucket", qs=(0.5, 0.95), exemplar=False),
                     "s"), 6, 8)
    L.add(timeseries("Poll errors and skipped rows", "Failed polls by reason, and malformed rows skipped by "
                     "reason (each logged with its run id).",
                     [target(f"sum by (reason) (rate(agno_exporter_poll_errors_total[{rate}]))",
                             "poll error: {{reason}}"),
                      target(f"sum by (reason) (rate(agno_exporter_rows_skipped_total[{rate}]))",
                             "skipped: {{reason}}")], "short", axis="per second"), 6, 8)
    L.add(timeseries("Spans", "Spans per second accepted by the trace backend, in failed export attempts "
                     "(retried) and dropped.",
                     [target(f"sum(rate(agno_exporter_spans_exported_total[{rate}]))", "exported"),
                      target(f"sum(rate(agno_exporter_spans_failed_total[{rate}]))", "failed"),
                      target(f"sum(rate(agno_exporter_spans_dropped_total[{rate}]))", "dropped")],
                     "short", axis="spans/s"), 6, 8)

    return dashboard(OVERVIEW_UID, "agno — overview",
                     "Fleet view of agno agents, teams and workflows: runs, tokens, cost, latency, tools, "
                     "sessions, and the exporter's own health.", L.numbered(), [datasource_variable()])


# ---------------------------------------------------------------------------------------------
# the drill-down


def drilldown() -> Json:
    L = Layout()
    rate = "$__rate_interval"
    run = 'run_type=~"$run_type", name=~"$name"'
    runm = run + ', model=~"$model"'
    call = '{gen_ai_agent_name=~"$name", gen_ai_request_model=~"$model"}'
    tool = '{name=~"$name"}'

    L.section("$run_type $name (selected time range)")
    L.add(count("Runs", "Finished runs in the time range.", f"sum(increase(agno_runs_total{{{run}}}[$__range]))"),
          4, 4)
    L.add(stat("Error ratio", "Share of finished runs that ended in status ERROR.",
               f'(sum(increase(agno_runs_total{{{run}, status="ERROR"}}[$__range])) or vector(0))'
               f" / sum(increase(agno_runs_total{{{run}}}[$__range]))", "percentunit",
               thresholds=_thresholds((None, "green"), (0.01, "orange"), (0.1, "red")), no_value="no runs"), 4, 4)
    L.add(count("Tokens", "Tokens of all types for the selected model(s) in the time range.",
                f"sum(increase(agno_tokens_total{{{runm}}}[$__range]))"), 4, 4)
    L.add(stat("Cost", "US dollars for the selected model(s) in the time range (reported or estimated).",
               f"sum(increase(agno_cost_usd_total{{{runm}}}[$__range]))", "currencyUSD", no_value="none priced"),
          4, 4)
    L.add(stat("TTFT p95", "95th percentile of the streamed runs' time to first token over the time range.",
               f"histogram_quantile(0.95, sum by (le) (rate(agno_run_time_to_first_token_seconds_bucket{{{run}, "
               'stream="true"}[$__range])))', "s", no_value="no streamed runs"), 4, 4)
    L.add(stat("Run duration p95", "95th percentile of run duration over the time range.",
               f"histogram_quantile(0.95, sum by (le) (rate(agno_run_duration_seconds_bucket{{{run}}}[$__range])))",
               "s", no_value="no runs"), 4, 4)
    L.add(count("Errored runs", "Runs that ended in status ERROR in the time range.",
                f'sum(increase(agno_runs_total{{{run}, status="ERROR"}}[$__range]))', thresholds=RED_ABOVE_ZERO),
          6, 4)
    L.add(count("Tool calls", "Tool executions in the time range.",
                f"sum(increase(agno_tool_calls_total{tool}[$__range]))"), 6, 4)
    L.add(count("Tool errors", "Tool executions agno marked as failed in the time range.",
                f"sum(increase(agno_tool_call_errors_total{tool}[$__range]))", thresholds=RED_ABOVE_ZERO), 6, 4)
    L.add(count("New sessions", "Sessions this agent or team opened in the time range.",
                f"sum(increase(agno_sessions_total{{{run}}}[$__range]))"), 6, 4)

    L.section("Latency (exemplars link to the traces)")
    L.add(timeseries("Time to first token", "p50/p95/p99 of the streamed runs' time to first token. "
                     "Exemplars (dots) open the run's trace.",
                     quantiles("agno_run_time_to_first_token_seconds_bucket", f'{{{run}, stream="true"}}'), "s"),
          12, 9)
    L.add(timeseries("Run duration", "p50/p95/p99 of run duration, all statuses. Exemplars open the run's "
                     "trace.", quantiles("agno_run_duration_seconds_bucket", f"{{{run}}}"), "s"), 12, 9)
    L.add(timeseries("Model call duration", "p50/p95/p99 of one model call's duration (non-streamed calls), "
                     "by model.", quantiles("gen_ai_client_operation_duration_seconds_bucket", call,
                                            by="gen_ai_request_model"), "s"), 12, 8)
    L.add(timeseries("Model time to first token", "p50/p95/p99 of one streamed model call's time to first "
                     "token, by model.",
                     quantiles("gen_ai_server_time_to_first_token_seconds_bucket", call, by="gen_ai_request_model"),
                     "s"), 12, 8)

    L.section("Runs and tokens")
    L.add(timeseries("Runs/s by status", "Finished runs per second by final status.",
                     [target(f"sum by (status) (rate(agno_runs_total{{{run}}}[{rate}]))", "{{status}}")],
                     "short", axis="runs/s", stack=True), 8, 8)
    L.add(timeseries("Tokens/s by type", "Tokens per second by type, for the selected model(s).",
                     [target(f"sum by (token_type) (rate(agno_tokens_total{{{runm}}}[{rate}]))", "{{token_type}}")],
                     "short", axis="tokens/s"), 8, 8)
    L.add(timeseries("Tokens per model call", "p50/p95 of input and output tokens of one model call.",
                     quantiles("gen_ai_client_token_usage_bucket", call, by="gen_ai_token_type", qs=(0.5, 0.95),
                               exemplar=False), "short", axis="tokens"), 8, 8)
    L.add(timeseries("Model calls/s by model", "Model calls by the model and role that made them.",
                     [target(f"sum by (model, model_role) (rate(agno_model_calls_total{{{runm}}}[{rate}]))",
                             "{{model}} ({{model_role}})")],
                     "short", axis="calls/s"), 8, 8)
    L.add(timeseries("Cost per hour", "US dollars per hour at the current rate, by model and source.",
                     [target(f"sum by (model, source) (rate(agno_cost_usd_total{{{runm}}}[{rate}])) * 3600",
                             "{{model}} ({{source}})")], "currencyUSD", axis="$/h"), 8, 8)
    L.add(timeseries("New sessions/s", "Sessions opened by this agent or team.",
                     [target(f"sum by (name) (rate(agno_sessions_total{{{run}}}[{rate}]))", "{{name}}")],
                     "short", axis="sessions/s"), 8, 8)

    L.section("Tools")
    L.add(timeseries("Tool calls/s by tool", "Tool executions per second (a team's own tools are its "
                     "delegations; members' tools count under the member).",
                     [target(f"sum by (tool) (rate(agno_tool_calls_total{tool}[{rate}]))", "{{tool}}")],
                     "short", axis="calls/s"), 8, 8)
    L.add(timeseries("Tool errors/s by tool", "Tool executions agno marked as failed.",
                     [target(f"sum by (tool) (rate(agno_tool_call_errors_total{tool}[{rate}]))", "{{tool}}")],
                     "short", axis="errors/s", no_value="0"), 8, 8)
    L.add(timeseries("Tool duration", "p50/p95 of a tool call's duration by tool, exact as agno measured it. "
                     "Exemplars open the trace.",
                     quantiles("gen_ai_execute_tool_duration_seconds_bucket", '{gen_ai_agent_name=~"$name"}',
                               by="gen_ai_tool_name", qs=(0.5, 0.95)), "s"), 8, 8)

    L.section("Sessions")
    L.add(table("Top sessions", "This agent's or team's sessions among the top sessions by tokens "
                "(member runs included), with their cost (reported or estimated, as in Cost) and its estimated "
                "part.", session_targets(run), rename=SESSION_COLUMNS, units=SESSION_UNITS, sort_by="Tokens"),
          24, 8)

    variables = [
        datasource_variable(),
        label_variable("run_type", "Run type", "label_values(agno_runs_total, run_type)", include_all=True),
        label_variable("name", "Agent / team", 'label_values(agno_runs_total{run_type=~"$run_type"}, name)',
                       include_all=False),
        label_variable("model", "Model",
                       'label_values(agno_tokens_total{run_type=~"$run_type", name=~"$name"}, model)',
                       include_all=True),
    ]
    return dashboard(DRILLDOWN_UID, "agno — drill-down",
                     "One agent or team (and model): latency percentiles with exemplars linking to the traces, "
                     "tokens, cost, tools and sessions.", L.numbered(), variables)


# ---------------------------------------------------------------------------------------------


DASHBOARDS = {"agno-overview.json": overview, "agno-drilldown.json": drilldown}


def render() -> dict[str, str]:
    """File name -> JSON text, exactly as committed."""
    return {name: json.dumps(build(), indent=2, ensure_ascii=False) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON differs")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = OUT_DIR / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run python grafana/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
