"""The opt-in wake-up, the exporter's side: agno's commit of a finished run wakes the poll loop.

Freshness without it is bounded by ``collector.poll_interval`` (a run committed just after a poll
waits a whole interval). ``agno-exporter create-notify-trigger`` (:mod:`exporter.commands.notify_trigger`)
puts a trigger on each agno table the collector reads; it calls ``pg_notify('agno_exporter_wake',
'<schema>.<table>')`` when a row is written in a final state. The exporter LISTENs on a connection of
its own (:class:`NotifyListener`) and wakes the poll loop (:class:`Wakeup`). Polling stays the safety
net: a notification lost (the LISTEN connection dropped, the exporter restarting) delays a run to the
next poll, never loses it, because a notification only moves a poll earlier and the exactly-once
argument (:mod:`exporter.ingest.cursor`) holds for polls at any times.

**The notification queue.** A listener that stops reading (a process paused, not dead) holds back
the server's queue (8 GB by default); when it is full, NOTIFY — agno's commit — fails. A dead
listener's session ends when the server finds its connection gone (a notification it cannot send,
after TCP's retransmission timeout; the server's ``tcp_keepalives_*`` settings make it sooner) and
frees it; the payload is a table name, so the queue holds about a hundred million finished runs.
``SELECT pg_notification_queue_usage()`` shows how full it is.

**Privileges.** The exporter's own role needs nothing: any role may LISTEN, read-only included.
LISTEN is not possible on a hot standby (a read replica), so a collector reading a replica polls.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import psycopg
from psycopg import sql

from exporter.db import ConnectOptions, connect, one_line, redact
from exporter.ingest.metrics import WakeMetrics
from exporter.retry import poll_backoff

log = logging.getLogger("agno_exporter.notify")

CHANNEL = "agno_exporter_wake"
TRIGGER = "agno_exporter_wake"  # the trigger's name on each table, and its function's in agno's schema
LISTEN_CHECK = 1.0  # seconds between looks at leadership and the tables read (no query)
# The listener retries from this, not from the poll interval: the wake-up exists to beat the poll, and
# each retry is one connection attempt.
LISTEN_MIN_BACKOFF = 0.5

WakeMode = Literal["auto"] | bool  # collector.wake_on_notify
Table = tuple[str, str]  # (schema, table)

_FIND = """
SELECT n.nspname AS schema, c.relname AS name FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE t.tgname = %(name)s AND NOT t.tgisinternal AND t.tgenabled <> 'D'
  AND (%(schemas)s::text[] IS NULL OR (n.nspname, c.relname) IN (SELECT * FROM unnest(%(schemas)s::text[],
       %(tables)s::text[])))"""


async def triggered(conn: psycopg.AsyncConnection[dict[str, Any]], tables: Sequence[Table] | None) -> set[Table]:
    """Which of ``tables`` (all tables of the database when None) carry an enabled wake-up trigger, as
    (schema, table); pg_trigger is readable by every role."""
    params = {"name": TRIGGER, "schemas": None if tables is None else [s for s, _ in tables],
              "tables": None if tables is None else [t for _, t in tables]}
    cur = await conn.execute(_FIND, params)
    return {(r["schema"], r["name"]) for r in await cur.fetchall()}


class Wakeup:
    """Where the poll loop waits between polls: until ``interval`` passes or a notification arrives.

    A burst of notifications starts one poll: they only set an event, which the loop clears just
    before its next poll starts (a notification during a poll sets it again, so a run committed after
    the poll's snapshot gets a poll of its own). Polls a notification starts are at least
    ``min_interval`` seconds apart (start to start): a steady stream of finished runs makes polls at
    most that frequent, each counting what arrived meanwhile. ``clock``: monotonic seconds; ``sleep``:
    how the gap is waited. Each poll started is counted in ``metrics.wakeups`` by its reason:
    ``interval``, ``notify`` or ``listen`` (the LISTEN connection was (re)opened).
    """

    def __init__(self, metrics: WakeMetrics, min_interval: float = 0.05,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        self.m = metrics
        self.min_interval = min_interval
        self.clock = clock
        self.sleep = sleep
        self._event = asyncio.Event()
        self._reason = "notify"
        self._last_start = float("-inf")

    @property
    def pending(self) -> bool:
        """A wake-up is waiting: the next :meth:`wait` returns at once."""
        return self._event.is_set()

    def wake(self, reason: str = "notify") -> None:
        """Start the next poll now (or ``min_interval`` after the last one started); the first reason of
        a burst is the one counted."""
        if not self._event.is_set():
            self._reason = reason
        self._event.set()

    async def wait(self, interval: float) -> None:
        """Return when the next poll should start: after ``interval`` seconds, or at a wake-up."""
        try:
            await asyncio.wait_for(self._event.wait(), interval)
            reason = self._reason
        except TimeoutError:
            reason = "interval"
        else:
            gap = self._last_start + self.min_interval - self.clock()
            if gap > 0:
                await self.sleep(gap)
        self._event.clear()  # before the poll's snapshot: what commits from now on wakes the next one
        self._last_start = self.clock()
        self.m.wakeups.labels(reason).inc()


class NotifyListener:
    """LISTENs on a connection of its own and wakes the poll loop when agno commits a finished run.

    ``tables()`` gives the tables the collector reads, as (schema, table) (nothing is listened for
    before the first discovery); ``active()`` whether this replica collects (a standby does not
    listen: its polls are not running, and each listener is one more backend each notifying commit
    signals). With ``mode`` "auto" it listens while a table read carries the trigger (looked for
    every ``recheck`` seconds, on a short connection while none does); with True always; with False
    it never runs. A failed connection is retried with :func:`exporter.retry.poll_backoff` from
    ``LISTEN_MIN_BACKOFF`` up to ``max_backoff`` seconds (the poll loop's policy, from a shorter
    start; ``interval`` is only named in the log); on every (re)opened LISTEN the loop is woken once,
    for what was committed while nobody listened. ``clock`` (monotonic seconds), ``sleep`` and ``rng``
    (the backoff's jitter) are injected. Metrics: ``listening`` 1 while LISTENing, and
    ``notifications`` counts those received for a table read.
    """

    def __init__(self, opts: ConnectOptions, wakeup: Wakeup, tables: Callable[[], Sequence[Table]],
                 active: Callable[[], bool], mode: WakeMode, recheck: float, interval: float,
                 max_backoff: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
                 rng: random.Random | None = None) -> None:
        self.opts = ConnectOptions(opts.url, opts.application_name + "-listen", opts.statement_timeout,
                                   opts.connect_timeout, read_only=True)
        self.wakeup = wakeup
        self.tables = tables
        self.active = active
        self.mode = mode
        self.recheck = recheck
        self.interval = interval
        self.backoff = poll_backoff(LISTEN_MIN_BACKOFF, max_backoff, rng)
        self.clock = clock
        self.sleep = sleep
        self.m = wakeup.m
        self._told: set[str] = set()  # what was logged once per process

    def _once(self, key: str, level: int, msg: str, *args: object) -> None:
        if key not in self._told:
            self._told.add(key)
            log.log(level, msg, *args)

    async def run(self) -> None:
        """Listen forever (cancel the task to stop)."""
        failures = 0
        while True:
            tables = list(self.tables())
            if not self.active() or not tables:  # a standby, or before the first discovery: no query
                await self.sleep(LISTEN_CHECK)
                continue
            try:
                listened = await self._session(tables)
                failures = 0
                if not listened:
                    await self.sleep(self.recheck)
            except (psycopg.Error, OSError) as exc:
                failures += 1
                delay = self.backoff.delay(failures)
                log.warning("wake-up: LISTEN connection failed, polling every %gs until it is back (retry in"
                            " %.1fs): %s", self.interval, delay, redact(one_line(exc), self.opts.url))
                await self.sleep(delay)
            finally:
                self.m.listening.set(0)

    async def _session(self, tables: list[Table]) -> bool:
        """One LISTEN connection, until leadership or the tables change; False when there was nothing
        to listen for (mode auto, no trigger on a table read)."""
        conn = await connect(self.opts)
        try:
            found = await triggered(conn, tables)
            if not self._report(tables, found):
                return False
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
            self.m.listening.set(1)
            self._once("listening", logging.INFO, "wake-up: listening for agno's finished runs on %s",
                       ", ".join(f"{s}.{t}" for s, t in sorted(found)) or "channel " + CHANNEL)
            self.wakeup.wake("listen")
            checked = self.clock()
            while self.active():
                wanted = {f"{s}.{t}" for s, t in self.tables()}
                async for n in conn.notifies(timeout=LISTEN_CHECK):
                    if n.payload in wanted:
                        self.m.notifications.inc()
                        self.wakeup.wake("notify")
                if self.clock() - checked >= self.recheck:
                    checked = self.clock()
                    now = list(self.tables())
                    if set(now) != set(tables) or await triggered(conn, now) != found:
                        return True  # look again from the start: a new table, a trigger added or dropped
            return True
        finally:
            await conn.close()

    def _report(self, tables: list[Table], found: set[Table]) -> bool:
        """Whether to listen, and what to say once about tables without the trigger."""
        bare = sorted(f"{s}.{t}" for s, t in set(tables) - found)
        if not found and self.mode == "auto":
            self._once("off", logging.INFO, "wake-up off: no table read has the trigger (agno-exporter"
                       " create-notify-trigger installs it); freshness is bounded by collector.poll_interval")
            return False
        if bare:
            self._once("bare:" + ",".join(bare), logging.WARNING,
                       "wake-up: %s %s no trigger (run agno-exporter create-notify-trigger again): runs written"
                       " there wait for the next poll", ", ".join(bare), "has" if len(bare) == 1 else "have")
        return True
