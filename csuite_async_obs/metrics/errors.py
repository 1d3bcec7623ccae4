"""Errors caught inside the instrumentation: counted, logged at most once a minute per hook.

Every place that swallows an exception to protect a task, the worker or a
scrape reports it here, so that nothing fails silently:
``csuite_async_obs_instrumentation_errors_total{hook}`` rises (every hook's
series exists at 0, so ``increase()`` sees the first one) and one log line
says what happened.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from .catalog import INSTRUMENTATION_HOOKS, SPECS
from .const_labels import ConstLabels

__all__ = ["ErrorReporter", "error_counter"]

_LOG_INTERVAL = 60.0
_NAME = "csuite_async_obs_instrumentation_errors_total"


class ErrorReporter:
    """``report(hook, exc)``: count through ``count(hook)``, and log (rate-limited)."""

    def __init__(self, count: Callable[[str], None], log: Any) -> None:
        self.count = count
        self.log = log
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, hook: str, exc: BaseException) -> None:
        try:
            self.count(hook)
            now = time.monotonic()
            with self._lock:
                if now - self._last.get(hook, -_LOG_INTERVAL) < _LOG_INTERVAL:
                    return
                self._last[hook] = now
            self.log.error("instrumentation_error", hook=hook, exc_info=exc)
        except Exception:  # noqa: BLE001 -- the last line of defence must not raise
            pass


def error_counter(
    registry: CollectorRegistry, const: ConstLabels | None = None
) -> Callable[[str], None]:
    """The errors counter on ``registry`` (every hook at 0), for processes without
    :class:`~.task_metrics.TaskMetrics` (the standalone exporter); returns ``count(hook)``."""
    const = const or ConstLabels()
    counter = Counter(
        _NAME.removesuffix("_total"), SPECS[_NAME].help, const.label_names(_NAME), registry=registry
    )
    children = {hook: counter.labels(hook, *const.values) for hook in INSTRUMENTATION_HOOKS}

    def count(hook: str) -> None:
        child = children.get(hook)
        if child is None:
            child = counter.labels(hook, *const.values)
        child.inc()

    return count
