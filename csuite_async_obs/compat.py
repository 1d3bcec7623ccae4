"""Every reliance on a private attribute or on version-specific behaviour of a library.

The package is imported into existing workers, on whatever Celery, kombu,
billiard, redis-py and prometheus_client they run.  Whatever it reads that those
libraries do not promise lives here, and nowhere else, as a :class:`Shim`: what
it reads, the versions it was checked on, and the public fallback used when the
private path is not there.  A probe decides once per process, at first use,
which path each shim takes; :func:`log_paths` logs the decision once (the
worker calls it at start-up); ``/healthz`` does not change with it.

Behaviour that differs between versions but needs no private attribute (Reject's
final state, the size of a gevent pool) or that a reader would not expect (a hard
time limit reaching the request twice) is listed in
:data:`BEHAVIOURS` with where it is handled, so that it is tested on every
supported version instead of assumed from the newest.

``CSUITE_COMPAT_FALLBACKS`` (``all``, or shim names separated by commas) forces
fallbacks, as if the private attribute were missing.  It exists for the tests
that prove each fallback exact; a deployment has no reason to set it.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import sys
import threading
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any

__all__ = [
    "BEHAVIOURS",
    "FORCE_VARIABLE",
    "SHIMS",
    "Behaviour",
    "RedisLayout",
    "Shim",
    "consumer_tag_queues",
    "counter_columns",
    "counter_incrementer",
    "counter_values",
    "histogram_columns",
    "histogram_observer",
    "histogram_values",
    "in_memory_values",
    "install_result_backend",
    "loading_celery_app",
    "log_paths",
    "path_report",
    "pool_size",
    "redis_layout",
    "request_cancelled",
    "rpc_records_consumer_states",
    "uses_private",
    "with_child_keys",
    "worker_task_counts",
]

FORCE_VARIABLE = "CSUITE_COMPAT_FALLBACKS"
_VALUE_CLASS_LOCK = threading.Lock()


@dataclass(frozen=True)
class Shim:
    """One reliance on something a library does not promise."""

    name: str
    library: str
    checked: str
    private: str
    fallback: str
    probe: Callable[[], bool]


@dataclass(frozen=True)
class Behaviour:
    """A difference between supported versions, handled in code on every version."""

    name: str
    versions: str
    difference: str
    handled: str


# --------------------------------------------------------------------------- probes


def _memory_metric(make: Callable[[], Any]) -> Any:
    """Build a probe's metric with in-memory values: with ``PROMETHEUS_MULTIPROC_DIR``
    set, prometheus_client would give it a file (and the probe a wrong answer)."""
    from prometheus_client import values

    chosen = getattr(values, "ValueClass", None)
    if chosen is None or chosen is getattr(values, "MutexValue", None):
        return make()
    return _swap_value_class(make, values.MutexValue)


def _probe_counter_value() -> bool:
    from prometheus_client import CollectorRegistry, Counter, values

    child = _memory_metric(
        lambda: Counter("probe", "probe", ["l"], registry=CollectorRegistry()).labels("x")
    )
    value = getattr(child, "_value", None)
    return isinstance(value, values.MutexValue) and isinstance(
        getattr(value, "_value", None), float
    )


def _probe_histogram_internals() -> bool:
    from prometheus_client import CollectorRegistry, Histogram, values

    child = _memory_metric(
        lambda: Histogram(
            "probe", "probe", ["l"], buckets=(1.0,), registry=CollectorRegistry()
        ).labels("x")
    )
    try:
        bounds = list(child._upper_bounds)
        buckets = list(child._buckets)
        total = child._sum
    except AttributeError:
        return False
    return (
        len(bounds) == len(buckets) == 2
        and bounds[-1] == math.inf
        and all(isinstance(v, values.MutexValue) for v in (*buckets, total))
        and all(isinstance(getattr(v, "_value", None), float) for v in (*buckets, total))
    )


def _probe_family_internals() -> bool:
    from prometheus_client import CollectorRegistry, Counter

    metric = Counter("probe", "help", ["l"], registry=CollectorRegistry())
    child = _memory_metric(lambda: metric.labels("x"))
    children = getattr(metric, "_metrics", None)
    return isinstance(children, dict) and list(children.items()) == [(("x",), child)]


def _probe_value_class() -> bool:
    from prometheus_client import values

    return hasattr(values, "ValueClass") and hasattr(values, "MutexValue")


def _probe_value_store() -> bool:
    """prometheus_client builds a child's values through ``values.ValueClass`` with the
    arguments the package's slot values expect, and reads them back through them."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, values

    made: list[tuple[str, tuple[str, ...], Any]] = []

    def record(typ: str, metric: str, name: str, names: Any, labels: Any, *a: Any, **k: Any) -> Any:
        value = values.MutexValue(typ, metric, name, names, labels, *a, **k)
        made.append((name, tuple(labels), value))
        return value

    counter = Counter("probe", "probe", ["l"], registry=CollectorRegistry())
    _swap_value_class(lambda: counter.labels("x"), record)
    histogram = Histogram("probe", "probe", ["l"], buckets=(1.0,), registry=CollectorRegistry())
    _swap_value_class(lambda: histogram.labels("x"), record)
    counter.labels("x").inc(2)
    histogram.labels("x").observe(0.5)
    shapes = sorted((name, labels, value.get()) for name, labels, value in made)
    return shapes == [
        ("probe_bucket", ("x", "+Inf"), 0.0),
        ("probe_bucket", ("x", "1.0"), 1.0),
        ("probe_sum", ("x",), 0.5),
        ("probe_total", ("x",), 2.0),
    ]


