"""The cached rendering of /metrics is byte for byte what prometheus_client writes, before and after changes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from exporter.sinks.prometheus import families as prom
from exporter.sinks.prometheus.exposition import render
from exporter.sinks.prometheus.series import Observation

ACCEPTS = ("", "text/plain; version=0.0.4", "text/plain; version=1.0.0; escaping=underscores",
           "application/openmetrics-text; version=1.0.0", "application/openmetrics-text")


def _observations(i: int) -> list[Observation]:
    return [
        Observation("agno_runs", ("agent", f"Agent{i % 7}", "COMPLETED"), 1),
        Observation("agno_tokens", ("agent", f"Agent{i % 7}", "gpt-4o", "openai", "model", "input"), 100 + i),
        Observation("agno_run_duration_seconds", ("agent", f"Agent{i % 7}", "COMPLETED"), 0.5 + i / 10,
                    f"{i:032x}"),
        Observation("gen_ai_client_token_usage", ("chat", "openai", "gpt-4o", "input", f'A"g\\ent{i % 3}'), 7 * i),
    ]


def test_cached_render_equals_prometheus_client() -> None:
    store = prom.new_store(300)
    registry = CollectorRegistry()
    registry.register(store)
    registry.register(prom.StoreStats(store))
    for step in range(3):
        store.stage([o for i in range(step * 10, step * 10 + 10) for o in _observations(i)], now=1000.0).apply()
        for accept in ACCEPTS:
            encoder, _ = choose_encoder(accept)
            expected = encoder(registry)
            assert render(registry, encoder) == expected, accept
            assert render(registry, encoder) == expected, accept  # from the cache
    # The families still read as ordinary metrics (registry.get_sample_value).
    assert registry.get_sample_value("agno_runs_total", {"run_type": "agent", "name": "Agent0",
                                                         "status": "COMPLETED"}) == 5
