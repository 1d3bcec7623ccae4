"""Beat's metrics: what the scheduler did (sends), and a snapshot of its entries.

Beat's thread writes (:meth:`BeatState.sent`, :meth:`BeatState.failed`,
:meth:`BeatState.refresh`); a scrape only reads the last snapshot, so it never
calls into the scheduler (whose store may be a shelve, a database or Redis) and
never waits on it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..metrics.catalog import OTHER, SPECS
from ..metrics.const_labels import ConstLabels
from .beat_schedule import EntryTimes, entry_times

__all__ = ["BeatCollector", "BeatState", "EntryRow"]

Key = tuple[str, str]  # (entry label, task label)
_MAX_FOLDED = 10_000  # names remembered as folded: a schedule's size, not a stream
Guard = Callable[[str], str]


@dataclass(frozen=True)
class EntryRow:
    """One entry at the last tick, with its labels already bounded."""

    key: Key
    last_sent: float  # from the scheduler's store; a send seen since is newer
    next_due: float | None
    period: float | None


@dataclass
class _Counts:
    sent: float = 0.0
    errors: float = 0.0
    last_sent: float | None = None  # observed by this process
    #: The first failed send since the last one that went out.  Celery moves an
    #: entry's last run on a failed send as on a good one; the entry is still due
    #: from then, so its next due time stays there until a send goes out.
    failing_since: float | None = None


@dataclass
class BeatState:
    """Sends and the entry snapshot of one beat process."""

    guard_entry: Guard
    guard_task: Guard
    on_error: Callable[[BaseException], None]
    running: bool = False
    last_tick: float = 0.0
    rows: tuple[EntryRow, ...] = ()
    #: Entries in the schedule at the last snapshot: more than ``rows`` when entries
    #: past the cap share the row ``other``, or an odd entry has none.
    size: int = 0
    _counts: dict[Key, _Counts] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: Entry names past the cap, already counted once as an overflow.
    _folded: set[str] = field(default_factory=set)

    def key(self, entry: Any, event: bool = True) -> Key:
        """The bounded labels of ``entry``.  A send (``event``) past the cap counts in
        the overflow counter like any event; a snapshot counts a folded entry once."""
        name = str(entry.name)
        if not event and name in self._folded:
            label = OTHER
        else:
            label = self.guard_entry(name)
            if label == OTHER and name != OTHER and len(self._folded) < _MAX_FOLDED:
                self._folded.add(name)
        return (label, self.guard_task(str(entry.task)))

    def _count(self, key: Key) -> _Counts:
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = _Counts()
        return counts

    def sent(self, entry: Any, at: float) -> None:
        with self._lock:
            counts = self._count(self.key(entry))
            counts.sent += 1
            counts.last_sent = at
            counts.failing_since = None

    def failed(self, entry: Any, at: float) -> None:
        with self._lock:
            counts = self._count(self.key(entry))
            counts.errors += 1
            if counts.failing_since is None:
                counts.failing_since = at

    def refresh(self, entries: Iterable[Any], now: float | None = None) -> None:
        """Rebuild the snapshot from the scheduler's entries (beat's thread)."""
        now = time.time() if now is None else now
        rows: dict[Key, EntryRow] = {}
        size = 0
        for entry in entries:
            size += 1
            try:
                key = self.key(entry, event=False)
                times = entry_times(entry, now)
            except Exception as exc:  # noqa: BLE001 -- one odd entry costs its own row
                self.on_error(exc)
                continue
            rows[key] = _row(key, times, rows.get(key))
        with self._lock:
            for key in rows:
                self._count(key)
        self.rows = tuple(rows.values())
        self.size = size

    def counts(self) -> dict[Key, tuple[float, float, float, float | None]]:
        """(sent, failed sends, last send this process saw, failing since) per entry."""
        with self._lock:
            return {
                key: (c.sent, c.errors, c.last_sent or 0.0, c.failing_since)
                for key, c in self._counts.items()
            }


def _row(key: Key, times: EntryTimes, other: EntryRow | None) -> EntryRow:
    """The row of one entry; two entries past the cap share ``other``'s row."""
    stored = times.last_run or 0.0
    if other is None:
        return EntryRow(key, stored, times.next_due, times.period)
    # Entries folded into "other": the latest send, the soonest due time.
    dues = [d for d in (other.next_due, times.next_due) if d is not None]
    return EntryRow(key, max(stored, other.last_sent), min(dues) if dues else None, other.period)


class BeatCollector(Collector):
    """Yields ``celery_beat_*`` from a :class:`BeatState` (no call into the scheduler)."""

    def __init__(self, state: BeatState, const_labels: tuple[tuple[str, str], ...] = ()) -> None:
        self._state = state
        self._const = ConstLabels.of(const_labels)

    def _gauge(self, name: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, SPECS[name].help, labels=self._const.label_names(name))

    def _counter(self, name: str) -> CounterMetricFamily:
        return CounterMetricFamily(
            name[: -len("_total")], SPECS[name].help, labels=self._const.label_names(name)
        )

    def collect(self) -> Iterator[Metric]:
        state = self._state
        values = self._const.with_values
        rows = state.rows
        counts = state.counts()
        up = self._gauge("celery_beat_up")
        up.add_metric(values(), 1 if state.running else 0)
        tick = self._gauge("celery_beat_last_tick_timestamp_seconds")
        tick.add_metric(values(), state.last_tick)
        size = self._gauge("celery_beat_entries")
        size.add_metric(values(), state.size)
        last_sent = self._gauge("celery_beat_entry_last_sent_timestamp_seconds")
        next_due = self._gauge("celery_beat_entry_next_due_timestamp_seconds")
        period = self._gauge("celery_beat_entry_period_seconds")
        sent = self._counter("celery_beat_entry_sent_total")
        errors = self._counter("celery_beat_entry_send_errors_total")
        listed = {row.key for row in rows}
        for row in rows:
            labels = values(*row.key)
            n_sent, n_errors, seen, failing_since = counts.get(row.key, (0.0, 0.0, 0.0, None))
            last_sent.add_metric(labels, max(row.last_sent, seen))
            due = row.next_due
            if failing_since is not None:
                due = failing_since if due is None else min(due, failing_since)
            if due is not None:
                next_due.add_metric(labels, due)
            if row.period is not None:
                period.add_metric(labels, row.period)
            # An entry's counters exist from its first snapshot, at 0.
            sent.add_metric(labels, n_sent)
            errors.add_metric(labels, n_errors)
        # Counters of entries that left the schedule stay: a counter does not go back.
        for key, (n_sent, n_errors, _, _) in counts.items():
            if key not in listed:
                sent.add_metric(values(*key), n_sent)
                errors.add_metric(values(*key), n_errors)
        yield from (up, tick, size, last_sent, next_due, period, sent, errors)