def _probe_scheduled_requests() -> bool:
    import weakref

    from celery.worker import state

    return isinstance(getattr(state, "scheduled_requests", None), (set, weakref.WeakSet))


def _probe_announce_revoked() -> bool:
    from celery.worker.request import Request

    method = getattr(Request, "_announce_revoked", None)
    if method is None:
        return False
    params = list(inspect.signature(method).parameters)
    return params == ["self", "reason", "terminated", "signum", "expired"]


def _probe_cancel_flags() -> bool:
    from celery.worker.request import Request

    return all(
        hasattr(Request, attr) or attr in getattr(Request, "__slots__", ())
        for attr in ("_already_revoked", "_already_cancelled")
    )


def _probe_redis_channel() -> bool:
    try:
        from kombu.transport.redis import Channel
    except ImportError:  # pragma: no cover -- redis is a dependency
        return False
    needed = ("global_keyprefix", "priority_steps", "sep", "unacked_key", "keyprefix_queue")
    return all(hasattr(Channel, attr) for attr in needed) and hasattr(Channel, "_q_for_pri")


def _probe_consumer_tags() -> bool:
    from kombu.entity import Queue
    from kombu.messaging import Consumer

    consumer = Consumer(None)
    tags = getattr(consumer, "_active_tags", None)
    add = getattr(consumer, "_add_tag", None)
    if not isinstance(tags, dict) or not callable(add):
        return False
    add(Queue("probe"), "probe-tag")
    return consumer._active_tags == {"probe": "probe-tag"}


def _probe_rpc_consumer_states() -> bool:
    from celery.backends.rpc import ResultConsumer, RPCBackend

    hook = getattr(ResultConsumer, "on_state_change", None)
    oob = getattr(RPCBackend, "on_out_of_band_result", None)
    if hook is None or oob is None or RPCBackend.ResultConsumer is not ResultConsumer:
        return False
    return list(inspect.signature(hook).parameters) == ["self", "meta", "message"] and list(
        inspect.signature(oob).parameters
    ) == ["self", "task_id", "message"]


def _probe_find_app_frame() -> bool:
    from celery.app import utils

    return callable(getattr(utils, "find_app", None))


