"""Scrape-time collector of the worker's own gauges.

Active, prefetched and pool size are read from Celery's worker state when
Prometheus scrapes, instead of being kept up to date per task: this costs the
worker nothing per task, and a gauge cannot drift when a pool child dies
without a goodbye (Celery itself removes the request when it reports the loss).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from celery.worker import state as worker_state
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .metrics import SPECS

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
        self._const_names = [k for k, _ in const_labels]
        self._const_values = [v for _, v in const_labels]
        self._on_error = on_error or (lambda exc: None)

    def _gauge(self, name: str, value: float, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
        spec = SPECS[name]
        family = GaugeMetricFamily(name, spec.help, labels=[*spec.labels, *self._const_names])
        family.add_metric([*labels, *self._const_values], value)
        return family

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            worker = self._worker
            active = set(worker_state.active_requests)
            prefetched = sum(1 for r in list(worker_state.reserved_requests) if r not in active)
            prefetched += len(worker_state.scheduled_requests)
            pool = getattr(worker, "pool", None)
            size = getattr(pool, "num_processes", None) if pool is not None else None
            if not isinstance(size, int):
                size = int(getattr(worker, "concurrency", 0) or 0)
            families = [
                self._gauge("celery_worker_up", 1, (str(worker.hostname),)),
                self._gauge("celery_worker_consumer_up", 1 if self._consumer_up() else 0),
                self._gauge("celery_worker_tasks_active", len(active)),
                self._gauge("celery_worker_prefetched_tasks", prefetched),
                self._gauge("celery_worker_pool_size", size),
            ]
        except Exception as exc:  # noqa: BLE001 -- a scrape must not fail on our account
            self._on_error(exc)
            return
        yield from families
