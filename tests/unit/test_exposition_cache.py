"""The cached rendering of /metrics is byte for byte what prometheus_client writes, before and after changes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from exporter.sinks.prometheus import families as prom
from exporter.sinks.prometheus.exposition import chunks, render, render_parts
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


def test_a_scrape_hands_out_the_cached_lines_not_copies() -> None:
    """The body is written from the store's cached lines themselves (chunked by the web handler): a scrape
    holds no second copy of a body of 10^4 series (the collect's peak RSS is measured after scrapes)."""
    store = prom.new_store(300)
    registry = CollectorRegistry()
    registry.register(store)
    store.stage([o for i in range(40) for o in _observations(i)], now=1000.0).apply()
    for accept in ACCEPTS:
        encoder, _ = choose_encoder(accept)
        first, again = render_parts(registry, encoder), render_parts(registry, encoder)
        assert b"".join(first) == encoder(registry), accept
        # every series' lines are the very object cached at the first scrape: 4 families, 7 + 7 + 7 + 3 series
        assert sum(a is b for a, b in zip(first, again, strict=True)) >= 24, accept
        pieces = list(chunks(first, size=300))
        assert b"".join(pieces) == b"".join(first)
        assert all(len(p) >= 300 for p in pieces[:-1]) and len(pieces) > 2
