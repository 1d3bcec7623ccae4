"""The task metrics, built on the registry they are given, and their per-task children.

:class:`TaskMetrics` builds every task metric of :mod:`.catalog` on a registry,
caches the labelled children per (task, queue) so that the per-task cost is a
dict lookup plus the update, and bounds label values with :class:`LabelGuard`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..compat import (
    counter_incrementer,
    histogram_observer,
    in_memory_values,
    uses_private,
    with_child_keys,
)
from ..config.options import ObsSettings
from .catalog import (
    INSTRUMENTATION_HOOKS,
    OTHER,
    OUTCOME_STATES,
    SPECS,
    TIME_LIMIT_KINDS,
    ZERO_STATES,
)
from .const_labels import ConstLabels
from .exposition import Family, TaskExposition
from .native_histogram import NativeBuckets
from .value_store import ValueStore

__all__ = ["LabelGuard", "TaskMetrics", "TaskSeries"]


#: The store of the metric whose ``labels()`` is building a child on this thread.
_BUILDING = threading.local()


class _InMemory:
    """Mixin: the metric keeps its values in this process's memory, always (see
    :func:`~csuite_async_obs.compat.in_memory_values`), in its
    :class:`~.value_store.ValueStore` when it was given one.

    A child is built by prometheus_client as ``type(parent)(...)``, so it cannot see its
    parent; the parent's store reaches the child's ``_metric_init`` through a
    thread-local set while ``labels()`` runs.  (A class per metric would do it too, but
    thousands of subclasses make every ``isinstance`` check against prometheus_client's
    ABCs walk them all.)
    """

    _store: ValueStore | None = None

    def labels(self: Any, *labelvalues: Any, **labelkwargs: Any) -> Any:
        store = self._store
        if store is None:
            return super().labels(*labelvalues, **labelkwargs)  # type: ignore[misc]
        outer = getattr(_BUILDING, "store", None)
        _BUILDING.store = store
        try:
            return super().labels(*labelvalues, **labelkwargs)  # type: ignore[misc]
        finally:
            _BUILDING.store = outer

    def _metric_init(self) -> None:
        store: ValueStore | None = getattr(_BUILDING, "store", None)
        init = super()._metric_init  # type: ignore[misc]
        in_memory_values(init, store.child_values() if store is not None else None)

    # The store follows the children the metric removes.
    def remove(self, *labelvalues: Any) -> None:
        super().remove(*labelvalues)  # type: ignore[misc]
        self._follow_removal()

    def remove_by_labels(self, labels: dict[str, str]) -> None:
        super().remove_by_labels(labels)  # type: ignore[misc]
        self._follow_removal()

    def clear(self) -> None:
        super().clear()  # type: ignore[misc]
        self._follow_removal()

    def _follow_removal(self) -> None:
        if self._store is not None:
            with_child_keys(self, self._store.retain)


class _Counter(_InMemory, Counter):
    pass


class _Histogram(_InMemory, Histogram):
    pass


class _Gauge(_InMemory, Gauge):
    pass


_M = TypeVar("_M", _Counter, _Gauge, _Histogram)


def _with_store(metric: _M, store: ValueStore | None) -> _M:
    """``metric``, whose children keep their values in ``store`` (when given)."""
    metric._store = store
    return metric


def stores_values() -> bool:
    """Whether the package's metrics keep their values in a :class:`ValueStore` here (the
    shims it needs take their private path)."""
    return all(uses_private(n) for n in ("value_store", "value_class", "family_internals"))


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

        stored = stores_values()

        def counter(name: str) -> Counter:
            labels = tuple(const.label_names(name))
            store = ValueStore(name) if stored else None
            metric = _with_store(
                _Counter(_base(name), SPECS[name].help, labels, registry=registry), store
            )
            self.families.append(Family(metric, _base(name), SPECS[name].help, labels, store))
            return metric

        def gauge(name: str) -> Gauge:
            labels = tuple(const.label_names(name))
            store = ValueStore(name) if stored else None
            metric = _with_store(_Gauge(name, SPECS[name].help, labels, registry=registry), store)
            self.families.append(Family(metric, name, SPECS[name].help, labels, store))
            return metric

        def histogram(name: str, buckets: Iterable[float]) -> Histogram:
            labels = tuple(const.label_names(name))
            bounds = tuple(buckets)
            store = ValueStore(name, bounds) if stored else None
            metric = _with_store(
                _Histogram(name, SPECS[name].help, labels, buckets=bounds, registry=registry),
                store,
            )
            self.families.append(Family(metric, name, SPECS[name].help, labels, store))
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
        self.runtime = histogram("celery_task_runtime_seconds", self.settings.runtime_bounds)
        self.queue_wait = histogram(
            "celery_task_queue_wait_seconds", self.settings.queue_wait_bounds
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
        #: Each metric's value store, by the metric's id (none when values are not stored).
        self._stores = {id(f.metric): f.store for f in self.families}
        # Every hook's series exists at 0, so that increase() sees the first error.
        self._errors = {
            hook: self.errors.labels(hook, *self._const_values) for hook in INSTRUMENTATION_HOOKS
        }
        self.guard_name = self.guard("name", self.settings.max_task_names)
        self.guard_queue = self.guard("queue_name", self.settings.max_queue_names)
        self.guard_exception = self.guard("exception", self.settings.max_exceptions)
        self._children: dict[tuple[str, str], TaskSeries] = {}
        self._children_lock = threading.Lock()
        full = self.settings.metrics_profile == "full"
        #: Runtime states whose series exist from start; the others from their first run.
        self.zero_states = OUTCOME_STATES if full else ZERO_STATES
        #: Native-histogram state of each histogram child: metric id -> label values -> it.
        self.native: dict[int, dict[tuple[str, ...], NativeBuckets]] = {}
        self.native_mode = self.settings.native_histograms
        self._native_lock = threading.Lock()

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

    def exposition(self) -> TaskExposition:
        """The fast renderer of these metrics (text, OpenMetrics and protobuf)."""
        return TaskExposition(self.families, self.native, self.native_mode)

    def observer(self, metric: Histogram, labels: tuple[str, ...]) -> Callable[[float], None]:
        """``observe`` of one histogram child: its classic buckets, and its native ones
        unless native histograms are off."""
        labels = tuple(map(str, labels))  # as prometheus_client keys the child
        child = metric.labels(*labels)
        store = self._stores.get(id(metric))
        classic = store.observer(labels) if store is not None else histogram_observer(child)
        if self.native_mode == "off":
            return classic
        with self._native_lock:
            children = self.native.setdefault(id(metric), {})
            native = children.get(labels)
            if native is None:
                native = children[labels] = NativeBuckets()
        add = native.observe

        def observe(amount: float) -> None:
            classic(amount)
            add(amount)

        return observe

    def incrementer(self, metric: Counter, labels: tuple[str, ...]) -> Callable[[], None]:
        """``inc()`` of one counter child, bound once for the per-task hot path: on its
        store's slot, else through :func:`~csuite_async_obs.compat.counter_incrementer`."""
        labels = tuple(map(str, labels))  # as prometheus_client keys the child
        child = metric.labels(*labels)
        store = self._stores.get(id(metric))
        return store.incrementer(labels) if store is not None else counter_incrementer(child)

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
        "received",
        "redelivered",
        "rejected",
        "retried",
        "revoked",
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
        self.queue_wait = metrics.queue_wait.labels(name, queue, *const)
        self.time_limit = {
            kind: metrics.time_limit.labels(name, queue, kind, *const) for kind in TIME_LIMIT_KINDS
        }
        self.worker_lost = metrics.worker_lost.labels(name, queue, *const)
        self.last_success = metrics.last_success.labels(name, *const)
        self.last_failure = metrics.last_failure.labels(name, *const)
        # What every task does, bound once.
        self.inc_received = metrics.incrementer(metrics.received, (name, queue, *const))
        self.inc_redelivered = metrics.incrementer(metrics.redelivered, (name, queue, *const))
        self.inc_started = metrics.incrementer(metrics.started, (name, queue, *const))
        self.inc_succeeded = metrics.incrementer(metrics.succeeded, (name, queue, *const))
        self.observe_wait = metrics.observer(metrics.queue_wait, (name, queue, *const))
        # The runtime of the profile's states exists at 0; the others' from their first
        # run (the observer below creates the series, then takes its place).
        self.observe_runtime: dict[str, Callable[[float], None]] = {}
        for state in OUTCOME_STATES:
            if state in metrics.zero_states:
                self.observe_runtime[state] = metrics.observer(
                    metrics.runtime, (name, queue, state, *const)
                )
            else:
                self.observe_runtime[state] = self._first_run(state)
        self.inc_wait_unmeasured = metrics.incrementer(
            metrics.queue_wait_unmeasured, (name, queue, *const)
        )
        self.inc_wait_clamped = metrics.incrementer(
            metrics.queue_wait_clamped, (name, queue, *const)
        )

    def _first_run(self, state: str) -> Callable[[float], None]:
        metrics = self._metrics
        labels = (self.name, self.queue, state, *metrics._const_values)

        def create_and_observe(amount: float) -> None:
            observe = metrics.observer(metrics.runtime, labels)
            self.observe_runtime[state] = observe
            observe(amount)

        return create_and_observe

    def failed(self, exception: str) -> Counter:
        return self._metrics.failed_child(self, exception)
