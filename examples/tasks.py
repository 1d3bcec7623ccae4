"""Tasks of the FastAPI example; a worker imports them with CELERY_IMPORTS=examples.tasks."""

from __future__ import annotations

from statistics import fmean
from typing import Any

from csuite_async_obs import async_task


@async_task(name="examples.analyse_metrics")
def analyse_metrics(values: list[float]) -> dict[str, Any]:
    """The heavy work the web request hands off: summary statistics of a metric series."""
    if not values:
        return {"count": 0, "mean": None, "min": None, "max": None}
    return {"count": len(values), "mean": fmean(values), "min": min(values), "max": max(values)}
