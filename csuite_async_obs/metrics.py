"""Metric names, labels and help texts, defined once, and the object that owns them.

Counter names keep those of the most-used event-based Celery exporter
(``celery_task_sent_total`` ...) so that existing dashboards keep working; the
histograms follow Prometheus conventions (base units, ``_seconds``).  Task series
carry ``name`` and ``queue_name`` and no host label: Prometheus's ``instance``
already names the worker.

:class:`TaskMetrics` builds every metric on the registry it is given, caches the
labelled children per task so that the per-task cost is a dict lookup plus the
update, and bounds label values with :class:`LabelGuard`.
"""

from __future__ import annotations

import functools
import math
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, values

from .settings import ObsSettings

__all__ = [
    "METRICS",
    "OUTCOME_STATES",
    "LabelGuard",
    "MetricSpec",
    "TaskMetrics",
]

OTHER = "other"

# Values of the ``state`` label of celery_task_runtime_seconds: every way a task
# that reached the pool can end.
OUTCOME_STATES = ("succeeded", "failed", "retried", "rejected", "revoked", "ignored")
TIME_LIMIT_KINDS = ("soft", "hard")


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric: what the README's reference table and dashboards rely on."""

    name: str  # as exposed (counters with their _total suffix)
    type: str
    labels: tuple[str, ...]
    help: str
    zero_initialised: str = ""


TASK = ("name", "queue_name")

METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "celery_task_sent_total",
        "counter",
        TASK,
        "Tasks published by this process (publish side; see the README for pool children).",
        "yes",
    ),
    MetricSpec(
        "celery_task_received_total",
        "counter",
        TASK,
        "Task messages received by the worker.",
        "yes",
    ),
    MetricSpec(
        "celery_task_started_total",
        "counter",
        TASK,
        "Tasks a pool process started executing.",
        "yes",
    ),
    MetricSpec(
        "celery_task_succeeded_total",
        "counter",
        TASK,
        "Tasks that returned without raising.",
        "yes",
    ),
    MetricSpec(
        "celery_task_failed_total",
        "counter",
        (*TASK, "exception"),
        "Tasks that failed, by exception class (time limits and lost pool children included).",
        "no: an exception class is not known before it happens; use "
        'celery_task_runtime_seconds_count{state="failed"}',
    ),
    MetricSpec(
        "celery_task_retried_total",
        "counter",
        TASK,
        "Tasks that raised Retry and were re-published.",
        "yes",
    ),
    MetricSpec(
        "celery_task_revoked_total",
        "counter",
        TASK,
        "Tasks revoked, expired or terminated before they could finish.",
        "yes",
    ),
    MetricSpec(
        "celery_task_rejected_total",
        "counter",
        TASK,
        "Tasks that raised Reject, and messages for tasks the worker does not know.",
        "yes",
    ),
    MetricSpec(
        "celery_task_runtime_seconds",
        "histogram",
        (*TASK, "state"),
        "Time tasks ran in the pool, for every outcome (state).",
        "yes, every state",
    ),
    MetricSpec(
        "celery_task_queue_wait_seconds",
        "histogram",
        TASK,
        "Time from publish (or ETA, when later) until a pool process started the task.",
        "yes",
    ),
    MetricSpec(
        "celery_task_queue_wait_unmeasured_total",
        "counter",
        TASK,
        "Tasks started without the publish timestamp header (published without this "
        "package), so their queue wait could not be measured.",
        "yes",
    ),
    MetricSpec(
        "celery_task_time_limit_exceeded_total",
        "counter",
        (*TASK, "kind"),
        "Tasks that hit their soft or hard time limit (kind).",
        "yes, both kinds",
    ),
    MetricSpec(
        "celery_task_worker_lost_total",
        "counter",
        TASK,
        "Tasks whose pool process died under them (WorkerLostError), e.g. SIGKILL or OOM.",
        "yes",
    ),
    MetricSpec(
        "celery_worker_up",
        "gauge",
        ("hostname",),
        "1 while the worker runs; the series disappears with the process.",
        "yes",
    ),
    MetricSpec(
        "celery_worker_consumer_up",
        "gauge",
        (),
        "1 while the worker's consumer is connected and consuming, else 0.",
        "yes",
    ),
    MetricSpec(
        "celery_worker_tasks_active", "gauge", (), "Tasks executing in the pool right now.", "yes"
    ),
    MetricSpec(
        "celery_worker_prefetched_tasks",
        "gauge",
        (),
        "Tasks received and reserved by this worker, not started yet.",
        "yes",
    ),
    MetricSpec(
        "celery_worker_pool_size",
        "gauge",
        (),
        "Pool processes or threads; active / pool size is saturation.",
        "yes",
    ),
    MetricSpec(
        "celery_queue_length",
        "gauge",
        ("queue_name",),
        "Messages waiting in the queue (all priority sub-queues), at the last poll.",
        "reported from the first successful poll",
    ),
    MetricSpec(
        "celery_queue_oldest_message_age_seconds",
        "gauge",
        ("queue_name",),
        "Age of the oldest waiting message (from its publish timestamp header); 0 when empty.",
        "reported from the first successful poll",
    ),
    MetricSpec(
        "celery_queue_unacked_messages",
        "gauge",
        (),
        "Messages taken by workers and not yet acknowledged (prefetched, running, ETA).",
        "reported from the first successful poll",
    ),
    MetricSpec(
        "celery_queue_length_poll_errors_total",
        "counter",
        (),
        "Queue-depth polls that failed or timed out (broker down or slow).",
        "yes",
    ),
    MetricSpec(
        "celery_queue_length_last_success_timestamp_seconds",
        "gauge",
        (),
        "Unix time of the last successful queue-depth poll.",
        "0 until the first success",
    ),
    MetricSpec(
        "csuite_async_obs_instrumentation_errors_total",
        "counter",
        ("hook",),
        "Errors caught inside the instrumentation (logged, never raised into a task).",
        "yes",
    ),
    MetricSpec(
        "csuite_async_obs_label_overflow_total",
        "counter",
        ("label",),
        "Events whose task, queue or exception label was reported as 'other' because that "
        "label's cardinality limit was reached.",
        "yes",
    ),
)

