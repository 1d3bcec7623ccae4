"""Scrape-time collector of the worker's own gauges.

Active, prefetched and pool size are read from Celery's worker state when
Prometheus scrapes, instead of being kept up to date per task: this costs the
worker nothing per task, and a gauge cannot drift when a pool child dies
without a goodbye (Celery itself removes the request when it reports the loss).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..compat import pool_size, worker_task_counts
from ..metrics.catalog import SPECS
from ..metrics.const_labels import ConstLabels

__all__ = ["WorkerStateCollector"]


class WorkerStateCollector(Collector):
    """Yields ``celery_worker_*`` gauges for one running worker."""

    def __init__(
        self,
        worker: Any,
        consumer_up: Callable[[], bool],
        const_labels: tuple[tuple[str, str], ...] = (),
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._worker = worker
        self._consumer_up = consumer_up
        self._const = ConstLabels.of(const_labels)
        self._on_error = on_error or (lambda exc: None)

    def _gauge(self, name: str, value: float, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, SPECS[name].help, labels=self._const.label_names(name))
        family.add_metric(self._const.with_values(*labels), value)
        return family

    def collect(self) -> Iterator[GaugeMetricFamily]:
        # Each reading on its own: one that fails (counted in
        # csuite_async_obs_instrumentation_errors_total{hook="collect"}, and
        # logged) costs its own gauges, never celery_worker_up or the scrape.
        worker = self._worker
        readings: list[tuple[str, Callable[[], float], tuple[str, ...]]] = [
            ("celery_worker_up", lambda: 1, (str(getattr(worker, "hostname", "")),)),
            ("celery_worker_consumer_up", lambda: 1 if self._consumer_up() else 0, ()),
            ("celery_worker_pool_size", lambda: pool_size(worker), ()),
        ]
        for name, read, labels in readings:
            try:
                yield self._gauge(name, read(), labels)
            except Exception as exc:  # noqa: BLE001 -- a scrape must not fail on our account
                self._on_error(exc)
        try:
            active, prefetched = worker_task_counts(worker)
        except Exception as exc:  # noqa: BLE001
            self._on_error(exc)
            return
        yield self._gauge("celery_worker_tasks_active", active)
        yield self._gauge("celery_worker_prefetched_tasks", prefetched)
