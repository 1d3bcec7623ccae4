"""Small statistics for the benchmark figures: t-intervals, percentiles, slopes.

Ratios are summarised on the log scale (a 10% saving and a 10% cost weigh the
same) with a Student t-interval over independent pairs of rounds; with one pair
there is no interval, only the value.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "Interval",
    "bootstrap_median_diff",
    "log_ratio_interval",
    "mean_interval",
    "percentile",
    "slope",
    "t_quantile",
]

# Two-sided 95% Student t quantiles, by degrees of freedom.
_T95 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    12: 2.179,
    15: 2.131,
    20: 2.086,
    25: 2.060,
    30: 2.042,
    40: 2.021,
    60: 2.000,
    120: 1.980,
}


def t_quantile(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (table, rounded down)."""
    if df <= 0:
        return math.inf
    best = max(k for k in _T95 if k <= df) if df < 120 else 120
    return _T95[best] if df < 1000 else 1.960


@dataclass(frozen=True)
class Interval:
    """A point estimate with a 95% interval (``lo``/``hi`` are ``None`` without one)."""

    value: float
    lo: float | None
    hi: float | None
    n: int
    method: str
    spread: tuple[float, float] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation."""
    data = sorted(values)
    if not data:
        return math.nan
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def mean_interval(values: Sequence[float]) -> Interval:
    """Mean of ``values`` with a t-interval."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return Interval(mean, None, None, n, "single value")
    half = t_quantile(n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, "t-interval", (min(values), max(values)))


def log_ratio_interval(ratios: Sequence[float]) -> Interval:
    """Geometric mean of ``ratios`` with a t-interval computed on their logs."""
    logs = [math.log(r) for r in ratios if r > 0]
    n = len(logs)
    if n == 0:
        return Interval(math.nan, None, None, 0, "no data")
    centre = statistics.fmean(logs)
    spread = (min(ratios), max(ratios))
    if n < 2:
        return Interval(math.exp(centre), None, None, n, "single pair", spread)
    half = t_quantile(n - 1) * statistics.stdev(logs) / math.sqrt(n)
    return Interval(
        math.exp(centre),
        math.exp(centre - half),
        math.exp(centre + half),
        n,
        "t-interval on log ratios of pairs",
        spread,
    )


def bootstrap_median_diff(
    a: Sequence[float], b: Sequence[float], resamples: int = 2000, seed: int = 7
) -> Interval:
    """Median of paired differences ``a[i] - b[i]`` with a percentile-bootstrap interval."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    value = statistics.median(diffs)
    if len(diffs) < 2:
        return Interval(value, None, None, len(diffs), "single pair")
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(diffs, k=len(diffs))) for _ in range(resamples))
    return Interval(
        value,
        percentile(meds, 2.5),
        percentile(meds, 97.5),
        len(diffs),
        "bootstrap (percentile) of the median paired difference",
        (min(diffs), max(diffs)),
    )


def slope(xs: Sequence[float], ys: Sequence[float]) -> Interval:
    """Least-squares slope of ``ys`` against ``xs`` with a t-interval."""
    n = len(xs)
    if n < 3:
        return Interval(math.nan, None, None, n, "too few points")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    b = sxy / sxx
    a = my - b * mx
    resid = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=True))
    se = math.sqrt(resid / (n - 2) / sxx) if sxx else math.inf
    half = t_quantile(n - 2) * se
    return Interval(b, b - half, b + half, n, "least squares, t-interval")
