"""The low watermark: from where a poll must re-read so no committed run is ever missed.

agno stamps ``updated_at`` (whole seconds, from the app's clock) before its transaction commits,
and transactions commit out of order, so ``updated_at > last_seen`` loses runs. Instead each poll
records the database snapshot it started from. A run that was not visible to poll k was written by
a transaction that was either in progress at k (it is in the snapshot's ``xip``) or started after
k (its xid is at least the snapshot's ``xmax``). A transaction that started after poll j stamps
``updated_at >= T_j - clock_skew``. So after poll k it is enough to re-read from

    L_k = min(T_k, min over x in xip_k of T_j(x))

where ``T_j(x)`` is the time of the latest remembered poll whose ``xmax <= x`` (x had not started
then). For an in-progress transaction older than every remembered poll the previous watermark is
kept. Runs already counted are skipped through the durable dedupe, so re-reading is harmless;
only its cost grows with old open transactions, which ``max_lookback`` bounds (counted when hit).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .source import Snapshot


@dataclass
class Watermark:
    low: float = 0.0  # persisted; 0 = never polled (backfill)
    max_lookback: float = 3600.0
    history: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=4096))

    def advance(self, snap: Snapshot) -> tuple[float, bool]:
        """The new low watermark after a poll that read everything visible in ``snap``.

        Returns (low, clamped) where clamped says max_lookback cut the window short.
        """
        bound = snap.now
        for x in snap.xip:
            started_after = None
            for t, xmax in reversed(self.history):
                if xmax <= x:
                    started_after = t
                    break
            bound = min(bound, started_after if started_after is not None else self.low)
        self.history.append((snap.now, snap.xmax))
        floor = snap.now - self.max_lookback
        clamped = bound < floor
        self.low = max(self.low, floor if clamped else bound)
        return self.low, clamped
