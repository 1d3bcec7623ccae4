"""The task metrics, built on the registry they are given, and their per-task children.

:class:`TaskMetrics` builds every task metric of :mod:`.catalog` on a registry,
caches the labelled children per (task, queue) so that the per-task cost is a
dict lookup plus the update, and bounds label values with :class:`LabelGuard`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..compat import counter_incrementer, histogram_observer, in_memory_values
from ..config.options import ObsSettings
from .catalog import INSTRUMENTATION_HOOKS, OTHER, OUTCOME_STATES, SPECS, TIME_LIMIT_KINDS
from .const_labels import ConstLabels
from .exposition import Family

__all__ = ["LabelGuard", "TaskMetrics", "TaskSeries"]


class _InMemory:
    """Mixin: the metric keeps its values in this process's memory, always
    (see :func:`~csuite_async_obs.compat.in_memory_values`)."""

    def _metric_init(self) -> None:
        in_memory_values(super()._metric_init)  # type: ignore[misc]


class _Counter(_InMemory, Counter):
    pass


class _Histogram(_InMemory, Histogram):
    pass


class _Gauge(_InMemory, Gauge):
    pass


def _base(name: str) -> str:
    """prometheus_client adds ``_total`` to counters itself."""
    return name[: -len("_total")] if name.endswith("_total") else name


class LabelGuard:
    """Admits at most ``limit`` distinct values of one label; the rest become ``other``."""

    def __init__(self, label: str, limit: int, overflow: Counter) -> None:
        self.label = label
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._overflow = overflow

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        self._overflow.inc()
        return OTHER


class TaskMetrics:
    """Every metric of the package, registered on ``registry``.

    The object holds no per-task state beyond the cached label children, which
    are bounded by the label guards.
    """

    def __init__(self, registry: CollectorRegistry, settings: ObsSettings | None = None) -> None:
        self.settings = settings or ObsSettings()
        self.registry = registry
        self.const = const = ConstLabels.of(self.settings.const_labels)
        self._const_values = const.values

        # In exposition order; the renderer is told the catalog's names, so it
        # reads nothing but values from prometheus_client.
        self.families: list[Family] = []

        def counter(name: str) -> Counter:
            labels = tuple(const.label_names(name))
            metric = _Counter(_base(name), SPECS[name].help, labels, registry=registry)
            self.families.append(Family(metric, _base(name), SPECS[name].help, labels))
            return metric

        def gauge(name: str) -> Gauge:
            labels = tuple(const.label_names(name))
            metric = _Gauge(name, SPECS[name].help, labels, registry=registry)
            self.families.append(Family(metric, name, SPECS[name].help, labels))
            return metric

        def histogram(name: str, buckets: Iterable[float]) -> Histogram:
            labels = tuple(const.label_names(name))
            metric = _Histogram(
                name, SPECS[name].help, labels, buckets=tuple(buckets), registry=registry
            )
            self.families.append(Family(metric, name, SPECS[name].help, labels))
            return metric

        self.sent = counter("celery_task_sent_total")
        self.received = counter("celery_task_received_total")
        self.redelivered = counter("celery_task_redelivered_total")
        self.started = counter("celery_task_started_total")
        self.succeeded = counter("celery_task_succeeded_total")
        self.failed = counter("celery_task_failed_total")
        self.retried = counter("celery_task_retried_total")
        self.revoked = counter("celery_task_revoked_total")
        self.rejected = counter("celery_task_rejected_total")
        self.runtime = histogram("celery_task_runtime_seconds", self.settings.runtime_buckets)
        self.queue_wait = histogram(
            "celery_task_queue_wait_seconds", self.settings.queue_wait_buckets
        )
        self.queue_wait_unmeasured = counter("celery_task_queue_wait_unmeasured_total")
        self.queue_wait_clamped = counter("celery_task_queue_wait_clamped_total")
        self.time_limit = counter("celery_task_time_limit_exceeded_total")
        self.worker_lost = counter("celery_task_worker_lost_total")
        # Per task name, not per queue: "when did it last succeed" is asked of a task.
        self.last_success = gauge("celery_task_last_success_timestamp_seconds")
        self.last_failure = gauge("celery_task_last_failure_timestamp_seconds")
        self.errors = counter("csuite_async_obs_instrumentation_errors_total")
        self.overflow = counter("csuite_async_obs_label_overflow_total")
        # Every hook's series exists at 0, so that increase() sees the first error.
        self._errors = {
            hook: self.errors.labels(hook, *self._const_values) for hook in INSTRUMENTATION_HOOKS
        }
        self.guard_name = self.guard("name", self.settings.max_task_names)
        self.guard_queue = self.guard("queue_name", self.settings.max_queue_names)
        self.guard_exception = self.guard("exception", self.settings.max_exceptions)
        self._children: dict[tuple[str, str], TaskSeries] = {}
        self._children_lock = threading.Lock()

    @property
    def collectors(self) -> tuple[Counter | Gauge | Histogram, ...]:
        """Every metric object of this instance, in exposition order."""
        return tuple(family.metric for family in self.families)

    def unregister(self) -> None:
        """Remove every metric of this object from its registry."""
        for metric in self.collectors:
            self.registry.unregister(metric)

    def guard(self, label: str, limit: int) -> LabelGuard:
        """A guard of ``label`` whose overflow is counted with this object's metrics."""
        return LabelGuard(label, limit, self.overflow.labels(label, *self._const_values))

    def error(self, hook: str) -> None:
        """Count one error caught inside the instrumentation."""
        child = self._errors.get(hook)
        if child is None:  # a hook missing from the catalog: still counted
            child = self.errors.labels(hook, *self._const_values)
        child.inc()

    def task(self, name: str, queue: str) -> TaskSeries:
        """The labelled series of one (task name, queue), created at 0 on first use."""
        key = (name, queue)
        series = self._children.get(key)
        if series is not None:
            return series
        with self._children_lock:
            series = self._children.get(key)
            if series is not None:
                return series
            guarded = (self.guard_name(name), self.guard_queue(queue))
            series = self._children.get(guarded)
            if series is None:
                series = TaskSeries(self, *guarded)
                self._children[guarded] = series
            # Raw keys are cached only while they are their own label values,
            # so that an unbounded stream of names cannot grow this dict.
            if guarded == key:
                self._children[key] = series
        return series

    def failed_child(self, series: TaskSeries, exception: str) -> Counter:
        return self.failed.labels(
            series.name, series.queue, self.guard_exception(exception), *self._const_values
        )


