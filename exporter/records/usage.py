"""What each provider's token counts mean, and the same usage in disjoint, billable parts.

agno copies every provider's own usage fields into its metrics without reconciling them
(``_get_metrics`` of each class under ``agno/models/``), so one field means different things:

* OpenAI (and the OpenAI-compatible APIs agno reads with ``OpenAIChat``/``OpenAILike``): the input
  count *includes* the cached tokens (``prompt_tokens_details.cached_tokens``) and the output count
  *includes* the reasoning tokens (``completion_tokens_details.reasoning_tokens``).
* Anthropic (``Claude``, also on Bedrock, Vertex AI and Azure AI Foundry) and the Bedrock Converse
  API: ``input_tokens`` counts only the uncached input; cache reads (``cache_read_input_tokens``) and
  cache writes (``cache_creation_input_tokens``) come *beside* it. Thinking is part of
  ``output_tokens`` (no separate field).
* Google Gemini: ``promptTokenCount`` includes ``cachedContentTokenCount``; ``candidatesTokenCount``
  leaves the thinking out (``thoughtsTokenCount`` beside it) and agno computes ``total_tokens`` as
  input + output, so thinking is outside the total too. Google bills thinking at the output rate.

:func:`billable` turns agno's stored counts into disjoint parts (fresh input, cache reads, cache
writes, everything billed at the output rate). The price estimate and the token anomaly checks use
it, so each provider's numbers are read with that provider's meaning, in this one place. agno's
stored numbers themselves are exported as they are (``agno_tokens_total`` equals agno's API).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from exporter.records.runs import record


@dataclass(frozen=True, slots=True)
class TokenMeaning:
    """How one provider's stored counts relate to each other."""

    name: str
    cache_in_input: bool  # cache_read (and cache_write) tokens are part of input_tokens
    reasoning_in_output: bool  # reasoning tokens are part of output_tokens


OPENAI = TokenMeaning("openai", True, True)  # agno/models/openai/chat.py, responses.py: _get_metrics
ANTHROPIC = TokenMeaning("anthropic", False, True)  # agno/models/anthropic/claude.py, aws/bedrock.py
GOOGLE = TokenMeaning("google", True, False)  # agno/models/google/gemini.py: _get_metrics

# gen_ai.provider.name (records.provider_name) -> meaning; every other provider is read as OpenAI's,
# which is what agno's OpenAI-compatible classes store.
MEANINGS: Mapping[str, TokenMeaning] = {
    "anthropic": ANTHROPIC,
    "aws.bedrock": ANTHROPIC,  # Claude through the Anthropic SDK, and the Converse API's TokenUsage
    "gcp.vertex_ai": ANTHROPIC,  # agno's provider "VertexAI" is Claude on Vertex (Gemini says "Google")
    "azurefoundry": ANTHROPIC,  # agno's AzureFoundryClaude
    "gcp.gemini": GOOGLE,
}


def meaning(provider: str) -> TokenMeaning:
    """The meaning of ``provider``'s counts (a ``gen_ai.provider.name`` value)."""
    return MEANINGS.get(provider, OPENAI)


@record
class Billable:
    """One model's usage in disjoint parts, each billed at its own rate (counts of tokens)."""

    input: int  # uncached input
    cache_read: int
    cache_write: int
    output: int  # everything billed at the output rate: the answer and any reasoning/thinking

    @property
    def prompt(self) -> int:
        """Every input token, cached or not."""
        return self.input + self.cache_read + self.cache_write


def billable(provider: str, counts: Mapping[str, int]) -> Billable:
    """agno's stored counts (token_type -> n, records.TOKEN_TYPES) as ``provider`` bills them.

    Audio tokens are already inside input/output for every provider agno stores them for (OpenAI's
    ``audio_tokens`` details), so they are not added again.
    """
    m = meaning(provider)
    cache_read = counts.get("cache_read", 0)
    cache_write = counts.get("cache_write", 0)
    inp = counts.get("input", 0)
    if m.cache_in_input:
        inp = max(0, inp - cache_read - cache_write)
    out = counts.get("output", 0)
    if not m.reasoning_in_output:
        out += counts.get("reasoning", 0)
    return Billable(inp, cache_read, cache_write, out)


def anomalies(provider: str, counts: Mapping[str, int], total: int | None) -> list[str]:
    """Inconsistencies that can be stated exactly under ``provider``'s meaning (bounded kinds).

    ``total_mismatch``: a stored total that is not input + output (every provider agno reads
    computes or reports it so, see the module docstring); ``cache_exceeds_input``: more cached than
    input tokens where cached tokens are part of the input; ``reasoning_exceeds_output``: more
    reasoning than output tokens where reasoning is part of the output.
    """
    m = meaning(provider)
    found = []
    inp, out = counts.get("input", 0), counts.get("output", 0)
    if total is not None and inp and out and total != inp + out:
        found.append("total_mismatch")
    if m.cache_in_input and counts.get("cache_read", 0) + counts.get("cache_write", 0) > inp > 0:
        found.append("cache_exceeds_input")
    if m.reasoning_in_output and counts.get("reasoning", 0) > out > 0:
        found.append("reasoning_exceeds_output")
    return found