SHIMS: dict[str, Shim] = {
    shim.name: shim
    for shim in (
        Shim(
            "counter_value",
            "prometheus_client",
            "0.20.0, 0.22.1, 0.26.0",
            "a labelled Counter child's _value (values.MutexValue), whose inc(1) is bound "
            "once per series: half the per-task cost of the public inc()",
            "Counter.inc()",
            _probe_counter_value,
        ),
        Shim(
            "histogram_internals",
            "prometheus_client",
            "0.20.0, 0.22.1, 0.26.0",
            "a Histogram child's _upper_bounds, _buckets and _sum, for a binary-search "
            "observe and for reading the values without building samples",
            "Histogram.observe() and Histogram.collect()",
            _probe_histogram_internals,
        ),
        Shim(
            "family_internals",
            "prometheus_client",
            "0.20.0, 0.22.1, 0.26.0",
            "a metric's _metrics (its labelled children), read by the fast exposition",
            "the metric's collect() samples",
            _probe_family_internals,
        ),
        Shim(
            "value_class",
            "prometheus_client",
            "0.20.0, 0.22.1, 0.26.0",
            "values.ValueClass, swapped for the building thread only while a package metric "
            "is built (values.MutexValue, or the value store's slots), so that "
            "PROMETHEUS_MULTIPROC_DIR never makes it file-backed",
            "the value class prometheus_client chose (in memory unless "
            "PROMETHEUS_MULTIPROC_DIR is set; logged)",
            _probe_value_class,
        ),
        Shim(
            "value_store",
            "prometheus_client",
            "0.20.0, 0.22.1, 0.26.0",
            "values.ValueClass as a package metric's child is built (called once per value "
            "with the metric's name, the value's sample name and label values: a counter's "
            "_total, a histogram's _sum and one _bucket per bound with le last), so that "
            "every value of a metric sits in one flat array the exposition copies at once; "
            "with _metrics and _lock, read as the metric removes children so that the store "
            "forgets the same ones",
            "one prometheus_client value object per series, read one by one at a scrape",
            _probe_value_store,
        ),
        Shim(
            "scheduled_requests",
            "celery",
            "5.7.0 (absent in 5.3.0, 5.4.0, 5.5.3, 5.6.3)",
            "celery.worker.state.scheduled_requests: ETA/countdown requests the worker holds",
            "the Request objects waiting in the consumer's timer queue (kombu's public "
            "Timer.queue), as `celery inspect scheduled` lists them",
            _probe_scheduled_requests,
        ),
        Shim(
            "announce_revoked",
            "celery",
            "5.3.0, 5.4.0, 5.5.3, 5.6.3, 5.7.0",
            "Request._announce_revoked(reason, terminated, signum, expired), the one place "
            "every revocation (revoked, expired, terminated) passes through",
            "the task_revoked signal, de-duplicated by task id",
            _probe_announce_revoked,
        ),
        Shim(
            "cancel_flags",
            "celery",
            "5.3.0, 5.4.0, 5.5.3, 5.6.3, 5.7.0",
            "Request._already_revoked and _already_cancelled, which tell a child stopped "
            "on purpose from one that died",
            "the package's own record of revocations and of Request.cancel() calls",
            _probe_cancel_flags,
        ),
        Shim(
            "redis_channel",
            "kombu",
            "5.3.0, 5.4.0, 5.5.4, 5.7.0",
            "the Redis channel's global_keyprefix, priority_steps, sep, unacked_key, "
            "keyprefix_queue and connection pool, to read every priority sub-queue and the "
            "unacked hash in one script; the hash's entries as QoS.append writes them "
            "(JSON [message, exchange, routing_key]) and the binding sets' members as "
            "_queue_bind writes them (routing_key, pattern, queue), to count unacked "
            "messages per queue",
            "a passive queue_declare per queue: exact lengths (kombu answers NOT_FOUND for "
            "an empty queue, since Redis drops empty lists: reported 0); no ages, no "
            "unacked count",
            _probe_redis_channel,
        ),
        Shim(
            "consumer_tags",
            "kombu",
            "5.4.0, 5.7.0",
            "Consumer._active_tags ({queue name: consumer tag}) of the worker's task "
            "consumer: on AMQP a delivery's consumer_tag names the exact queue it came from",
            "the queue found from the delivery's exchange and routing key and the bindings "
            "of the consumed queues, else the routing key (instrumentation.queue_names)",
            _probe_consumer_tags,
        ),
        Shim(
            "rpc_consumer_states",
            "celery",
            "5.4.0, 5.7.0",
            "the rpc backend's ResultConsumer class attribute and its on_state_change(meta, "
            "message), through which every state read off the reply queue passes (drained by "
            "AsyncResult.get(), or another id's state met by get_task_meta, which "
            "RPCBackend.on_out_of_band_result hands to it): the task API keeps the last one "
            "per id, so a state consumed once is still read afterwards",
            "only the final states get_task_meta returns are kept, and delay_task's ids are "
            "not remembered as queued (a state drained elsewhere would leave one PENDING for "
            "good): a queued rpc:// task reads as None until its first state is read",
            _probe_rpc_consumer_states,
        ),
        Shim(
            "find_app_frame",
            "celery",
            "5.3.0, 5.4.0, 5.5.3, 5.6.3, 5.7.0",
            "a frame of celery.app.utils.find_app on the stack: the celery command is "
            "loading the -A module",
            "none: the error is raised, and Celery prints its traceback of the import",
            _probe_find_app_frame,
        ),
    )
}

