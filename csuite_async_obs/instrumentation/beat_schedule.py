"""What one beat schedule entry says about itself: last run, next due time, period.

Only Celery's public schedule interface is used (``ScheduleEntry.last_run_at``,
``total_run_count``, ``schedule.remaining_estimate``, ``is_due`` and ``nowfun``), which the
interval, crontab and solar schedules implement and every scheduler's entries
(Celery's, django-celery-beat's, RedBeat's) carry, so that no scheduler class is
relied on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from celery.schedules import schedule as interval_schedule

__all__ = ["EntryTimes", "entry_times", "ever_sent"]


@dataclass(frozen=True)
class EntryTimes:
    """Unix times of one entry; ``None`` where its schedule cannot tell."""

    last_run: float | None
    next_due: float | None
    period: float | None


def ever_sent(entry: Any) -> bool:
    """Whether the entry's ``last_run_at`` is a real send.

    Celery gives a new entry ``last_run_at = now`` (RedBeat gives ``None``); only
    ``total_run_count``, kept by every scheduler's store, tells the two apart.
    """
    count = getattr(entry, "total_run_count", 0)
    return getattr(entry, "last_run_at", None) is not None and isinstance(count, int) and count > 0


def _timestamp(schedule: Any, moment: datetime) -> float:
    return float(schedule.maybe_make_aware(moment).timestamp())


def _frozen(schedule: Any, instant: float) -> tuple[Any, list[bool]] | None:
    """A shallow copy of ``schedule`` whose clock (``nowfun``) is stopped at ``instant``,
    and a list that the clock appends to when read; ``None`` if it cannot be copied."""
    read: list[bool] = []
    moment = datetime.fromtimestamp(instant, tz=timezone.utc)

    def now() -> datetime:
        read.append(True)
        return moment

    try:
        tz = schedule.tz
        if tz is not None:  # as app.now() gives it: in the app's timezone
            moment = moment.astimezone(tz)
        frozen = object.__new__(type(schedule))
        # Not copy.copy: Celery's schedules pickle without their app (and timezone).
        frozen.__dict__.update(vars(schedule))
        frozen.nowfun = now
    except Exception:  # noqa: BLE001 -- a schedule of the user's own: the clock method
        return None
    return frozen, read


def _due_after(schedule: Any, after: datetime) -> float | None:
    """Unix time of the first due time after ``after`` (in the past: overdue).

    ``remaining_estimate`` answers relative to the schedule's own clock: it is
    asked on a copy whose clock is stopped at a known instant, which gives the
    due time back exactly (a crontab's whole minutes, an interval's last run plus
    its period), however loaded the machine.  A schedule that does not read its
    clock through ``now()`` is answered relative to the midpoint of two clock
    readings around the call, rounded to the millisecond.
    """
    instant = time.time()
    frozen = _frozen(schedule, instant)
    if frozen is not None:
        copy, read = frozen
        remaining = copy.remaining_estimate(after)
        if not isinstance(remaining, timedelta):
            return None
        if read:
            return float((datetime.fromtimestamp(instant, tz=timezone.utc) + remaining).timestamp())
    before = time.time()
    remaining = schedule.remaining_estimate(after)
    later = time.time()
    if not isinstance(remaining, timedelta):
        return None
    return round((before + later) / 2 + remaining.total_seconds(), 3)


def entry_times(entry: Any, now: float | None = None) -> EntryTimes:
    """Last run, next due time and period of ``entry`` (see the module docstring).

    The next due time is the one Celery's own ``is_due`` works towards: the first
    due time after the last run, in the past while the entry is overdue.  An entry
    that will never be due (disabled, or a schedule with no next occurrence) has
    none, so that an alert on overdue entries cannot fire on it.
    """
    now = time.time() if now is None else now
    schedule = entry.schedule
    last_run_at = getattr(entry, "last_run_at", None)
    last_run = None
    if last_run_at is not None and ever_sent(entry):
        last_run = _timestamp(schedule, last_run_at)
    if getattr(entry, "enabled", True) is False:
        return EntryTimes(last_run, None, _period(schedule, None))
    if last_run_at is None:
        # Never run (RedBeat's new entries): due at once, as its is_due says.
        return EntryTimes(None, now, _period(schedule, now))
    try:
        next_due = _due_after(schedule, last_run_at)
    except NotImplementedError:
        # A schedule of the user's own: is_due's "seconds until next check" is the
        # only public answer, and it is exact when the entry is not due yet.
        due, next_check = schedule.is_due(last_run_at)
        return EntryTimes(last_run, now if due else now + float(next_check), None)
    if next_due is None:
        return EntryTimes(last_run, None, None)
    return EntryTimes(last_run, next_due, _period(schedule, next_due))


def _period(schedule: Any, next_due: float | None) -> float | None:
    """The interval, or the gap between the next two due times of a crontab or solar."""
    if isinstance(schedule, interval_schedule) and type(schedule).remaining_estimate is (
        interval_schedule.remaining_estimate
    ):
        return float(schedule.run_every.total_seconds())
    if next_due is None:
        return None
    try:
        due = datetime.fromtimestamp(next_due, tz=schedule.tz)
        # A moment just past the next due time: the first due time after it is the
        # one after next (a crontab's remaining_delta rounds to the minute).
        following = _due_after(schedule, due + timedelta(seconds=1))
    except (NotImplementedError, OverflowError, ValueError, TypeError, AttributeError):
        return None
    if following is None:
        return None
    period = round(following - next_due, 3)
    return period if period > 0 and math.isfinite(period) else None