class TaskSeries:
    """The children of every task metric for one (name, queue), all created at 0."""

    __slots__ = (
        "_metrics",
        "inc_received",
        "inc_redelivered",
        "inc_started",
        "inc_succeeded",
        "inc_wait_clamped",
        "inc_wait_unmeasured",
        "last_failure",
        "last_success",
        "name",
        "observe_runtime",
        "observe_wait",
        "queue",
        "queue_wait",
        "queue_wait_clamped",
        "queue_wait_unmeasured",
        "received",
        "redelivered",
        "rejected",
        "retried",
        "revoked",
        "runtime",
        "sent",
        "started",
        "succeeded",
        "time_limit",
        "worker_lost",
    )

    def __init__(self, metrics: TaskMetrics, name: str, queue: str) -> None:
        const = metrics._const_values
        self._metrics = metrics
        self.name = name
        self.queue = queue
        self.sent = metrics.sent.labels(name, queue, *const)
        self.received = metrics.received.labels(name, queue, *const)
        self.redelivered = metrics.redelivered.labels(name, queue, *const)
        self.started = metrics.started.labels(name, queue, *const)
        self.succeeded = metrics.succeeded.labels(name, queue, *const)
        self.retried = metrics.retried.labels(name, queue, *const)
        self.revoked = metrics.revoked.labels(name, queue, *const)
        self.rejected = metrics.rejected.labels(name, queue, *const)
        self.runtime = {
            state: metrics.runtime.labels(name, queue, state, *const) for state in OUTCOME_STATES
        }
        self.queue_wait = metrics.queue_wait.labels(name, queue, *const)
        self.queue_wait_unmeasured = metrics.queue_wait_unmeasured.labels(name, queue, *const)
        self.queue_wait_clamped = metrics.queue_wait_clamped.labels(name, queue, *const)
        self.time_limit = {
            kind: metrics.time_limit.labels(name, queue, kind, *const) for kind in TIME_LIMIT_KINDS
        }
        self.worker_lost = metrics.worker_lost.labels(name, queue, *const)
        self.last_success = metrics.last_success.labels(name, *const)
        self.last_failure = metrics.last_failure.labels(name, *const)
        # What every task does, bound once (see compat.counter_incrementer).
        self.inc_received = counter_incrementer(self.received)
        self.inc_redelivered = counter_incrementer(self.redelivered)
        self.inc_started = counter_incrementer(self.started)
        self.inc_succeeded = counter_incrementer(self.succeeded)
        self.inc_wait_unmeasured = counter_incrementer(self.queue_wait_unmeasured)
        self.inc_wait_clamped = counter_incrementer(self.queue_wait_clamped)
        self.observe_wait = histogram_observer(self.queue_wait)
        self.observe_runtime = {
            state: histogram_observer(child) for state, child in self.runtime.items()
        }

    def failed(self, exception: str) -> Counter:
        return self._metrics.failed_child(self, exception)