BEHAVIOURS: tuple[Behaviour, ...] = (
    Behaviour(
        "pool_num_processes",
        "celery < 5.7: the gevent pool's num_processes counts running greenlets",
        "the size of a gevent or eventlet pool",
        "compat.pool_size reads the pool's limit (prefork: its processes)",
    ),
    Behaviour(
        "hard_time_limit_reported_twice",
        "celery 5.3-5.7 with billiard 4.x (prefork)",
        "a hard time limit reaches the request twice: on_failure(TimeLimitExceeded) from "
        "billiard's hard-timeout handler, then on_timeout(soft=False)",
        "a per-request flag counts it once (instrumentation.request)",
    ),
    Behaviour(
        "reject_final_state",
        "celery 5.3-5.6 store no final state (STARTED stays), 5.7 stores FAILURE",
        "the result backend's state of a task that raised Reject(requeue=False)",
        "the same hooks run on every version, so the metrics count it once; the task API "
        "reports what the backend holds (README: known limits); tests wait on the metric",
    ),
    Behaviour(
        "active_after_broker_restart",
        "celery 5.4.0, 5.5.3 (and 5.3.0): requests running when the broker dies stay active "
        "for good; 5.7.0 finishes them through a clean broker stop, but after a RabbitMQ "
        "crash was seen once to lose the end of one whose message came again while it ran",
        "Celery's own worker state after a broker restart (`celery inspect active`, checked "
        "with a plain worker)",
        "celery_worker_tasks_active reads that state, so it shows them (on RabbitMQ, one "
        "whose message comes again and runs leaves that state without an end, and one "
        "whose start never reached the main process is not counted started: its message "
        "was never acknowledged and runs again); the outage tests on both brokers bound "
        "these by the pool's size (5.7 after a clean stop: none)",
    ),
    Behaviour(
        "revoke_marks_backend",
        "celery 5.7 marks a revoked task that is not running REVOKED in the backend at once",
        "when the result backend learns of a revocation",
        "metrics count revocations from the worker's request, the same on every version",
    ),
    Behaviour(
        "redelivered_flag",
        "celery 5.4.0 and 5.7.0 copy delivery_info['redelivered'] into Request.delivery_info; "
        "kombu 5.4.0 and 5.7.0 (Redis) set it when they restore unacknowledged messages",
        "where a redelivery shows: AMQP's basic.deliver flag (py-amqp); on Redis kombu's "
        "_do_restore_message marks the stored message redelivered (warm shutdown, lost "
        "connection, visibility timeout); other virtual transports mark only the payload",
        "instrumentation.request reads the kombu message's public delivery_info on every "
        "version and counts the message in celery_task_redelivered_total, not received",
    ),
    Behaviour(
        "generated_request_on_success",
        "celery 5.3-5.7",
        "the Request class Celery generates per task overrides on_success without calling super()",
        "InstrumentedRequestMixin.__init_subclass__ wraps it",
    ),
    Behaviour(
        "rpc_date_done",
        "celery 5.4.0, 5.5.3, 5.6.3 send no date_done in an rpc:// state message; 5.7.0 does",
        "whether a finished task read over rpc:// has a completion time",
        "get_task_result reports date_done None then (README: result backends)",
    ),
    Behaviour(
        "rpc_repeated_reads",
        "celery 5.4.0-5.6.3 requeue the asked id's latest rpc:// state and keep another "
        "id's met on the way for one read; 5.7.0 acks final states and keeps them in a buffer",
        "how often get_task_meta returns a state read off the reply queue",
        "the task API's rpc backend keeps the last state per id itself (task_api.rpc_backend)",
    ),
    Behaviour(
        "backend_cls_class",
        "celery 5.7 accepts a class in Celery.backend_cls; 5.3-5.6 evaluate '://' in backend on it",
        "how an app is given a result backend class of its own",
        "install_result_backend() passes a 'module:Class' name, accepted by every version",
    ),
)


