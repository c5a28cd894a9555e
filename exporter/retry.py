"""One backoff policy for everything that retries: the collector's poll, agno's span poller, span delivery.

Exponential with "equal jitter": after ``n`` failures in a row the ceiling is
``min(ceiling, base * 2 ** min(n - 1, doublings))`` seconds and the delay is drawn uniformly from
``[ceiling / 2, ceiling]``, so it is never zero (retrying replicas spread out) and never above the
ceiling. Randomness comes in as a ``random.Random`` (seed it in a test); the sleeping and the clock
stay with the caller, which passes them in too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Backoff:
    """``base``: the first ceiling, seconds (> 0); ``ceiling``: the largest delay, seconds (>= base);
    ``doublings``: how many times the ceiling may double before ``ceiling`` caps it (a bound on the
    exponent, so that ``2 ** n`` never overflows). Raises ValueError on a base or ceiling out of order."""

    base: float
    ceiling: float
    doublings: int = 62
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if not 0 < self.base <= self.ceiling:
            raise ValueError("need 0 < base <= ceiling")

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` (>= 1) failures in a row."""
        top = min(self.ceiling, self.base * 2.0 ** min(failures - 1, self.doublings))
        return top / 2 + self.rng.uniform(0, top / 2)


def poll_backoff(interval: float, ceiling: float, rng: random.Random | None = None) -> Backoff:
    """The backoff of a poll loop polling every ``interval`` seconds: twice the interval after the first
    failure, doubling up to 2**10 intervals or ``ceiling`` seconds, whichever is less."""
    base = 2 * interval
    return Backoff(min(base, ceiling), ceiling, doublings=9, rng=rng or random.Random())
