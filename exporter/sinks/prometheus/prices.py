"""Estimated cost from a price table, for providers that do not report cost.

agno stores a cost only when the provider reports one (e.g. OpenRouter); for everyone else the
exporter estimates it from list prices per million tokens. The shipped table is dated: prices
change, so override or extend it in config (``metrics.prices``). A model is priced only under its
own id or a dated snapshot of it (``gpt-4.1-mini-2025-04-14`` is ``gpt-4.1-mini``,
``claude-sonnet-4-5-20250929`` is ``claude-sonnet-4-5``); any other id, however close
(``gemini-2.5-flash-lite`` is not ``gemini-2.5-flash``), is counted in
``agno_cost_unpriced_runs_total``, never guessed.

The tokens are read with their provider's meaning (:mod:`exporter.records.usage`): fresh input, cache
reads and cache writes, and everything billed at the output rate (Gemini's thinking is stored
beside the output but billed as output).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from exporter.records.runs import TokenUsage
from exporter.records.usage import billable

# The newest "as of" date in DEFAULT_PRICES (each entry carries its own).
PRICES_AS_OF = "2026-11-05"

_OPENAI = "https://developers.openai.com/api/docs/pricing"
_ANTHROPIC = "https://platform.claude.com/docs/en/about-claude/pricing"
_GOOGLE = "https://ai.google.dev/gemini-api/docs/pricing"


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens, with where and when it was read."""

    input: float
    output: float
    cached_input: float | None = None  # None: cached tokens are billed as input
    cache_write: float | None = None  # None: billed as input
    source: str = ""
    as_of: str = ""


def _p(source: str, as_of: str, input: float, output: float, cached: float | None = None,
       write: float | None = None) -> Price:
    return Price(input, output, cached, write, source, as_of)


# List prices of the standard tier (no batch or flex discount, no priority surcharge) for prompts
# below each model's long-context threshold, where a model has one; Anthropic's cache writes at the
# 5-minute rate (agno stores no TTL split). Add a model or correct one with `metrics.prices`.
DEFAULT_PRICES: Mapping[str, Price] = {
    # OpenAI: input, output, cached input
    "gpt-5.5": _p(_OPENAI, "2026-11-05", 5.00, 30.00, 0.50),
    "gpt-5.4": _p(_OPENAI, "2026-11-05", 2.50, 15.00, 0.25),
    "gpt-5.4-mini": _p(_OPENAI, "2026-11-05", 0.75, 4.50, 0.075),
    "gpt-5.4-nano": _p(_OPENAI, "2026-11-05", 0.20, 1.25, 0.02),
    "gpt-5.2": _p(_OPENAI, "2026-01-15", 1.75, 14.00, 0.175),
    "gpt-5.1": _p(_OPENAI, "2025-11-15", 1.25, 10.00, 0.125),
    "gpt-5": _p(_OPENAI, "2025-08-07", 1.25, 10.00, 0.125),
    "gpt-5-mini": _p(_OPENAI, "2025-08-07", 0.25, 2.00, 0.025),
    "gpt-5-nano": _p(_OPENAI, "2025-08-07", 0.05, 0.40, 0.005),
    "gpt-4.1": _p(_OPENAI, "2025-06-01", 2.00, 8.00, 0.50),
    "gpt-4.1-mini": _p(_OPENAI, "2025-06-01", 0.40, 1.60, 0.10),
    "gpt-4.1-nano": _p(_OPENAI, "2025-06-01", 0.10, 0.40, 0.025),
    "gpt-4o": _p(_OPENAI, "2025-06-01", 2.50, 10.00, 1.25),
    "gpt-4o-mini": _p(_OPENAI, "2025-06-01", 0.15, 0.60, 0.075),
    "o3": _p(_OPENAI, "2025-06-10", 2.00, 8.00, 0.50),
    "o3-mini": _p(_OPENAI, "2025-06-01", 1.10, 4.40, 0.55),
    "o4-mini": _p(_OPENAI, "2025-06-01", 1.10, 4.40, 0.275),
    # Anthropic: base input, output, cache hits, 5-minute cache writes
    "claude-opus-5-5": _p(_ANTHROPIC, "2026-10-24", 4.00, 20.00, 0.20, 5.00),
    "claude-opus-5": _p(_ANTHROPIC, "2026-10-24", 5.00, 25.00, 0.50, 6.25),
    "claude-opus-4-8": _p(_ANTHROPIC, "2026-10-24", 5.00, 25.00, 0.50, 6.25),
    "claude-opus-4-7": _p(_ANTHROPIC, "2026-10-24", 5.00, 25.00, 0.50, 6.25),
    "claude-opus-4-6": _p(_ANTHROPIC, "2026-10-24", 5.00, 25.00, 0.50, 6.25),
    "claude-opus-4-5": _p(_ANTHROPIC, "2026-10-24", 5.00, 25.00, 0.50, 6.25),
    "claude-opus-4-1": _p(_ANTHROPIC, "2026-10-24", 15.00, 75.00, 1.50, 18.75),
    "claude-opus-4": _p(_ANTHROPIC, "2026-10-24", 15.00, 75.00, 1.50, 18.75),
    "claude-opus-4-0": _p(_ANTHROPIC, "2026-10-24", 15.00, 75.00, 1.50, 18.75),
    "claude-sonnet-5-5": _p(_ANTHROPIC, "2026-10-24", 2.00, 10.00, 0.10, 2.50),
    "claude-sonnet-5": _p(_ANTHROPIC, "2026-10-24", 2.00, 10.00, 0.20, 2.50),
    "claude-sonnet-4-6": _p(_ANTHROPIC, "2026-10-24", 3.00, 15.00, 0.30, 3.75),
    "claude-sonnet-4-5": _p(_ANTHROPIC, "2026-10-24", 3.00, 15.00, 0.30, 3.75),
    "claude-sonnet-4": _p(_ANTHROPIC, "2026-10-24", 3.00, 15.00, 0.30, 3.75),
    "claude-sonnet-4-0": _p(_ANTHROPIC, "2026-10-24", 3.00, 15.00, 0.30, 3.75),
    "claude-3-7-sonnet": _p(_ANTHROPIC, "2025-06-01", 3.00, 15.00, 0.30, 3.75),
    "claude-haiku-4-5": _p(_ANTHROPIC, "2026-10-24", 1.00, 5.00, 0.10, 1.25),
    "claude-3-5-haiku": _p(_ANTHROPIC, "2025-06-01", 0.80, 4.00, 0.08, 1.00),
    # Google Gemini API (paid tier, text): input, output (thinking included), context-cache hits
    "gemini-2.5-pro": _p(_GOOGLE, "2025-10-01", 1.25, 10.00, 0.125),
    "gemini-2.5-flash": _p(_GOOGLE, "2025-10-01", 0.30, 2.50, 0.03),
    "gemini-2.5-flash-lite": _p(_GOOGLE, "2025-10-01", 0.10, 0.40, 0.01),
    "gemini-2.0-flash": _p(_GOOGLE, "2025-10-01", 0.10, 0.40, 0.025),
    "gemini-2.0-flash-lite": _p(_GOOGLE, "2025-10-01", 0.075, 0.30),
}

