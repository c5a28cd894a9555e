"""Cost: reported when agno stored it, otherwise the price table's arithmetic; unknown models counted."""

from __future__ import annotations

import copy

import pytest

from exporter.records.parse import build_run_record
from exporter.records.runs import TokenUsage
from exporter.sinks.prometheus import families as prom
from exporter.sinks.prometheus.prices import DEFAULT_PRICES, PRICES_AS_OF, Price, PriceTable
from tests.helpers.reference import runs_v3


def record(cost: float | None = None, model: str = "gpt-4o-mini", cache_read: int = 0):  # type: ignore[no-untyped-def]
    row = copy.deepcopy(next(r for r in runs_v3() if r["run_id"].startswith("485a6b32")))
    entry = row["run_data"]["metrics"]["details"]["model"][0]
    entry["id"] = model
    row["run_data"]["model"] = model
    if cost is not None:
        entry["cost"] = cost
    if cache_read:
        entry["cache_read_tokens"] = cache_read
        row["run_data"]["metrics"]["cache_read_tokens"] = cache_read
    return build_run_record(row, row["run_data"])


def costs(rec, prices: PriceTable) -> dict[tuple[str, ...], float]:  # type: ignore[no-untyped-def]
    out: dict[tuple[str, ...], float] = {}
    for o in prom.observations(rec, None, prices):
        if o.family in ("agno_cost_usd", "agno_cost_unpriced_runs"):
            out[(o.family, *o.labels)] = out.get((o.family, *o.labels), 0) + o.value
    return out


def test_estimate_is_the_price_tables_arithmetic() -> None:
    # 300 input, 40 output tokens of gpt-4o-mini at $0.15 / $0.60 per million
    got = costs(record(), PriceTable())
    key = ("agno_cost_usd", "agent", "BackgroundMetricsAgent", "gpt-4o-mini", "openai", "estimated")
    assert got == {key: pytest.approx((300 * 0.15 + 40 * 0.60) / 1e6)}


def test_cached_tokens_at_the_cached_price() -> None:
    got = costs(record(cache_read=100), PriceTable())
    key = ("agno_cost_usd", "agent", "BackgroundMetricsAgent", "gpt-4o-mini", "openai", "estimated")
    assert got[key] == pytest.approx((200 * 0.15 + 100 * 0.075 + 40 * 0.60) / 1e6)


def test_reported_cost_wins() -> None:
    got = costs(record(cost=0.0042), PriceTable())
    assert got == {("agno_cost_usd", "agent", "BackgroundMetricsAgent", "gpt-4o-mini", "openai", "reported"): 0.0042}


def test_unknown_model_is_counted_not_guessed() -> None:
    got = costs(record(model="mystery-model-9"), PriceTable())
    assert got == {("agno_cost_unpriced_runs", "mystery-model-9", "openai"): 1}


def test_a_price_is_an_exact_id_or_a_dated_snapshot_of_it_never_a_prefix() -> None:
    table = PriceTable({"mystery-model": Price(1.0, 2.0)})
    assert table.lookup("mystery-model") == Price(1.0, 2.0)
    assert table.lookup("mystery-model-9") is None  # another model, however close
    p = table.prices
    assert table.lookup("gemini-2.5-flash-lite") == p["gemini-2.5-flash-lite"] != p["gemini-2.5-flash"]
    assert table.lookup("claude-opus-4-5") == p["claude-opus-4-5"] != p["claude-opus-4"]  # $5 vs $15
    # dated snapshots: OpenAI, Anthropic (also as Vertex AI names it), Google's stable versions
    assert table.lookup("gpt-4.1-mini-2025-04-14") == p["gpt-4.1-mini"]
    assert table.lookup("claude-sonnet-4-5-20250929") == p["claude-sonnet-4-5"]
    assert table.lookup("claude-sonnet-4-20250514") == p["claude-sonnet-4"]
    assert table.lookup("claude-sonnet-4-5@20250929") == p["claude-sonnet-4-5"]
    assert table.lookup("gemini-2.0-flash-001") == p["gemini-2.0-flash"]
    assert table.lookup("openai/gpt-4o") == p["gpt-4o"]
    # previews, fine-tunes and other variants are other models
    for other in ("gemini-2.5-flash-preview-05-20", "gpt-4o-mini-tts", "gpt-4o-audio-preview", "gpt-5.4-pro",
                  "ft:gpt-4o-mini:acme::abc123", "claude-sonnet-4-5-v2"):
        assert table.lookup(other) is None, other
    usage = [TokenUsage("model", "mystery-model", "x", "input", 1_000_000)]
    assert table.estimate(usage) == pytest.approx(1.0)


def test_every_shipped_price_says_where_and_when_it_was_read() -> None:
    for model, price in DEFAULT_PRICES.items():
        assert price.source.startswith("https://") and price.as_of <= PRICES_AS_OF, model
        assert price.input > 0 and price.output > 0, model
