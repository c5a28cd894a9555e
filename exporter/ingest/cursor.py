"""The low watermark: from where a poll must re-read so that no committed run is ever missed.

agno stamps ``updated_at`` (whole seconds, the app's clock) in Python before the statement that
writes the row, and concurrent transactions commit out of order, so ``updated_at > last_seen``
loses runs. Instead each poll *k* starts with one statement (:func:`exporter.ingest.source.take_snapshot`)
that reads

* ``T_k``: the database time (``statement_timestamp()``: when the statement began, so before
  anything else it reads), and
* from ``pg_locks``, every transaction *W* of agno's database that holds, or waits for, a lock on
  the watched table in a mode that allows writing rows (``RowExclusiveLock`` or stronger), with its
  start time ``start(W)`` (``pg_stat_activity.xact_start``).

The poll lists candidates with ``updated_at >= L_{k-1} - clock_skew``; once every page of it is
counted the watermark becomes (:meth:`Watermark.advance`)

    L_k = max(L_{k-1}, min(T_k, min over those W of start(W)))

where a ``start(W)`` Postgres does not show (another role's session, unless the exporter's role has
``pg_read_all_stats``; a prepared transaction) counts as ``L_{k-1}``.

**Which transactions count.** Only a transaction that can still write the table with an old stamp.
A backend is bound to one database and Postgres has no cross-database writes (dblink,
postgres_fdw and logical replication write through backends of agno's database, which hold the
lock themselves), so transactions of other databases never count, and neither do transactions
of agno's database that never took a write lock on the table (a report, a migration of other
tables, the exporter's own state writes): ``pg_current_snapshot()``'s in-progress list, which holds
all of them, would pin the watermark for nothing. A transaction already open before the exporter's
first poll needs no memory of earlier polls: its ``xact_start`` bounds every row it writes.

**What clock_skew covers (the one assumption).** Every row version agno writes carries a stamp at
least ``q - clock_skew``, where ``q`` is the database time at which the statement writing it
requested its lock on the table (or, when its transaction already held that lock, started). So
clock_skew covers the app's clock lagging the database's, plus the time from agno stamping a row to
its statement reaching the table, waits included (agno 3.x's ``upsert_run`` takes a same-session
advisory lock and reads ``max(run_index)`` in between). ``updated_at`` is whole seconds, floored;
the candidate query floors ``L - clock_skew`` too, so the truncation loses nothing.

**Invariant** *I_k*: every transaction whose commit is not visible to a snapshot taken when poll
*k*'s reads begin (*R_k*, after the snapshot statement) writes only rows stamped at least
``L_k - clock_skew``. *I_0* holds with ``L_0 = 0``. Given *I_{k-1}*, take such a transaction *z*:

* if *z* requested its write lock on the table before the ``pg_locks`` read began, it held (or
  awaited) it through that read — locks are held to the end of the transaction, and *z* is not
  over before *R_k* — so it is listed; ``start(z)`` is at most any ``q`` of its writes, so its
  stamps are at least ``start(z) - clock_skew``; when ``start(z)`` is hidden, *I_{k-1}* gives
  ``L_{k-1} - clock_skew`` (*z* was not visible at *R_{k-1}* either);
* otherwise each of its writes has ``q`` after the read began, after ``T_k``: stamps of at least
  ``T_k - clock_skew``.

Both are at least ``L_k - clock_skew``, and *I_{k-1}* covers the ``max`` with ``L_{k-1}``.
(``pg_locks`` lists every lock held or awaited through the whole read: it copies each backend's
fast-path slots, then the shared lock table; a transaction committing during the read is visible
at *R_k* and outside *I_k*.)

**Nothing is missed.** A run row committed by *z*: let *k* be the first poll whose reads see the
commit. For *k = 1* the poll is the backfill, which lists every finished run whatever its stamp.
Otherwise *z* was not visible at *R_{k-1}*, so by *I_{k-1}* its stamp is at least
``L_{k-1} - clock_skew``, which poll *k* reads from. **Nothing is doubled**: runs already counted
are skipped through the durable dedupe (the insert of the run ids in the state), so re-reading is
harmless. **Restarts**: the watermark is saved after every page of a poll is counted (every few
seconds, so a restart may resume from an older ``L_j``); *I_j* holds for it, and every run a poll
up to *j* saw is counted, so a restart only re-reads more.

The cost of re-reading grows with the oldest writer; ``max_lookback`` bounds it: when
``min(...)`` is older than ``T_k - max_lookback`` the watermark is clamped to that (counted by
``agno_exporter_lookback_clamped_total``): runs that writer commits later with older stamps are
then missed, which is why the clamp is reported.

**The open runs read the same window** (:mod:`exporter.ingest.openruns`). The in-progress gauges keep
every open run in memory; poll *k* reads the rows (any status) stamped at or after
``L_{k-1} - clock_skew``, after its snapshot. Its previous read (at *O_{k-1}*, after *R_{k-1}*) saw
every row version committed before it; a version it did not see was not visible at *R_{k-1}*
either, so by *I_{k-1}* it is stamped at least ``L_{k-1} - clock_skew`` and poll *k* reads the
row's current version. Each run's entry thus follows its row, except for deletions, which leave no
stamp: the table's deleted-rows counter (and its oid and file, for TRUNCATE and a re-created table)
is read in the same statement, and when it moved every open run is read whole. A process starts
(and a promoted replica, and a poll after a failure) with a whole read.

**Forgetting is safe** (:mod:`exporter.ingest.retention`). "Nothing is doubled" needs a run's id in the
state for as long as a poll can list the run again, that is while agno holds a row with its id
(or, for a run counted from a nested copy, the row holding it): agno rewrites a run under the same
id (REGENERATED) with a new stamp, inside any window. So a run's row in the state stays while agno
holds it, whatever its age, and goes only after two sweeps at least ``grace`` apart (default
``max_lookback``) found agno not holding it, with its spans delivered. A run agno writes back
after that is counted as a new run (the one case a deletion can double, documented). Agno's spans
are never rewritten (inserted once, ``span_id`` their key): a delivered span's dedupe row goes
once the span is older than the window (queued before ``L - clock_skew - max_lookback``), since no
poll lists it again. The counters are not the ledger: their totals are the state's series rows.

agno 2.x (:mod:`exporter.ingest.legacy`) keeps runs in the sessions table and stamps the session's
``updated_at`` on each save; agno's tracing (:mod:`exporter.sinks.otel.agno_spans`) stamps a span's
``created_at`` before inserting it. The same rule holds for both, with their table watched.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple


class Advance(NamedTuple):
    """The result of one :meth:`Watermark.advance`."""

    low: float  # the new low watermark (unix seconds, database clock)
    clamped: bool  # max_lookback cut the window short: rows of the oldest writer may be missed
    hidden: int  # writers whose start Postgres did not show (held at the previous watermark)
    oldest: float | None  # start of the oldest writer whose start is known


@dataclass
class Watermark:
    low: float = 0.0  # persisted; 0 = never polled (backfill)
    max_lookback: float = 3600.0

    def advance(self, now: float, writers: Sequence[float | None]) -> Advance:
        """The new low watermark after a poll that read everything from the previous one.

        ``now`` is ``T_k`` and ``writers`` the ``start(W)`` of each transaction that may write the
        watched table (None: not shown), both as :func:`exporter.ingest.source.take_snapshot` read them.
        """
        bound = now
        hidden = 0
        oldest: float | None = None
        for start in writers:
            if start is None:
                hidden += 1
                bound = min(bound, self.low)
            else:
                oldest = start if oldest is None else min(oldest, start)
                bound = min(bound, start)
        floor = now - self.max_lookback
        clamped = bound < floor
        self.low = max(self.low, floor if clamped else bound)
        return Advance(self.low, clamped, hidden, oldest)


class WindowLog:
    """Reports a watermark's trouble once per episode, not on every poll: the first poll clamped by
    ``max_lookback`` (WARNING) and the first one no longer clamped (INFO); writers whose start is
    hidden from the exporter's role, once per process (WARNING, with the grant that fixes it)."""

    def __init__(self, logger: logging.Logger, table: str, max_lookback: float) -> None:
        self.log = logger
        self.table = table
        self.max_lookback = max_lookback
        self.clamping = False
        self.hidden_reported = False

    def report(self, adv: Advance, now: float) -> None:
        if adv.hidden and not self.hidden_reported:
            self.hidden_reported = True
            self.log.warning(
                "%d transaction(s) that may write %s started at a time Postgres does not show this role (other"
                " roles' sessions need pg_read_all_stats; prepared transactions never show it): the re-read window"
                " waits for them to end (GRANT pg_read_all_stats TO the exporter's role bounds it by their start)",
                adv.hidden, self.table)
        if adv.clamped and not self.clamping:
            if adv.oldest is not None and adv.oldest < now - self.max_lookback:
                why = f"a transaction that may write {self.table} has been open for {now - adv.oldest:,.0f} s"
            else:
                why = f"a transaction that may write {self.table} started at a time not shown to this role"
            self.log.warning("%s: the re-read window is clamped to collector.max_lookback (%.0f s), so rows it"
                             " commits with older stamps would be missed (each such poll counts in"
                             " lookback_clamped_total)", why, self.max_lookback)
        elif self.clamping and not adv.clamped:
            self.log.info("the re-read window of %s is within collector.max_lookback again", self.table)
        self.clamping = adv.clamped