# A dated snapshot of a model id: OpenAI's -YYYY-MM-DD (and the older -MMDD), Anthropic's -YYYYMMDD
# (@YYYYMMDD on Vertex AI), Google's -NNN stable versions; "-latest" aliases name the same model.
_SNAPSHOT = re.compile(r"^(?P<base>.+?)(?:-\d{4}-\d{2}-\d{2}|-\d{8}|@\d{8}|-\d{4}|-\d{3}|-latest)$")


class PriceTable:
    def __init__(self, overrides: Mapping[str, Price] | None = None, defaults: bool = True) -> None:
        self.prices = {**(DEFAULT_PRICES if defaults else {}), **{k.lower(): v for k, v in (overrides or {}).items()}}
        # model name -> its price: looked up once per name (names are few)
        self._found: dict[str, Price | None] = {}

    def lookup(self, model: str) -> Price | None:
        """The price of ``model``: its own id, or the id a dated snapshot belongs to; else None."""
        if model in self._found:
            return self._found[model]
        price = self._search(model)
        if len(self._found) < 10_000:  # model names are few; never grow without bound
            self._found[model] = price
        return price

    def _search(self, model: str) -> Price | None:
        m = model.lower().split("/")[-1]  # "openai/gpt-4o" as routers name it, "models/gemini-..." as Google does
        if m in self.prices:
            return self.prices[m]
        snapshot = _SNAPSHOT.match(m)
        return self.prices.get(snapshot.group("base")) if snapshot else None

    def estimate(self, usages: Iterable[TokenUsage]) -> float | None:
        """Cost in US dollars of one model's usage in a run, or None when the model has no price.

        ``usages`` are one (model, provider)'s token counts in every role it served; they are read
        with the provider's meaning (exporter.records.usage.billable).
        """
        items = list(usages)
        if not items:
            return 0.0
        price = self.lookup(items[0].model)
        if price is None:
            return None
        counts: dict[str, int] = {}
        for u in items:
            counts[u.token_type] = counts.get(u.token_type, 0) + u.count
        b = billable(items[0].provider, counts)
        cached_price = price.cached_input if price.cached_input is not None else price.input
        write_price = price.cache_write if price.cache_write is not None else price.input
        usd = (b.input * price.input + b.cache_read * cached_price + b.cache_write * write_price
               + b.output * price.output)
        return usd / 1_000_000
