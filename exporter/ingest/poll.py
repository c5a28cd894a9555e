"""What one poll of the collector is made of and reports: its options, its result, a chunk of loaded runs, the
backfill's progress line, the last failure (for the landing page).
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from exporter.ingest.source import Page
from exporter.records.runs import RunRecord

log = logging.getLogger("agno_exporter.collector")  # the collector's log: these lines are about its poll

BACKFILL_LOG_EVERY = 10.0  # seconds between backfill progress lines



@dataclass(frozen=True)
class CollectorOptions:
    batch_size: int = 500
    clock_skew: float = 10.0
    max_lookback: float = 3600.0
    backfill: bool = True
    top_sessions: int = 10
    top_sessions_window: float = 86400.0
    # The top-K query sorts every session active in the window: it is repeated when runs were counted, else
    # when one of its sessions leaves the window (exporter.ingest.collector), so an idle poll makes none.
    # ...and after runs were counted, not sooner than this after the last time: polls the wake-up starts
    # (exporter.ingest.notify) may come many a second. A refresh put off is made by the next poll it is due
    # at (the top-K lags the counters by at most a poll interval then, as it would without the wake-up).
    top_sessions_min_gap: float = 0.0
    with_content: bool = False
    stuck_after: float = 900.0
    # agno writes a session's totals after the run's row; compare only once they have had time to settle
    session_settle: float = 5.0
    max_pending_session_checks: int = 10_000
    cursor_save_interval: float = 10.0
    # the run ledger forgets runs agno deleted (exporter.ingest.retention): rows looked at per poll while a
    # sweep runs, how often to look for deletions, how long a run must stay gone (None: max_lookback)
    prune_batch: int = 1000
    prune_interval: float = 60.0
    forget_after: float | None = None


class OpenRuns(NamedTuple):
    """Runs agno has not finished, of one (run_type, name, status), at the last poll."""

    run_type: str
    name: str
    status: str
    n: int  # PENDING or RUNNING
    stuck: int  # of them, older than collector.stuck_after
    oldest_age: float  # seconds since the oldest one was created


@dataclass(frozen=True, slots=True)
class FetchedChunk:
    """A chunk's rows as fetched, with the trace roots of the rows that name a parent."""

    rows: list[dict[str, Any]]
    refs: list[tuple[str, str]]  # (run id, session id) of those rows, as records.parse.row_parent_ref reads them
    roots: dict[str, str]  # the source's ancestors() of refs: run id -> its trace's root run id


@dataclass
class LoadedChunk:
    records: list[RunRecord] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (run id, reason)
    roots: dict[str, str] = field(default_factory=dict)  # run id -> its trace's root run id
    details: dict[str, str] = field(default_factory=dict)  # run id -> why it is skipped, for the log
    in_table: set[str] = field(default_factory=set)  # ids of the records that have rows of their own


@dataclass(frozen=True)
class PollFailure:
    """The last failed poll, for the landing page."""

    at: float  # unix time
    reason: str  # database, query, state (agno_exporter_poll_errors_total's reason)
    message: str  # as logged (connection errors have their URL's password masked, see db.connect)


@dataclass
class PollResult:
    counted: int = 0
    skipped: int = 0
    pages: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    skips_logged: int = 0  # of them, logged one by one at WARNING
    anomalies: dict[str, int] = field(default_factory=dict)  # kind -> runs counted with it
    anomalous_runs: int = 0
    anomaly_examples: list[str] = field(default_factory=list)


@dataclass
class BackfillProgress:
    """Progress of one reader's backfill, for the log: a line only when runs were counted since the
    last one (at most every ``BACKFILL_LOG_EVERY`` seconds), with the rate and what is left to list
    (from the planner's estimate of the table's rows: an estimate, said so)."""

    key: str
    started: float
    counted0: int  # the poll's counts when the backfill started
    skipped0: int
    size: int | None  # planner's estimate of the rows to list, None when unknown
    unit: str  # what the backfill lists: runs (agno 3.x) or sessions (agno 2.x)
    listed: int = 0
    logged_at: float = 0.0
    logged_counted: int = 0

    def page(self, page: Page, result: PollResult, now: float) -> None:
        self.listed += page.scanned
        counted = result.counted - self.counted0
        if counted <= self.logged_counted or now - max(self.logged_at, self.started) < BACKFILL_LOG_EVERY:
            return
        self.logged_at, self.logged_counted = now, counted
        elapsed = max(now - self.started, 1e-9)
        rate = counted / elapsed
        left = ""
        if self.size is not None:
            remaining = max(0, self.size - self.listed)
            eta = remaining / (self.listed / elapsed) if self.listed else 0.0
            left = f"; about {remaining:,} {self.unit} left to list (planner's estimate), {_duration(eta)} more"
        log.info("backfill of %s: %s runs counted in %s (%s runs/s), %s %s listed%s", self.key, f"{counted:,}",
                 _duration(elapsed), f"{rate:,.0f}" if rate >= 10 else f"{rate:.1f}", f"{self.listed:,}",
                 self.unit, left)

    def done(self, result: PollResult, now: float) -> None:
        counted, skipped = result.counted - self.counted0, result.skipped - self.skipped0
        log.info("backfill of %s finished in %s: %s %s listed, %s runs counted, %s skipped (the rest were"
                 " counted before)", self.key, _duration(now - self.started), f"{self.listed:,}", self.unit,
                 f"{counted:,}", f"{skipped:,}")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:,.0f} min"


def settle_heap() -> None:
    """Keep the cyclic garbage collector off the hot path (a fifth of the time counting a large table).

    What exists once the state is loaded (modules, config, the series) lives as long as the process,
    so it is frozen out of the collector's scans. A poll allocates tens of thousands of short-lived
    dicts and tuples per chunk (parsed JSON, records, observations), nearly all freed by reference
    counting; a first-generation threshold of 50,000 live new objects instead of 700 stops the
    collector from rescanning the chunk in flight over and over. Cyclic garbage is still collected.
    """
    gc.collect()  # so that only live objects are frozen
    gc.freeze()
    if gc.get_threshold()[0] < 50_000:
        gc.set_threshold(50_000, 20, 20)