# --------------------------------------------------------------------------- decisions


class _Paths:
    """The probes' answers: each shim probed once per process, at its first use, so
    that a program reads only the libraries it uses (the standalone exporter never
    imports Celery's worker)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._decided: dict[str, str] = {}
        self._forced: frozenset[str] | None = None
        self._logged = False

    def path(self, name: str) -> str:
        decided = self._decided.get(name)
        if decided is not None:
            return decided
        with self._lock:
            if name not in self._decided:
                self._decided[name] = self._probe(name)
            return self._decided[name]

    def decide(self) -> dict[str, str]:
        return {name: self.path(name) for name in SHIMS}

    def _probe(self, name: str) -> str:
        if self._forced is None:
            self._forced = _forced()
        if name in self._forced:
            return "fallback (forced)"
        try:
            ok = SHIMS[name].probe()
        except Exception:  # noqa: BLE001 -- a probe that breaks means "not available"
            ok = False
        return "private" if ok else "fallback"

    def reset(self) -> None:
        with self._lock:
            self._decided = {}
            self._forced = None
            self._logged = False


def _forced() -> frozenset[str]:
    from .config.errors import ConfigError

    raw = os.environ.get(FORCE_VARIABLE, "").strip()
    if not raw:
        return frozenset()
    names = {item.strip() for item in raw.split(",") if item.strip()}
    if names == {"all"}:
        return frozenset(SHIMS)
    unknown = names - set(SHIMS)
    if unknown:
        raise ConfigError(FORCE_VARIABLE, raw, "all, or some of " + ", ".join(sorted(SHIMS)))
    return frozenset(names)


_PATHS = _Paths()


def uses_private(name: str) -> bool:
    """Whether shim ``name`` takes its private path in this process."""
    return _PATHS.path(name) == "private"


def path_report() -> dict[str, str]:
    """Every shim's path: ``private``, ``fallback`` or ``fallback (forced)``."""
    return dict(_PATHS.decide())


def reset_paths() -> None:
    """Probe again at next use (tests that change ``CSUITE_COMPAT_FALLBACKS``)."""
    _PATHS.reset()


