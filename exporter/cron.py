"""Cron expressions as crontab reads them, for the probe scheduler and for config validation.

Why a module of its own: validating a ``cron:`` string in ``exporter.config`` must not import the
scheduler (agno, SQLAlchemy, openai). Day-of-week follows crontab's numbering (0 or 7 = Sunday), not
APScheduler 3's (0 = Monday); schedules are evaluated in UTC.
"""

from __future__ import annotations

import logging
from datetime import UTC

from apscheduler.triggers.cron import CronTrigger

log = logging.getLogger("agno_exporter.scheduler")

_DOW_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _crontab_day(text: str) -> int:
    if text[:3] in _DOW_NAMES:
        return _DOW_NAMES.index(text[:3])
    day = int(text)
    if not 0 <= day <= 7:
        raise ValueError(text)
    return day


def _crontab_dow(field_: str) -> str:
    """A crontab day-of-week field (0/7 = Sunday) -> APScheduler 3's, as explicit day names."""
    days: set[int] = set()
    for item in field_.lower().split(","):
        base, slash, step_text = item.partition("/")
        step = int(step_text) if slash else 1
        ends = [0, 6] if base == "*" else [_crontab_day(p) for p in base.split("-")]
        if len(ends) == 1:
            ends.append(6 if slash else ends[0])  # "3/2": from 3 to the end of the week
        lo, hi = ends if len(ends) == 2 else (1, 0)
        if step < 1 or lo > hi:
            raise ValueError(item)
        days.update(d % 7 for d in range(lo, hi + 1, step))
    return "*" if days == set(range(7)) else ",".join(_DOW_NAMES[d] for d in sorted(days))


def cron_trigger(expr: str, jitter: float | None = None) -> CronTrigger:
    minute, hour, day, month, dow = expr.split()
    try:
        dow = _crontab_dow(dow)
    except (ValueError, IndexError):
        log.warning("cron %r: day-of-week field kept with APScheduler's numbering (0 = Monday)", expr)
    return CronTrigger(minute=minute, hour=hour, day=day, month=month, day_of_week=dow, timezone=UTC,
                       jitter=jitter)
