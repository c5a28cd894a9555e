"""The run ledger stays as large as what agno still holds: runs agno deleted are forgotten, safely.

The state keeps a row per counted run (``runs``): its insert is the dedupe that makes counting
exactly-once (:mod:`exporter.ingest.cursor`). A run agno no longer holds cannot be listed again, so its
row can go, with two cautions:

* **A rewritten run is recognised.** agno rewrites a run under the same id (REGENERATED, a
  continued run, a session saved again from an app's memory). While agno holds a row with the id
  (or, for a run counted from a copy nested in another run's row, that host row), its ledger row
  stays, whatever its age: the rewrite finds it and is not counted again.
* **A deletion is believed only after ``grace``.** A sweep that finds a run gone marks it
  (``missing_since``); the row is deleted by a later sweep at least ``grace`` seconds after the
  mark, if agno still does not hold it (a run written back meanwhile has its mark cleared). So a
  run deleted and written back within ``grace`` (an app saving a session it still holds right
  after the session was deleted) is not counted twice; one written back later is counted again,
  as a new run. ``grace`` defaults to ``collector.max_lookback``, the longest re-read window.

Rows whose spans are still waiting in the trace outbox are kept until delivered. Counters are not
touched: exported totals live in the state's ``series`` rows, not in the ledger.

Cost: nothing on a poll unless agno deleted rows (no query: the decision is made in memory). A new
state (an empty ledger at start) takes agno's deletion signal of its first poll as swept: what that
poll counts was read after it. Every
``interval`` seconds the deletion signal of agno's runs tables (read by each poll anyway,
:mod:`exporter.ingest.openruns`) is compared with the one the last complete sweep started from (kept in
the state's ``meta``, so a restart does not sweep again; a server restart resets the counter and
costs one sweep); when it moved, or marks are due, a sweep walks the ledger in run id order,
``batch`` rows per poll (a primary key range in the state, primary key lookups in agno's table),
so a poll's extra work is bounded whatever the ledger's size. While any agno 2.x runs column is read
(runs inside session rows), nothing is forgotten.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from exporter.ingest.readers import Source
from exporter.state.store import PostgresState

log = logging.getLogger("agno_exporter.retention")

SWEPT_KEY = "ledger_swept"  # meta: the deletion signal the last complete sweep started from


def _key(signal: object) -> str | None:
    """The signal as stored, None when it is unknown (equal to nothing: every check sweeps)."""
    return json.dumps(signal) if isinstance(signal, tuple) else None


@dataclass
class Sweep:
    """Progress of the sweep in flight."""

    after: str = ""  # the last run id looked at
    signal: str | None = None  # agno's deletion signal when it started (JSON), None: unknown
    forgotten: int = 0
    marked: int = 0


class LedgerPruner:
    """Forgets, in bounded steps, the ledger rows of runs agno deleted (see the module docstring).

    ``grace``: seconds a run must stay gone between the sweep that marks it and the one that deletes
    its row; ``batch``: ledger rows looked at per :meth:`step`; ``interval``: seconds between looks at
    agno's deletion signal while no sweep runs. Database errors are raised (the poll fails and retries).
    """

    def __init__(self, state: PostgresState, source: Source, grace: float = 3600.0, batch: int = 1000,
                 interval: float = 60.0) -> None:
        self.state = state
        self.source = source
        self.grace = grace
        self.batch = batch
        self.interval = interval
        self.sweep: Sweep | None = None
        self.swept: str | None = None  # the deletion signal the last complete sweep started from (JSON)
        self.oldest: float | None = None  # the earliest mark in the ledger (unix seconds), None: none
        self._loaded = False
        self._fresh = False  # the ledger was empty when the collector started (see reload)
        self._checked = float("-inf")
        self.forgotten = 0  # rows deleted by this process
        self.steps = 0  # sweep steps made by this process (each reads up to ``batch`` ledger rows)

    async def step(self, now: float) -> None:
        """Do one bounded step of pruning, if one is due (call after a poll, as the leader). ``now``:
        unix seconds (the poll's database time)."""
        if self.sweep is None:
            if now - self._checked < self.interval:
                return
            self._checked = now
            fresh, self._fresh = self._fresh, False  # only the first look after a start may take it
            signal = self.source.deletion_signal()
            if signal is None:
                return  # an agno 2.x runs column is read: nothing is forgotten
            if not self._loaded:  # once per process (a promoted replica is a new collector start)
                self.swept = await self.state.load_meta(SWEPT_KEY)
                self.oldest = await self.state.oldest_missing()
                self._loaded = True
            key = _key(signal)
            if fresh and self.swept is None and key is not None:
                # Every run in the ledger was counted by this process's first poll, from reads made after
                # the snapshot that read this signal: a run deleted since moves it. Nothing to sweep (a
                # first start over 10^6 runs swept its whole new ledger, 1,000 rows a poll for hours).
                self.swept = key
                await self.state.save_meta(SWEPT_KEY, key)
                return
            if key is not None and key == self.swept and (self.oldest is None or self.oldest >= now - self.grace):
                return
            self.sweep = Sweep(signal=key)
        await self._step(self.sweep, now)

    def reload(self, fresh: bool = False) -> None:
        """Read the last sweep's signal and the marks from the state again (another replica may have
        swept meanwhile). ``fresh``: the ledger is empty (a new state): the first look takes the
        current signal as swept instead of sweeping what the first poll counts."""
        self._loaded = False
        self._fresh = fresh

    async def _step(self, sweep: Sweep, now: float) -> None:
        self.steps += 1
        rows = await self.state.ledger_page(sweep.after, self.batch)
        ids = {r.run_id for r in rows} | {r.host_run_id for r in rows if r.host_run_id}
        held = await self.source.row_ids([(i, None) for i in sorted(ids)])
        gone = [r for r in rows if r.run_id not in held and (r.host_run_id is None or r.host_run_id not in held)]
        gone_ids = {r.run_id for r in gone}
        back = [r.run_id for r in rows if r.missing_since is not None and r.run_id not in gone_ids]
        before = now - self.grace
        forget = [r.run_id for r in gone if r.missing_since is not None and r.missing_since < before
                  and r.traces_exported]
        fresh = [r.run_id for r in gone if r.missing_since is None]
        deleted = await self.state.sweep_ledger(fresh, back, forget, now, before)
        sweep.forgotten += deleted
        sweep.marked += len(fresh)
        self.forgotten += deleted
        if len(rows) == self.batch:
            sweep.after = rows[-1].run_id
            return
        self.sweep = None
        self.oldest = await self.state.oldest_missing()
        if isinstance(sweep.signal, str):
            self.swept = sweep.signal
            await self.state.save_meta(SWEPT_KEY, sweep.signal)
        if sweep.forgotten or sweep.marked:
            log.info("run ledger swept: %d runs agno no longer holds forgotten, %d more found gone (forgotten"
                     " if still gone in %.0f s)", sweep.forgotten, sweep.marked, self.grace)
