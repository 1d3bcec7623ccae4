"""Sparse exponential buckets: the state of one Prometheus native histogram.

A native histogram's bucket ``i`` of schema ``s`` holds the observations in
``(base**(i-1), base**i]`` with ``base = 2**(2**-s)``; only buckets that were
hit exist.  Observations with ``|v| <= zero_threshold`` go to the zero bucket.
The bucket index is computed from ``math.frexp`` as client_golang does, so the
boundaries are exact powers of two at every schema.  When more than
``max_buckets`` buckets exist, the schema is lowered by one (each pair of
buckets merged), which halves the resolution and keeps the memory and the
exposition bounded whatever the values.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from dataclasses import dataclass

__all__ = [
    "DEFAULT_MAX_BUCKETS",
    "DEFAULT_SCHEMA",
    "DEFAULT_ZERO_THRESHOLD",
    "NativeBuckets",
    "NativeSnapshot",
    "Spans",
    "spans_and_deltas",
]

#: Schema 3: each bucket is 2**(1/8) ~ 1.09 times the previous one, so a quantile
#: read from it is within about 4.4% of the true value (half a bucket's width).
DEFAULT_SCHEMA = 3
#: client_golang's default: 2**-128, the smallest threshold Prometheus keeps apart
#: from zero; a task never runs that briefly, so in practice only 0 lands here.
DEFAULT_ZERO_THRESHOLD = 2.0**-128
#: Buckets before the resolution is halved (client_golang's common choice is 160).
DEFAULT_MAX_BUCKETS = 160

# Per schema > 0: the 2**schema bucket bounds within one power of two, as
# fractions in [0.5, 1) of that power (frexp's mantissa range).
_BOUNDS = {schema: [2.0 ** (j / 2**schema - 1) for j in range(2**schema)] for schema in range(1, 9)}


def bucket_index(value: float, schema: int) -> int:
    """The index of the bucket that holds ``value`` (> 0) at ``schema``."""
    frac, exp = math.frexp(value)
    if schema > 0:
        bounds = _BOUNDS[schema]
        return bisect_left(bounds, frac) + (exp - 1) * len(bounds)
    index = exp - 1 if frac == 0.5 else exp
    offset = (1 << -schema) - 1
    return (index + offset) >> -schema


Spans = list[tuple[int, int]]  # (offset, length): protobuf's BucketSpan


def spans_and_deltas(buckets: dict[int, float]) -> tuple[Spans, list[int]]:
    """The exposition's spans and count deltas of sparse buckets.

    A span's offset is the gap from the end of the previous span (from 0 for the
    first); counts are written as the difference from the previous bucket's.
    Empty buckets inside a gap of at most two are written as zeros, which costs
    less than a new span.
    """
    spans: Spans = []
    deltas: list[int] = []
    previous_count = 0
    next_index: int | None = None
    for index in sorted(buckets):
        count = int(buckets[index])
        if next_index is None:
            spans.append((index, 1))
        else:
            gap = index - next_index
            if gap <= 2:
                offset, length = spans[-1]
                for _ in range(gap):
                    deltas.append(-previous_count)
                    previous_count = 0
                spans[-1] = (offset, length + gap + 1)
            else:
                spans.append((gap, 1))
        deltas.append(count - previous_count)
        previous_count = count
        next_index = index + 1
    return spans, deltas


@dataclass(frozen=True)
class NativeSnapshot:
    """A consistent read of one native histogram."""

    schema: int
    zero_threshold: float
    zero_count: float
    count: float
    sum: float
    positive: dict[int, float]
    negative: dict[int, float]


class NativeBuckets:
    """The native-histogram state of one histogram child; thread-safe."""

    __slots__ = (
        "_lock",
        "count",
        "max_buckets",
        "negative",
        "positive",
        "schema",
        "sum",
        "zero_count",
        "zero_threshold",
    )

    def __init__(
        self,
        schema: int = DEFAULT_SCHEMA,
        zero_threshold: float = DEFAULT_ZERO_THRESHOLD,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
    ) -> None:
        if not -4 <= schema <= 8:
            raise ValueError(f"schema {schema} is outside -4..8")
        self.schema = schema
        self.zero_threshold = zero_threshold
        self.max_buckets = max_buckets
        self.zero_count = 0.0
        self.count = 0.0
        self.sum = 0.0
        self.positive: dict[int, float] = {}
        self.negative: dict[int, float] = {}
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        if value != value:  # NaN: counted, in no bucket (as Prometheus does)
            with self._lock:
                self.count += 1
                self.sum += value
            return
        with self._lock:
            self.count += 1
            self.sum += value
            magnitude = abs(value)
            if magnitude <= self.zero_threshold:
                self.zero_count += 1
                return
            buckets = self.positive if value > 0 else self.negative
            index = bucket_index(magnitude, self.schema) if magnitude != math.inf else None
            if index is None:
                # +-Inf: the last finite bucket's next one, as client_golang does.
                index = bucket_index(1.7976931348623157e308, self.schema) + 1
            buckets[index] = buckets.get(index, 0.0) + 1
            if len(self.positive) + len(self.negative) > self.max_buckets and self.schema > -4:
                self._halve()

    def _halve(self) -> None:
        """Lower the schema by one: bucket i becomes ceil(i / 2) (pairs merged)."""
        self.schema -= 1
        for name in ("positive", "negative"):
            merged: dict[int, float] = {}
            for index, count in getattr(self, name).items():
                key = (index + 1) >> 1
                merged[key] = merged.get(key, 0.0) + count
            setattr(self, name, merged)

    def snapshot(self) -> NativeSnapshot:
        with self._lock:
            return NativeSnapshot(
                self.schema,
                self.zero_threshold,
                self.zero_count,
                self.count,
                self.sum,
                dict(self.positive),
                dict(self.negative),
            )
