"""Trace and span ids derived from agno's run ids.

Deriving ids (instead of drawing random ones) makes exporting a run twice produce the same ids,
lets a member run find its trace without waiting for its parent's row, and lets a histogram
exemplar name the trace of a run before the span is exported.
"""

from __future__ import annotations

import hashlib


def _digest(*parts: str) -> bytes:
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).digest()


def trace_id_for(root_run_id: str) -> int:
    """128-bit trace id of the trace rooted at a top-level run (never 0, as OTel requires)."""
    return int.from_bytes(_digest("trace", root_run_id), "big") or 1


def span_id_for(run_id: str, kind: str = "run", key: str = "") -> int:
    """64-bit span id of one span of a run: the run itself, one model call or one tool call."""
    return int.from_bytes(_digest("span", run_id, kind, key)[:8], "big") or 1


def trace_id_hex(root_run_id: str) -> str:
    """:func:`trace_id_for` as 32 hex digits (the digest's own hex: the same digits, without the int)."""
    digest = _digest("trace", root_run_id)
    return digest.hex() if any(digest) else f"{1:032x}"
