"""Durable state: which runs are counted, the totals, the cursors and the trace outboxes.

Lives in an exporter-owned schema (default ``agno_exporter``) of a Postgres database — agno's own
database by default, or another one (``state.url``) when the exporter's role may only read agno's.

One batch is one transaction: insert the run ids (the primary key makes a second insert a no-op,
so a run is counted at most once, across restarts and kill -9), update the session totals, and
write the new values of every series the batch changed. Memory is updated only after the commit.

The run ledger (``runs``) holds a row per run agno still holds, plus runs it deleted less than a
grace ago (:mod:`exporter.ingest.retention`); ``forwarded_spans`` the spans still in the re-read window or
waiting for delivery (:meth:`PostgresState.forget_spans`). The totals (``series``) never shrink.

Lists go to Postgres as binary arrays (``%b``): in text format psycopg escapes every element with
a regular expression, which was a third of the collector's CPU when counting a large table.

The state keeps its own tables' planner statistics fresh: lookups like ``source = %s AND run_id =
ANY(ids)`` need them. Without statistics Postgres takes the one-valued ``source`` for a selective
column and reads every row of the source per lookup, which made a backfill quadratic (140 ms per
lookup at 10^5 runs). autovacuum may be off or a minute behind a backfill, so each table is
analyzed when it has grown by as many rows as it had at its last ANALYZE (a handful of times over a
table's life, a logarithmic number during a backfill).
"""


from __future__ import annotations

from collections.abc import Awaitable, Callable

from exporter.state.cursors import CursorState
from exporter.state.ledger import BatchResult, Ledger
from exporter.state.outbox import Counted, Outboxes
from exporter.state.schema import ANALYZE_MIN_ROWS, StateNotWritable, not_writable

__all__ = ["ANALYZE_MIN_ROWS", "BatchResult", "Counted", "PostgresState", "StateNotWritable", "not_writable"]


class PostgresState(Ledger, CursorState, Outboxes):
    """The exporter's durable state, its parts by idea: :class:`~exporter.state.ledger.Ledger` (counted runs, with
    :mod:`~exporter.state.sessions` and :mod:`~exporter.state.series`), :mod:`~exporter.state.cursors`,
    :mod:`~exporter.state.outbox`, on :class:`~exporter.state.schema.StateBase`."""


Setup = Callable[[], Awaitable[None]]
