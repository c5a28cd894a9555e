"""What a sink hands the state to write in the transaction that counts a batch.

The exactly-once rule: a run's effect on a sink's durable totals is written in the same transaction
that records the run as counted, and becomes visible (scrapes, exports) only after that commit. A
sink therefore *stages* a batch: :meth:`Staged.rows` are written inside the transaction, and
:meth:`Staged.apply` makes the batch visible in the sink's memory once the commit returned.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import NamedTuple, Protocol

from exporter.records.runs import RunRecord, record


@record  # a page writes a row per series it changed (about one per run)
class SeriesRow:
    """A series as the state store keeps it: a family's name, its label values, the running total
    (counter, histogram sum), the count of observations and a histogram's cumulative bucket counts."""

    family: str
    labels: tuple[str, ...]
    total: float
    count: int
    buckets: tuple[int, ...]

    @property
    def key(self) -> str:
        return label_key(self.labels)


@lru_cache(maxsize=1 << 16)
def label_key(labels: tuple[str, ...]) -> str:
    """The ``labels`` column of a series: its label values as a JSON array (the primary key's text, so
    the spelling never changes). Cached: every page writes most series again, and encoding their
    labels each time was a tenth of the state's Python time; the cap is far above the series held
    (``metrics.label_value_limit`` bounds them)."""
    return json.dumps(labels, ensure_ascii=False)


class TopSession(NamedTuple):
    """A session among those with the most tokens in a window (:meth:`PostgresState.top_sessions`)."""

    session_id: str
    run_type: str
    name: str
    tokens: int
    cost: float  # US dollars the provider reported
    estimated_cost: float  # US dollars estimated from the price table
    last_seen: float  # when a run of it was last counted (unix seconds): it leaves the window then + window


class Staged(Protocol):
    """One batch's changes to a sink, computed inside the counting transaction, not yet visible."""

    def rows(self) -> Sequence[SeriesRow]:
        """The durable rows to write in the counting transaction."""
        ...

    def apply(self) -> None:
        """Make the changes visible; called once, only after the transaction committed."""
        ...


# Called inside the batch transaction with the runs really counted by it and the (run_type, name) of
# sessions seen for the first time.
StageRuns = Callable[[list[RunRecord], list[tuple[str, str]]], Staged]
# Called inside the transaction with the (session_id, run_type, name) of sessions newly found disagreeing.
StageDisagreements = Callable[[list[tuple[str, str, str]]], Staged]