def log_paths(log: Any) -> None:
    """Log once per process which path every shim took, with the library versions."""
    decided = _PATHS.decide()
    with _PATHS._lock:
        if _PATHS._logged:
            return
        _PATHS._logged = True
    fallbacks = sorted(name for name, path in decided.items() if path != "private")
    log.info(
        "compat_paths",
        versions=_versions(),
        fallbacks=fallbacks or None,
        private=sorted(name for name, path in decided.items() if path == "private"),
    )


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str] = {}
    for dist in ("celery", "kombu", "billiard", "redis", "prometheus-client", "structlog"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return found


# --------------------------------------------------------------------------- prometheus_client


def counter_incrementer(child: Any) -> Callable[[], None]:
    """``child.inc()`` for the per-task hot path, bound once (shim ``counter_value``)."""
    if uses_private("counter_value"):
        value = getattr(child, "_value", None)
        from prometheus_client import values

        if isinstance(value, values.MutexValue):
            return functools.partial(value.inc, 1)
    return child.inc  # type: ignore[no-any-return]


def histogram_observer(child: Any) -> Callable[[float], None]:
    """``child.observe`` with the same effect (sum, then the first bucket whose bound
    is >= the amount; NaN in no bucket) by binary search (shim ``histogram_internals``)."""
    if not uses_private("histogram_internals"):
        return child.observe  # type: ignore[no-any-return]
    bounds = tuple(child._upper_bounds)
    incs = tuple(bucket.inc for bucket in child._buckets)
    sum_inc = child._sum.inc

    def observe(amount: float) -> None:
        sum_inc(amount)
        if amount == amount:
            incs[bisect_left(bounds, amount)](1)

    return observe


def in_memory_values(init: Callable[[], Any], value_class: Callable[..., Any] | None = None) -> Any:
    """Run a metric's ``_metric_init`` (or build a child) with in-memory values (shim
    ``value_class``): ``value_class`` if given, else ``values.MutexValue``.

    prometheus_client gives every metric file-backed values when
    ``PROMETHEUS_MULTIPROC_DIR`` is set as it is imported; the package's metrics
    are served by the process that owns them, so they never use files.  The class is
    swapped for this thread only: a metric another thread builds meanwhile gets the
    class prometheus_client chose.
    """
    if not uses_private("value_class"):
        return init()
    from prometheus_client import values

    make = value_class or values.MutexValue
    if make is values.MutexValue and values.ValueClass is values.MutexValue:
        return init()
    return _swap_value_class(init, make)


def _swap_value_class(init: Callable[[], Any], make: Callable[..., Any]) -> Any:
    """``init()`` with ``make`` as the value class of this thread.  The class restored
    after is read under the lock: read before it, it could be another thread's swap,
    restored for good."""
    from prometheus_client import values

    owner = threading.get_ident()
    with _VALUE_CLASS_LOCK:
        chosen = values.ValueClass

        def for_this_thread(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == owner:
                return make(*args, **kwargs)
            return chosen(*args, **kwargs)

        values.ValueClass = for_this_thread
        try:
            return init()
        finally:
            values.ValueClass = chosen


def with_child_keys(metric: Any, then: Callable[[list[tuple[str, ...]]], None]) -> None:
    """``then(label values of the metric's children, in order)``, called while the metric
    cannot add or remove a child (its ``_lock``, shim ``family_internals``; without it,
    the keys are read from its samples and a concurrent change may be missed)."""
    if uses_private("family_internals"):
        with metric._lock:
            then(list(metric._metrics))
        return
    seen: dict[tuple[str, ...], None] = {}
    for family in metric.collect():
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != "le"}
            seen.setdefault(tuple(labels.values()), None)
    then(list(seen))


def counter_values(metric: Any) -> list[tuple[tuple[str, ...], float]]:
    """Every child of a labelled Counter or Gauge: ``(label values, value)``."""
    if uses_private("family_internals") and uses_private("counter_value"):
        return [(key, child._value._value) for key, child in list(metric._metrics.items())]
    out = []
    for family in metric.collect():
        for sample in family.samples:
            # A counter's samples are _total and _created; a gauge's, its name.
            if not sample.name.endswith("_created"):
                out.append((tuple(sample.labels.values()), float(sample.value)))
    return out


# C-level getters: the renderer reads some 25,000 floats a scrape, and a Python loop
# per child was most of its time (prometheus_client 0.20 to 0.26 attribute names).
_KEY = itemgetter(0)
_CHILD = itemgetter(1)
_COUNTER_VALUE = attrgetter("_value._value")
_BUCKETS = attrgetter("_buckets")
_RAW = attrgetter("_value")
_SUM = attrgetter("_sum._value")


def counter_columns(metric: Any) -> tuple[list[tuple[str, ...]], list[float]]:
    """:func:`counter_values` as two parallel lists, ``(label values, values)``."""
    if uses_private("family_internals") and uses_private("counter_value"):
        items = list(metric._metrics.items())
        return list(map(_KEY, items)), list(map(_COUNTER_VALUE, map(_CHILD, items)))
    pairs = counter_values(metric)
    return [key for key, _ in pairs], [value for _, value in pairs]


def histogram_columns(
    metric: Any,
) -> tuple[list[tuple[str, ...]], list[float], list[float]]:
    """:func:`histogram_values` as ``(label values, per-bucket counts of every child one
    after the other, sums)``: each child has as many counts as the metric has bounds."""
    if uses_private("family_internals") and uses_private("histogram_internals"):
        items = list(metric._metrics.items())
        children = list(map(_CHILD, items))
        flat = list(map(_RAW, chain.from_iterable(map(_BUCKETS, children))))
        return list(map(_KEY, items)), flat, list(map(_SUM, children))
    pairs = histogram_values(metric)
    return (
        [key for key, _ in pairs],
        [count for _, counts in pairs for count in counts[:-1]],
        [counts[-1] for _, counts in pairs],
    )


def histogram_values(metric: Any) -> list[tuple[tuple[str, ...], list[float]]]:
    """Every child of a labelled Histogram: ``(label values, [bucket counts..., sum])``.

    The counts are per bucket (not cumulative), in bound order, ``+Inf`` last:
    a renderer sums them only for the series that changed.
    """
    if uses_private("family_internals") and uses_private("histogram_internals"):
        out = []
        for key, child in list(metric._metrics.items()):
            # The floats themselves, not .get(): a lock round trip per bucket was
            # most of the render, and a scrape is never a consistent cut anyway.
            counts = [bucket._value for bucket in child._buckets]
            counts.append(child._sum._value)
            out.append((key, counts))
        return out
    cumulative: dict[tuple[str, ...], list[float]] = {}
    sums: dict[tuple[str, ...], float] = {}
    for family in metric.collect():
        for sample in family.samples:
            key = tuple(v for k, v in sample.labels.items() if k != "le")
            if sample.name.endswith("_bucket"):
                cumulative.setdefault(key, []).append(float(sample.value))
            elif sample.name.endswith("_sum"):
                sums[key] = float(sample.value)
    return [
        (key, [b - a for a, b in zip([0.0, *counts[:-1]], counts, strict=True)] + [sums[key]])
        for key, counts in cumulative.items()
    ]


def histogram_bounds(metric: Any) -> list[float]:
    """The upper bounds of a labelled Histogram's buckets, ``+Inf`` last (its
    children share them); ``[]`` while it has no child."""
    if uses_private("histogram_internals") and uses_private("family_internals"):
        for child in list(metric._metrics.values()):
            return list(child._upper_bounds)
        return []
    bounds: list[float] = []
    first: tuple[str, ...] | None = None
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                key = tuple(v for k, v in sample.labels.items() if k != "le")
                first = key if first is None else first
                if key == first:
                    bounds.append(float(sample.labels["le"]))
    return bounds


# --------------------------------------------------------------------------- Celery worker


def worker_task_counts(worker: Any) -> tuple[int, int]:
    """``(active, prefetched)`` of a running worker, read from Celery's worker state.

    Prefetched: reserved and not started, plus ETA/countdown requests held back
    (``celery.worker.state.scheduled_requests`` on Celery 5.7, else the
    consumer's timer queue, shim ``scheduled_requests``).
    """
    from celery.worker import state

    active = set(state.active_requests)
    reserved = sum(1 for r in list(state.reserved_requests) if r not in active)
    return len(active), reserved + _scheduled_count(worker, state, active)


def _scheduled_count(worker: Any, state: Any, active: set[Any]) -> int:
    if uses_private("scheduled_requests"):
        return len(state.scheduled_requests)
    from celery.worker.request import Request

    consumer = worker.consumer
    if consumer is None or consumer.timer is None:
        return 0  # not consuming yet: nothing can be scheduled
    count = 0
    # kombu's Timer.queue: a sorted snapshot of (eta, priority, entry) tuples;
    # an ETA request waits as entry.args[0] (what `celery inspect scheduled` reads).
    for waiting in consumer.timer.schedule.queue:
        args = waiting.entry.args
        if args and isinstance(args[0], Request) and args[0] not in active:
            count += 1
    return count


def pool_size(worker: Any) -> int:
    """Pool processes or threads of a running worker (behaviour ``pool_num_processes``)."""
    pool = worker.pool
    from celery.concurrency.prefork import TaskPool as PreforkPool

    if isinstance(pool, PreforkPool):
        return int(pool.num_processes)  # the processes it keeps, autoscaled or not
    # Before Celery 5.7 the gevent and eventlet pools' num_processes counts the
    # greenlets running now (0 when idle); ``limit`` is the pool's size everywhere.
    return int(pool.limit)


def request_cancelled(request: Any, stopped_here: bool) -> bool:
    """Whether the worker stopped this request's child on purpose (revoke, cancel);
    ``stopped_here``: what the package itself saw (a revocation, a ``cancel()``)."""
    if uses_private("cancel_flags"):
        return bool(request._already_cancelled or request._already_revoked)
    return stopped_here


# --------------------------------------------------------------------------- Celery app


def install_result_backend(app: Any, backend_class: type) -> None:
    """Make ``app`` build its result backend from ``backend_class``.

    The URL is still read from ``app.conf.result_backend``.  Celery 5.7 takes a
    class in ``Celery.backend_cls``; 5.3 to 5.6 evaluate ``'://' in backend`` on
    it, so it is given as the ``module:Class`` name that every version loads.
    """
    app.backend_cls = f"{backend_class.__module__}:{backend_class.__qualname__}"


def rpc_records_consumer_states() -> bool:
    """Whether the rpc backend's consumer hook is there (shim ``rpc_consumer_states``)."""
    return uses_private("rpc_consumer_states")


def loading_celery_app() -> bool:
    """Whether this process is the ``celery`` command loading its ``-A`` app now."""
    if uses_private("find_app_frame"):
        frame = sys._getframe(1)
        while frame is not None:
            if (
                frame.f_code.co_name == "find_app"
                and frame.f_globals.get("__name__") == "celery.app.utils"
            ):
                return True
            frame = frame.f_back  # type: ignore[assignment]
        return False
    # Without the frame the moment cannot be told from a running worker, where a
    # ConfigError must stay an exception: the caller gets Celery's traceback.
    return False


# --------------------------------------------------------------------------- kombu


def consumer_tag_queues(consumer: Any) -> dict[str, str] | None:
    """``{consumer tag: queue name}`` of a kombu Consumer, or ``None`` (shim
    ``consumer_tags``: the caller then resolves the queue by bindings)."""
    if not uses_private("consumer_tags"):
        return None
    tags = getattr(consumer, "_active_tags", None)
    if not isinstance(tags, dict):
        return None
    return {str(tag): str(queue) for queue, tag in list(tags.items())}


@dataclass(frozen=True)
class RedisLayout:
    """Where kombu's Redis transport keeps one virtual host's queues."""

    prefix: str
    sep: str
    steps: tuple[int, ...]
    unacked_key: str
    binding_prefix: str
    pool: Any

    def keys(self, queue: str) -> list[str]:
        """The lists of every priority step of ``queue`` (kombu's ``_q_for_pri``)."""
        # Step 0 is the bare name, the others "{queue}{sep}{step}"; dict.fromkeys
        # drops repeated steps, which would otherwise be counted twice.
        return [
            self.prefix + (f"{queue}{self.sep}{step}" if step else queue)
            for step in dict.fromkeys(self.steps)
        ]


def redis_layout(channel: Any) -> RedisLayout | None:
    """The layout of a kombu Redis channel, or ``None`` (shim ``redis_channel``)."""
    if not uses_private("redis_channel"):
        return None
    try:
        from kombu.transport.redis import Channel
    except ImportError:  # pragma: no cover
        return None
    if not isinstance(channel, Channel):
        return None
    prefix = channel.global_keyprefix or ""
    return RedisLayout(
        prefix=prefix,
        sep=channel.sep,
        steps=tuple(channel.priority_steps),
        unacked_key=prefix + channel.unacked_key,
        binding_prefix=prefix + channel.keyprefix_queue % ("",),
        pool=channel.pool,
    )
