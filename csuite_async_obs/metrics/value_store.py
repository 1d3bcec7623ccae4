"""Every value of one metric in one flat array of doubles, owned by the package.

prometheus_client gives each series a value object of its own (a float behind a
lock), so reading 25,000 series means visiting 25,000 objects scattered over the
heap: about 7 ms a scrape at 500 task names, whether anything changed or not.
Here a metric's children keep their values side by side in one ``array('d')``:
the exposition copies the whole array (one ``memcpy``), compares it with the
last scrape's copy (one ``memcmp``) and formats only the series whose slots
changed.

The children stay prometheus_client's own objects: while a child is built, its
value class is :class:`SlotValue` (see :func:`~csuite_async_obs.compat.in_memory_values`),
so ``inc()``, ``set()``, ``observe()``, ``collect()`` and ``generate_latest`` all
work on the slots unchanged.  A child takes one slot (counter, gauge) or
``1 + buckets`` (histogram: its sum, then one per bucket, not cumulative), in the
order the children were created, which is the order of the metric's children.
"""

from __future__ import annotations

import math
import threading
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["SlotValue", "ValueStore"]

Key = tuple[str, ...]


class SlotValue:
    """prometheus_client's value interface (``inc``, ``set``, ``get``, exemplars) on one
    slot of a :class:`ValueStore`; the values of one child share one lock."""

    __slots__ = ("_exemplar", "_lock", "_slot", "_values")
    _multiprocess = False

    def __init__(self, values: array[float], slot: int, lock: threading.Lock) -> None:
        self._values = values
        self._slot = slot
        self._lock = lock
        self._exemplar: Any = None

    def inc(self, amount: float) -> None:
        with self._lock:
            self._values[self._slot] += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        with self._lock:
            self._values[self._slot] = value

    def set_exemplar(self, exemplar: Any) -> None:
        with self._lock:
            self._exemplar = exemplar

    def get(self) -> float:
        with self._lock:
            return self._values[self._slot]

    def get_exemplar(self) -> Any:
        with self._lock:
            return self._exemplar


class _ChildValues:
    """The value class while one child is built: its values take one block of slots."""

    def __init__(self, store: ValueStore) -> None:
        self._store = store
        self._base = -1
        self._lock = threading.Lock()
        self._buckets = 0

    def __call__(
        self,
        typ: str,
        metric_name: str,
        name: str,
        labelnames: Sequence[str],
        labelvalues: Sequence[str],
        help_text: str,
        **kwargs: Any,
    ) -> SlotValue:
        store = self._store
        if store.bounds is None:
            key, offset = tuple(labelvalues), 0
        elif name.endswith("_bucket"):
            key, offset = tuple(labelvalues[:-1]), 1 + self._buckets
            self._buckets += 1
        elif name.endswith("_sum"):
            key, offset = tuple(labelvalues), 0
        else:  # the probe (compat) found only _sum and _bucket values
            raise RuntimeError(f"unexpected histogram value {name!r}")
        if offset >= store.width:
            raise RuntimeError(f"{name}: more buckets than the store's {store.width - 1}")
        if self._base < 0:
            self._base = store.allocate(key, self._lock)
        return SlotValue(store.values, self._base + offset, self._lock)


class ValueStore:
    """The slots of one metric's children.  ``bounds`` (a histogram's upper bounds,
    ``+Inf`` last) makes every child ``1 + len(bounds)`` slots wide."""

    def __init__(self, name: str, bounds: Iterable[float] | None = None) -> None:
        self.name = name
        self.bounds: tuple[float, ...] | None = None
        if bounds is not None:
            upper = tuple(float(b) for b in bounds)
            self.bounds = upper if upper and upper[-1] == math.inf else (*upper, math.inf)
        self.width = 1 if self.bounds is None else 1 + len(self.bounds)
        #: Grown in place: every SlotValue keeps this very object.
        self.values: array[float] = array("d")
        #: Bumped whenever a child is added or forgotten (the exposition's cue to
        #: read the layout again).
        self.generation = 0
        self._children: dict[Key, tuple[int, threading.Lock]] = {}
        self._lock = threading.Lock()

    def child_values(self) -> Callable[..., SlotValue]:
        """A value class for building one child (see the module's docstring)."""
        return _ChildValues(self)

    def allocate(self, key: Key, lock: threading.Lock) -> int:
        with self._lock:
            base = len(self.values)
            self.values.extend([0.0] * self.width)
            # A child built again under the same labels (after remove()) takes new slots.
            self._children.pop(key, None)
            self._children[key] = (base, lock)
            self.generation += 1
        return base

    def retain(self, keys: Iterable[Key]) -> None:
        """Forget every child not in ``keys`` (after the metric removed some).  Their
        slots are not reused: the package never removes a task's series."""
        keep = set(keys)
        with self._lock:
            for key in [k for k in self._children if k not in keep]:
                del self._children[key]
            self.generation += 1

    def layout(self) -> tuple[int, list[Key], list[int]]:
        """``(generation, label values, first slots)`` of the children, in order."""
        with self._lock:
            keys = list(self._children)
            return self.generation, keys, [self._children[k][0] for k in keys]

    def snapshot(self) -> bytes:
        """Every slot's value as raw doubles, copied in one go."""
        return self.values.tobytes()

    def incrementer(self, key: Key) -> Callable[[], None]:
        """``inc(1)`` of the child ``key``, bound once for the per-task hot path."""
        with self._lock:
            slot, lock = self._children[key]
        values = self.values

        def inc() -> None:
            with lock:
                values[slot] += 1

        return inc

    def observer(self, key: Key) -> Callable[[float], None]:
        """``observe`` of the histogram child ``key``: the sum, then the first bucket whose
        bound is >= the amount (NaN in none), under the child's one lock."""
        assert self.bounds is not None, f"{self.name} is not a histogram"
        with self._lock:
            base, lock = self._children[key]
        values, bounds, first = self.values, self.bounds, base + 1

        def observe(amount: float) -> None:
            with lock:
                values[base] += amount
                if amount == amount:
                    values[first + bisect_left(bounds, amount)] += 1

        return observe

    def items(self) -> list[tuple[Key, list[float]]]:
        """Every child's values, in order: ``[value]``, or a histogram's per-bucket counts
        then its sum (the shape of :func:`~csuite_async_obs.compat.histogram_values`)."""
        _, keys, bases = self.layout()
        raw = array("d")
        raw.frombytes(self.snapshot())
        out = []
        for key, base in zip(keys, bases, strict=True):
            if self.bounds is None:
                out.append((key, [raw[base]]))
            else:
                out.append((key, [*raw[base + 1 : base + self.width], raw[base]]))
        return out
