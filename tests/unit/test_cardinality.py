"""Unbounded label values (agent, model, tool names) cannot blow up the series count.

100,000 synthetic runs, each with its own agent, model and tool name, built with the real record
builder from a real agno row, go through the real observation and staging path; values past
``label_value_limit`` fold into ``__other__``, the folding is counted, totals stay exact, and a
store reloaded from the persisted rows (a restart) folds the same way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from exporter.records.parse import build_run_record
from exporter.records.runs import RunRecord
from exporter.sinks.prometheus import families as prom
from exporter.sinks.prometheus.series import OTHER, Observation, SeriesRow, SeriesStore
from tests.helpers.reference import runs_v3
from tests.helpers.scrape import Samples

LIMIT = 50
N = 100_000
BATCH = 1000  # observations are staged and applied per page, as the collector does


def base_row() -> dict[str, Any]:
    for row in runs_v3():
        rd = row["run_data"]
        if row["run_type"] == "agent" and row["status"] == "COMPLETED" and rd.get("tools"):
            return row
    raise AssertionError("no completed agent run with tools in the reference rows")


def records(n: int, start: int = 0, *, vary_model: bool = True, vary_tool: bool = True, messages: bool = True
            ) -> list[RunRecord]:
    row = base_row()
    rd0 = row["run_data"]
    out = []
    for i in range(start, start + n):
        rd = dict(rd0)
        rd["run_id"] = f"run-{i}"
        rd["agent_name"] = f"agent-{i}"
        inp, outp = 1 + i % 997, 1 + i % 13
        counts = {"input_tokens": inp, "output_tokens": outp, "total_tokens": inp + outp}
        model = {"id": f"model-{i}"} if vary_model else {}
        rd["metrics"] = {**rd0["metrics"], **counts,
                         "details": {"model": [{**d, **counts, **model} for d in rd0["metrics"]["details"]["model"]]}}
        if vary_model:
            rd["model"] = f"model-{i}"
        if not messages:  # no per-model-call observations: a third of the work per run
            rd.pop("messages", None)
        else:  # the model calls' tokens add up to the details, as agno stores them
            calls = [m for m in rd0["messages"] if m.get("role") == "assistant"]
            rd["messages"] = [
                {**m, "metrics": {**m["metrics"], "input_tokens": inp if m is calls[0] else 0,
                                  "output_tokens": outp if m is calls[0] else 0}} if m in calls else m
                for m in rd0["messages"]]
        if vary_tool:
            rd["tools"] = [{**t, "tool_name": f"tool-{i}"} for t in rd0["tools"]]
        out.append(build_run_record({**row, "run_id": f"run-{i}"}, rd))
    return out


def all_observations(recs: Sequence[RunRecord]) -> list[Observation]:
    return [o for r in recs for o in prom.observations(r, "0" * 32)]


def feed(store: SeriesStore, obs: Sequence[Observation], persisted: dict[tuple[str, tuple[str, ...]], SeriesRow]
         ) -> None:
    for i in range(0, len(obs), BATCH):
        staged = store.stage(obs[i:i + BATCH], now=1.0)
        for row in staged.rows():  # what the state store upserts in the same transaction
            persisted[(row.family, row.labels)] = row
        staged.apply()


def expected_folding(obs: Sequence[Observation], limit: int, seen: dict[tuple[str, int], set[str]] | None = None
                     ) -> tuple[dict[tuple[str, str], int], list[tuple[str, ...]]]:
    """An independent oracle: per family and unbounded label, the first `limit` distinct values stay."""
    seen = seen if seen is not None else defaultdict(set)
    folded: dict[tuple[str, str], int] = defaultdict(int)
    labels_out = []
    fams = {f.name: f for f in prom.FAMILIES}
    for o in obs:
        fam = fams[o.family]
        out = list(o.labels)
        for i, v in enumerate(o.labels):
            if fam.labels[i] in prom.BOUNDED_LABELS:
                continue
            s = seen[(o.family, i)]
            if v in s:
                continue
            if len(s) < limit:
                s.add(v)
            else:
                out[i] = OTHER
                folded[(o.family, fam.labels[i])] += 1
        labels_out.append(tuple(out))
    return dict(folded), labels_out


def folded_counter(store: SeriesStore) -> dict[tuple[str, str], float]:
    reg = CollectorRegistry()
    reg.register(prom.StoreStats(store))
    from prometheus_client import generate_latest

    s = Samples(generate_latest(reg).decode())
    return {k: v for k, v in s.group("agno_exporter_label_values_folded_total", "metric", "label").items() if v}


def series_snapshot(store: SeriesStore) -> dict[str, dict[tuple[str, ...], tuple[float, int, tuple[int, ...]]]]:
    return {f: {labels: (round(s.total, 9), s.count, tuple(s.buckets)) for labels, s in store.series(f).items()}
            for f in store.families}


def assert_bounded(store: SeriesStore, limit: int) -> None:
    for fam in prom.FAMILIES:
        data = store.series(fam.name)
        for i, label in enumerate(fam.labels):
            values = {labels[i] for labels in data}
            if label in prom.BOUNDED_LABELS:
                continue
            assert len(values) <= limit + 1, (fam.name, label, len(values))


VARYING = {"name", "model", "tool", "gen_ai_agent_name", "gen_ai_request_model", "gen_ai_tool_name"}


def test_100k_names_fold_into_other_with_exact_totals() -> None:
    """100,000 runs, each with its own agent, model and tool name, streamed page by page.

    One page in ten keeps the runs' messages (per-model-call gen_ai_* observations); the rest drop
    them to keep the test fast. Either way every label carrying a run's own name is capped.
    """
    store = prom.new_store(LIMIT)
    persisted: dict[tuple[str, tuple[str, ...]], SeriesRow] = {}
    want_folded: dict[tuple[str, str], int] = defaultdict(int)
    fams = {f.name: f for f in prom.FAMILIES}
    tokens = tool_calls = model_calls = 0
    for start in range(0, N, BATCH):
        recs = records(BATCH, start, messages=start % (10 * BATCH) == 0)
        obs = all_observations(recs)
        feed(store, obs, persisted)
        tokens += sum(t.count for r in recs for t in r.tokens)
        assert sum(r.totals["input"] + r.totals["output"] for r in recs) == sum(t.count for r in recs for t in r.tokens)
        tool_calls += sum(len(r.tool_calls) for r in recs)
        model_calls += sum(len(r.model_calls) for r in recs)
        # Every label that carries the run's own name/model/tool is folded once the run is past LIMIT.
        first = max(0, LIMIT - start) * len(obs) // BATCH  # the records of a page yield the same observations
        for o in obs[first:]:
            for label in fams[o.family].labels:
                if label in VARYING:
                    want_folded[(o.family, label)] += 1

    assert_bounded(store, LIMIT)
    # Everything past the first LIMIT names is folded; the first LIMIT stay themselves.
    names = {labels[1] for labels in store.series("agno_runs")}
    assert names == {f"agent-{i}" for i in range(LIMIT)} | {OTHER}
    assert store.value("agno_runs", ("agent", OTHER, "COMPLETED")).total == N - LIMIT  # type: ignore[union-attr]
    tools = {labels[1] for labels in store.series("agno_tool_calls")}
    assert tools == {f"tool-{i}" for i in range(LIMIT)} | {OTHER}
    models = {labels[2] for labels in store.series("agno_tokens")}
    assert models == {f"model-{i}" for i in range(LIMIT)} | {OTHER}
    # The whole store holds a few hundred series, not millions.
    assert store.series_count() < 40 * (LIMIT + 1), store.series_count()

    # Folding is counted, once per folded observation and label.
    assert folded_counter(store) == {k: float(v) for k, v in want_folded.items()}
    assert want_folded[("agno_runs", "name")] == N - LIMIT

    # Totals are exact: folding moves values between series, never loses or adds any.
    assert sum(s.total for s in store.series("agno_runs").values()) == N
    assert sum(s.total for s in store.series("agno_tokens").values()) == tokens
    assert sum(s.total for s in store.series("agno_tool_calls").values()) == tool_calls
    assert sum(s.total for s in store.series("agno_model_calls").values()) == model_calls
    hist = store.series("agno_run_duration_seconds")
    assert sum(s.count for s in hist.values()) == N
    assert sum(sum(s.buckets) for s in hist.values()) == N

    # A restart: a new store loaded from the persisted rows holds the same series ...
    reloaded = prom.new_store(LIMIT)
    assert reloaded.load(persisted.values()) == len(persisted)
    assert series_snapshot(reloaded) == series_snapshot(store)
    # ... and folds the same way from then on: known names stay, new names fold, __other__ keeps counting.
    more_obs = all_observations(records(200, start=N) + records(1, start=3) + records(1, start=LIMIT + 7))
    feed(store, more_obs, persisted)
    feed(reloaded, more_obs, {})
    assert series_snapshot(reloaded) == series_snapshot(store)
    assert store.value("agno_runs", ("agent", "agent-3", "COMPLETED")).total == 2  # type: ignore[union-attr]
    assert store.value("agno_runs", ("agent", OTHER, "COMPLETED")).total == N - LIMIT + 201  # type: ignore[union-attr]
    assert_bounded(reloaded, LIMIT)
    # The reloaded process counts only what it folded itself (a counter reset, as after any restart).
    assert folded_counter(reloaded)[("agno_runs", "name")] == 201


def test_per_series_values_equal_an_independent_oracle() -> None:
    """Which series each observation lands in, checked against a plain re-implementation of the cap."""
    recs = records(20 * LIMIT) + records(LIMIT, start=0)  # later runs of already admitted names too
    obs = all_observations(recs)
    store = prom.new_store(LIMIT)
    feed(store, obs, {})
    want_folded, want_labels = expected_folding(obs, LIMIT)
    assert folded_counter(store) == {k: float(v) for k, v in want_folded.items()}
    want: dict[tuple[str, tuple[str, ...]], float] = defaultdict(float)
    for o, labels in zip(obs, want_labels, strict=True):
        want[(o.family, labels)] += o.value
    got = {(f, labels): s.total for f in store.families for labels, s in store.series(f).items()}
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert abs(got[k] - v) <= 1e-6 * max(1.0, abs(v)), k


def iter_names_only(n: int) -> Iterator[RunRecord]:
    yield from records(n, vary_model=False, vary_tool=False)


def test_names_only_leave_other_labels_alone() -> None:
    recs = list(iter_names_only(5 * LIMIT))
    store = prom.new_store(LIMIT)
    feed(store, all_observations(recs), {})
    assert {labels[2] for labels in store.series("agno_tokens")} == {recs[0].tokens[0].model}
    assert folded_counter(store)[("agno_runs", "name")] == 4 * LIMIT
    assert ("agno_tokens", "model") not in folded_counter(store)
    assert sum(s.total for s in store.series("agno_tokens").values()) == sum(t.count for r in recs for t in r.tokens)


def test_failed_commit_does_not_count_folding_twice() -> None:
    """The collector stages a page, the state commit fails (database down), the page is staged again.

    Memory must not run ahead of the state: the folded counter counts each folded observation once,
    and a restart from the persisted rows folds the same way as the process that retried.
    """
    recs = records(3 * LIMIT, vary_model=False, vary_tool=False)
    obs = all_observations(recs)
    store = prom.new_store(LIMIT)
    persisted: dict[tuple[str, tuple[str, ...]], SeriesRow] = {}
    feed(store, all_observations(recs[: LIMIT // 2]), persisted)
    page = all_observations(recs[LIMIT // 2:])
    store.stage(page, now=1.0)  # commit failed: never applied, never persisted
    feed(store, page, persisted)  # the retry
    want_folded, _ = expected_folding(obs, LIMIT)
    assert folded_counter(store) == {k: float(v) for k, v in want_folded.items()}
    reloaded = prom.new_store(LIMIT)
    reloaded.load(persisted.values())
    assert series_snapshot(reloaded) == series_snapshot(store)
