"""``celery beat`` made observable: the scheduler instance's sends, ticks and entries.

:func:`instrument` connects ``beat_init``; when a beat process starts on the
app, :class:`BeatHooks` wraps three methods of *that scheduler instance* --
``apply_async`` (every send, whoever calls it: Celery's ``apply_entry``,
RedBeat's ``maybe_due``), ``tick`` and ``close`` -- so that no scheduler class
is relied on (Celery's ``PersistentScheduler`` and ``Scheduler``,
django-celery-beat's and RedBeat's subclasses all keep these three).  An error
inside the instrumentation is counted and logged, never raised into beat; a
failed send is re-raised exactly as it came, for beat to log as it always has.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from .beat_collector import BeatState
from .beat_schedule import entry_times

__all__ = ["BeatHooks", "scheduler_entries"]

#: Seconds between two snapshots of an unchanged schedule (a send rebuilds it at
#: once): entries a scheduler adds or drops on its own sync are seen this late.
REFRESH_INTERVAL = 5.0
#: The same for RedBeat, whose full listing costs one Redis round trip an entry.
REDBEAT_REFRESH_INTERVAL = 30.0


def scheduler_entries(scheduler: Any) -> list[Any]:
    """Every entry of the scheduler's schedule.

    ``Scheduler.schedule`` is the whole schedule for Celery's schedulers and
    django-celery-beat's; RedBeat's returns only the entries due now (and the
    next one), so its entries are read from its own index instead.
    """
    conf = getattr(scheduler.app, "redbeat_conf", None)
    from_key = getattr(scheduler.Entry, "from_key", None)
    if conf is not None and from_key is not None:
        from redbeat.schedulers import get_redis  # only where RedBeat is the scheduler

        entries = []
        for key in get_redis(scheduler.app).zrange(conf.schedule_key, 0, -1):
            try:
                entries.append(from_key(key, app=scheduler.app))
            except KeyError:  # removed between the two reads
                continue
        return entries
    return list(scheduler.schedule.values())


class BeatHooks:
    """Wraps one scheduler instance's ``apply_async``, ``tick`` and ``close``."""

    def __init__(
        self,
        scheduler: Any,
        state: BeatState,
        fail: Callable[[str, BaseException], None],
        on_close: Callable[[], None] = lambda: None,
    ) -> None:
        self.scheduler = scheduler
        self.state = state
        self._fail = fail
        self._on_close = on_close
        self._dirty = True
        self._refreshed_at = 0.0
        redbeat = getattr(scheduler.app, "redbeat_conf", None) is not None
        self._interval = REDBEAT_REFRESH_INTERVAL if redbeat else REFRESH_INTERVAL
        self._originals: dict[str, Any] = {}
        #: The methods that were instance attributes already (someone else's
        #: wrapper): put back on uninstall, where the others are only removed.
        self._own: dict[str, Any] = {}

    def install(self) -> None:
        scheduler = self.scheduler
        for name, wrap in (
            ("apply_async", self._wrap_apply_async),
            ("tick", self._wrap_tick),
            ("close", self._wrap_close),
        ):
            original = getattr(scheduler, name)
            self._originals[name] = original
            if name in vars(scheduler):
                self._own[name] = original
            setattr(scheduler, name, wrap(original))
        self.state.running = True
        self.state.last_tick = time.time()
        self.refresh(force=True)

    def uninstall(self) -> None:
        for name in self._originals:
            if name in self._own:
                setattr(self.scheduler, name, self._own[name])
            else:
                self.scheduler.__dict__.pop(name, None)
        self._originals.clear()
        self._own.clear()

    def refresh(self, force: bool = False) -> None:
        now = time.time()
        if not (force or self._dirty or now - self._refreshed_at >= self._interval):
            return
        self._dirty = False
        self._refreshed_at = now
        try:
            self.state.refresh(scheduler_entries(self.scheduler), now)
        except Exception as exc:  # noqa: BLE001 -- beat keeps its schedule whatever we do
            self._fail("beat", exc)

    def _wrap_apply_async(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def apply_async(entry: Any, *args: Any, **kwargs: Any) -> Any:
            # The time the send began, as the scheduler's store keeps it (its
            # last_run_at is set just before): a slow publish, or a restart that
            # reads the store back, does not move the last send.
            started = time.time()
            # The due time this send is for (the entry as it was before the send), which
            # the exported next due keeps while sends fail; the start if it has none.
            due = self._due(entry, started)
            try:
                result = original(entry, *args, **kwargs)
            except BaseException:
                self._record(self.state.failed, entry, due)
                raise
            self._record(self.state.sent, entry, started)
            return result

        return apply_async

    def _due(self, entry: Any, default: float) -> float:
        try:
            due = entry_times(entry, default).next_due
        except Exception as exc:  # noqa: BLE001 -- the send goes on without it
            self._fail("beat", exc)
            return default
        return default if due is None else min(due, default)

    def _record(self, record: Callable[..., None], entry: Any, *args: Any) -> None:
        try:
            record(entry, *args)
            self._dirty = True
        except Exception as exc:  # noqa: BLE001
            self._fail("beat", exc)

    def _wrap_tick(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def tick(*args: Any, **kwargs: Any) -> Any:
            interval = original(*args, **kwargs)
            self.state.last_tick = time.time()
            self.refresh()
            return interval

        return tick

    def _wrap_close(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def close(*args: Any, **kwargs: Any) -> Any:
            self.state.running = False
            try:
                self._on_close()
            except Exception as exc:  # noqa: BLE001
                self._fail("beat", exc)
            return original(*args, **kwargs)

        return close