SPECS = {spec.name: spec for spec in METRICS}
INSTRUMENTATION_HOOKS = (
    "publish",
    "received",
    "started",
    "finished",
    "timeout",
    "revoked",
    "rejected",
    "collect",
    "exporter",
)


_VALUE_CLASS_LOCK = threading.Lock()


class _InMemory:
    """Mixin: the metric keeps its values in this process's memory, always.

    prometheus_client (0.20 to 0.26 at least) gives every metric of a process
    file-backed values when ``PROMETHEUS_MULTIPROC_DIR`` is set as it is
    imported (``prometheus_client.values.ValueClass``, read when a child is
    created).  These metrics are served by this process only, so they never use
    files: an unwritable or deleted directory cannot stop a worker, and nothing
    is left on disk.  Other metrics of the process keep the mode chosen for them.
    """

    def _metric_init(self) -> None:
        if values.ValueClass is values.MutexValue:
            super()._metric_init()  # type: ignore[misc]
            return
        with _VALUE_CLASS_LOCK:
            chosen = values.ValueClass
            values.ValueClass = values.MutexValue
            try:
                super()._metric_init()  # type: ignore[misc]
            finally:
                values.ValueClass = chosen


class _Counter(_InMemory, Counter):
    pass


class _Histogram(_InMemory, Histogram):
    pass


def _incrementer(child: Counter) -> Callable[[], None]:
    """``child.inc()`` for the per-task hot path: the in-memory value's own locked
    ``inc(1)``, bound once, without prometheus_client's per-call checks (a labelled
    child is always observable, and 1 is never negative).  Reads the child's
    private ``_value`` (a ``values.MutexValue`` in prometheus_client 0.20 to
    0.26, always, see :class:`_InMemory`) because the public call costs half the
    per-task time of the counters; falls back to the public ``inc`` when that
    attribute is not what we expect."""
    value = getattr(child, "_value", None)
    if isinstance(value, values.MutexValue):
        return functools.partial(value.inc, 1)
    return child.inc


