"""Estimated cost from a price table, for providers that do not report cost.

agno stores a cost only when the provider reports one (e.g. OpenRouter); for everyone else the
exporter estimates it from list prices per million tokens. The shipped table is dated: prices
change, so override or extend it in config (``metrics.prices``). A model that is in no table is
counted (``agno_cost_unpriced_runs_total``), never guessed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .records import TokenUsage

PRICES_AS_OF = "2025-06-01"


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens."""

    input: float
    output: float
    cached_input: float | None = None  # None: cached tokens are billed as input
    cache_write: float | None = None  # None: billed as input


# List prices as published by the providers on PRICES_AS_OF (standard tier, no batch discount).
DEFAULT_PRICES: Mapping[str, Price] = {
    "gpt-4o-mini": Price(0.15, 0.60, 0.075),
    "gpt-4o": Price(2.50, 10.00, 1.25),
    "gpt-4.1": Price(2.00, 8.00, 0.50),
    "gpt-4.1-mini": Price(0.40, 1.60, 0.10),
    "gpt-4.1-nano": Price(0.10, 0.40, 0.025),
    "o3": Price(2.00, 8.00, 0.50),
    "o3-mini": Price(1.10, 4.40, 0.55),
    "o4-mini": Price(1.10, 4.40, 0.275),
    "claude-3-5-haiku": Price(0.80, 4.00, 0.08, 1.00),
    "claude-3-5-sonnet": Price(3.00, 15.00, 0.30, 3.75),
    "claude-3-7-sonnet": Price(3.00, 15.00, 0.30, 3.75),
    "claude-sonnet-4": Price(3.00, 15.00, 0.30, 3.75),
    "claude-opus-4": Price(15.00, 75.00, 1.50, 18.75),
    "gemini-2.0-flash": Price(0.10, 0.40, 0.025),
    "gemini-2.5-flash": Price(0.30, 2.50, 0.075),
    "gemini-2.5-pro": Price(1.25, 10.00, 0.31),
}


class PriceTable:
    def __init__(self, overrides: Mapping[str, Price] | None = None, defaults: bool = True) -> None:
        self.prices = {**(DEFAULT_PRICES if defaults else {}), **(overrides or {})}
        # longest key first: "gpt-4o-mini-2024-07-18" is gpt-4o-mini, not gpt-4o
        self._keys = sorted(self.prices, key=len, reverse=True)

        # model name -> its price: a prefix search per run was a few percent of counting a table
        self._found: dict[str, Price | None] = {}

    def lookup(self, model: str) -> Price | None:
        if model in self._found:
            return self._found[model]
        price = self._search(model)
        if len(self._found) < 10_000:  # model names are few; never grow without bound
            self._found[model] = price
        return price

    def _search(self, model: str) -> Price | None:
        m = model.lower().split("/")[-1]  # "openai/gpt-4o" as routers name it
        if m in self.prices:
            return self.prices[m]
        for key in self._keys:
            if m.startswith(key + "-") or m.startswith(key + "@") or m.startswith(key + ":"):
                return self.prices[key]
        return None

    def estimate(self, usages: list[TokenUsage]) -> float | None:
        """Cost of one model's usage in a run, or None when the model has no price."""
        if not usages:
            return 0.0
        price = self.lookup(usages[0].model)
        if price is None:
            return None
        n: dict[str, int] = {}
        for u in usages:  # one model may serve several roles (model, output_model, ...)
            n[u.token_type] = n.get(u.token_type, 0) + u.count
        cached = n.get("cache_read", 0)
        written = n.get("cache_write", 0)
        # agno's input_tokens include the cached ones (OpenAI semantics): bill those at the cached price.
        fresh = max(0, n.get("input", 0) - cached)
        cached_price = price.cached_input if price.cached_input is not None else price.input
        write_price = price.cache_write if price.cache_write is not None else price.input
        usd = fresh * price.input + cached * cached_price + written * write_price + n.get("output", 0) * price.output
        return usd / 1_000_000