def _observer(child: Histogram) -> Callable[[float], None]:
    """``child.observe`` for the per-task hot path, with the same effect (sum,
    then the first bucket whose bound is >= the amount; NaN in no bucket) but a
    binary search instead of a Python loop over the bounds: a long queue wait
    walked every bucket.  Reads the private ``_upper_bounds``, ``_buckets`` and
    ``_sum`` of prometheus_client 0.20 to 0.26 (the exposition reads the same
    ones); falls back to the public ``observe`` when they are not what we expect."""
    try:
        bounds = tuple(child._upper_bounds)
        incs = tuple(bucket.inc for bucket in child._buckets)
        sum_value = child._sum
    except AttributeError:
        return child.observe
    if (
        not isinstance(sum_value, values.MutexValue)
        or not all(isinstance(bucket, values.MutexValue) for bucket in child._buckets)
        or len(bounds) != len(incs)
        or not bounds
        or bounds[-1] != math.inf
    ):
        return child.observe
    sum_inc = sum_value.inc

    def observe(amount: float) -> None:
        sum_inc(amount)
        if amount == amount:
            incs[bisect_left(bounds, amount)](1)

    return observe


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
        const = self.settings.const_labels
        self._const_names = tuple(k for k, _ in const)
        self._const_values = tuple(v for _, v in const)

        def labels(spec_labels: Sequence[str]) -> tuple[str, ...]:
            return tuple(spec_labels) + self._const_names

        def counter(name: str) -> Counter:
            spec = SPECS[name]
            return _Counter(_base(name), spec.help, labels(spec.labels), registry=registry)

        def histogram(name: str, buckets: Iterable[float]) -> Histogram:
            spec = SPECS[name]
            return _Histogram(
                name, spec.help, labels(spec.labels), buckets=tuple(buckets), registry=registry
            )

        self.sent = counter("celery_task_sent_total")
        self.received = counter("celery_task_received_total")
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
        self.time_limit = counter("celery_task_time_limit_exceeded_total")
        self.worker_lost = counter("celery_task_worker_lost_total")
        self.errors = counter("csuite_async_obs_instrumentation_errors_total")
        self.overflow = counter("csuite_async_obs_label_overflow_total")
        for hook in INSTRUMENTATION_HOOKS:
            self.errors.labels(hook, *self._const_values)
        self.guard_name = self._guard("name", self.settings.max_task_names)
        self.guard_queue = self._guard("queue_name", self.settings.max_queue_names)
        self.guard_exception = self._guard("exception", self.settings.max_exceptions)
        self._children: dict[tuple[str, str], TaskSeries] = {}
        self._children_lock = threading.Lock()

    @property
    def collectors(self) -> tuple[Counter | Histogram, ...]:
        """Every metric object of this instance, in exposition order."""
        return (
            self.sent,
            self.received,
            self.started,
            self.succeeded,
            self.failed,
            self.retried,
            self.revoked,
            self.rejected,
            self.runtime,
            self.queue_wait,
            self.queue_wait_unmeasured,
            self.time_limit,
            self.worker_lost,
            self.errors,
            self.overflow,
        )

    def unregister(self) -> None:
        """Remove every metric of this object from its registry."""
        for metric in self.collectors:
            self.registry.unregister(metric)

    def _guard(self, label: str, limit: int) -> LabelGuard:
        return LabelGuard(label, limit, self.overflow.labels(label, *self._const_values))

    def error(self, hook: str) -> None:
        """Count one error caught inside the instrumentation."""
        self.errors.labels(hook, *self._const_values).inc()

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
        "inc_started",
        "inc_succeeded",
        "inc_wait_unmeasured",
        "name",
        "observe_runtime",
        "observe_wait",
        "queue",
        "queue_wait",
        "queue_wait_unmeasured",
        "received",
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
        self.time_limit = {
            kind: metrics.time_limit.labels(name, queue, kind, *const) for kind in TIME_LIMIT_KINDS
        }
        self.worker_lost = metrics.worker_lost.labels(name, queue, *const)
        # What every task does, bound once (see _incrementer and _observer).
        self.inc_received = _incrementer(self.received)
        self.inc_started = _incrementer(self.started)
        self.inc_succeeded = _incrementer(self.succeeded)
        self.inc_wait_unmeasured = _incrementer(self.queue_wait_unmeasured)
        self.observe_wait = _observer(self.queue_wait)
        self.observe_runtime = {state: _observer(child) for state, child in self.runtime.items()}

    def failed(self, exception: str) -> Counter:
        return self._metrics.failed_child(self, exception)
