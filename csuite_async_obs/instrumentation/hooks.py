"""The hooks' shared state and the publish side, one :class:`TaskHooks` per instrumented app.

Publish side: ``before_task_publish`` stamps the message with the publish time
(and the ETA, when later; :mod:`csuite_async_obs.protocol`) so the worker can
measure time spent in the queue without Celery events.  On AMQP it also sets
the message's ``timestamp`` property, the one publish time RabbitMQ itself can
see (its management API reports the head message's, in whole seconds: the
oldest-message age on RabbitMQ); on kombu's virtual transports the property
would be stored as JSON, so it is left out there.  ``after_task_publish``
counts ``celery_task_sent_total``.  Celery's publish signals carry no app, and
every instrumented app connects to them, so each publish is attributed to the
app that made it: :func:`publishing` marks the app for the duration of its
``send_task`` (through which ``apply_async``, retries, canvas and beat all
publish), and a publish made some other way belongs to Celery's current app.

The worker side is in :mod:`.request`.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import os
import threading
import time
import weakref
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from celery import current_app, signals

from ..logs import get_logger
from ..metrics.errors import ErrorReporter
from ..metrics.task_metrics import TaskMetrics, TaskSeries
from ..protocol import DUE_AT_HEADER, PUBLISHED_AT_HEADER
from .queue_names import UNKNOWN_QUEUE, QueueNames

if TYPE_CHECKING:
    from celery import Celery

    from ..config.options import ObsSettings

__all__ = ["UNKNOWN_QUEUE", "TaskHooks", "publishing"]

_REVOKED_IDS = 10_000

_PUBLISHING: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "csuite_async_obs_publishing", default=None
)
_POOL_PROCESS_PID = 0


#: Whether an app publishes over AMQP, known at its first publish.
_AMQP_APPS: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _publishes_amqp(app: Any) -> bool:
    # Every instrumented app's hook sees every publish: the publishing app decides.
    app = getattr(app, "_get_current_object", lambda: app)()
    known = _AMQP_APPS.get(app)
    if known is None:
        try:
            conn = app.connection_for_write()  # no I/O: only the transport is chosen
            try:
                known = conn.transport.driver_type == "amqp"
            finally:
                conn.release()
        except Exception:  # noqa: BLE001 -- no property then; the publish is what matters
            known = False
        _AMQP_APPS[app] = known
    return known


@contextlib.contextmanager
def publishing(app: Celery) -> Iterator[None]:
    """Attribute the publishes made inside this block to ``app``."""
    token = _PUBLISHING.set(app)
    try:
        yield
    finally:
        _PUBLISHING.reset(token)


_IN_WORKER = False


def worker_booting() -> None:
    """Called by the worker bootstep before the pool starts: a process forked from
    here on is a pool child (or another helper process), whose memory nobody scrapes."""
    global _IN_WORKER
    _IN_WORKER = True


def _mark_pool_process(**_: Any) -> None:
    # worker_process_init: sent by Celery in every prefork pool child (forked or
    # spawned) as it starts, and by the solo pool in the worker itself.
    global _POOL_PROCESS_PID
    _POOL_PROCESS_PID = os.getpid()


def _forked() -> None:
    # A fork of a worker's main process: a pool child from its first instruction,
    # before worker_process_init (imports done while it starts may publish).
    if _IN_WORKER:
        _mark_pool_process()


signals.worker_process_init.connect(_mark_pool_process, weak=False, dispatch_uid=__name__)
os.register_at_fork(after_in_child=_forked)


class TaskHooks:
    """Everything the hooks need: metrics, logger, settings; one per instrumented app."""

    def __init__(self, app: Celery, metrics: TaskMetrics, settings: ObsSettings) -> None:
        self.app = app
        self.metrics = metrics
        self.settings = settings
        self.task_log = settings.task_log
        self.log_args = settings.log_task_args
        self.log = get_logger(settings.log_format)
        self._owner_pid = os.getpid()
        #: ``fail(hook, exc)``: count and (rate-limited) log an error raised
        #: inside the instrumentation; never raises.
        self.fail = ErrorReporter(lambda hook: self.metrics.error(hook), self.log)
        # The instrumented Request class made for each base class (see .request).
        self.request_classes: dict[type, type] = {}
        #: Task ids the task_revoked fallback counted (bounded: only the
        #: de-duplication of one revocation's repeated signals needs them).
        self.revoked_ids: collections.OrderedDict[str, None] = collections.OrderedDict()
        #: The ``queue_name`` label of deliveries and publishes (see .queue_names).
        self.queues = QueueNames(app)
        # The queue a publish named (before_task_publish's declare=[queue]), by task id,
        # for after_task_publish in the same thread (or greenlet, when patched).
        self._declared = threading.local()

    # ------------------------------------------------------------------ publish side

    def before_publish(
        self,
        headers: dict[str, Any] | None = None,
        properties: dict[str, Any] | None = None,
        declare: Any = None,
        **_: Any,
    ) -> None:
        if headers is None:
            return
        try:
            self._declared.last = (headers.get("id"), declare)
            now = time.time()
            if properties is not None and _publishes_amqp(_PUBLISHING.get() or current_app):
                # POSIX seconds: py-amqp packs the property as an unsigned 64-bit integer.
                properties["timestamp"] = int(now)
            # Always overwrite: a retry re-publishes the request's own headers.
            headers[PUBLISHED_AT_HEADER] = now
            headers.pop(DUE_AT_HEADER, None)
            eta = headers.get("eta")
            if eta:
                due = datetime.fromisoformat(eta).timestamp() if isinstance(eta, str) else None
                if due is not None and due > now:
                    headers[DUE_AT_HEADER] = due
        except Exception as exc:  # noqa: BLE001
            self.fail("publish", exc)

    def after_publish(
        self,
        sender: str | None = None,
        headers: dict[str, Any] | None = None,
        exchange: str | None = None,
        routing_key: str | None = None,
        **_: Any,
    ) -> None:
        # A prefork pool child is a separate process whose memory nobody scrapes;
        # it must also never take a metric lock (it may have inherited one held).
        pid = os.getpid()
        if pid == _POOL_PROCESS_PID and pid != self._owner_pid:
            return
        publishing = _PUBLISHING.get()
        if publishing is None:
            # A publish that bypassed Celery.send_task: the current app's (the
            # proxy compares the app it stands for).
            if current_app != self.app:
                return
        elif publishing is not self.app:
            return
        try:
            name = sender or (headers or {}).get("task") or "unknown"
            task_id, declared = getattr(self._declared, "last", (None, None))
            if task_id is None or task_id != (headers or {}).get("id"):
                declared = None
            queue = self.queues.published(exchange, routing_key, declared)
            self.metrics.task(str(name), queue).sent.inc()
        except Exception as exc:  # noqa: BLE001
            self.fail("publish", exc)

    # ------------------------------------------------------------------ worker side

    def series(self, request: Any) -> TaskSeries:
        """The series of a request, labelled with the queue its message came from."""
        return self.metrics.task(request.name, self.queues.delivered(_delivery(request)))

    def received(self, request: Any) -> tuple[TaskSeries, bool]:
        """A new request's series, and whether its message is a redelivery (AMQP's
        redelivered flag; kombu's Redis transport sets it on a restored message)."""
        delivery = _delivery(request)
        series = self.metrics.task(request.name, self.queues.delivered(delivery))
        return series, bool(delivery.get("redelivered"))

    def on_unknown_task(self, message: Any = None, name: str | None = None, **_: Any) -> None:
        try:
            delivery = getattr(message, "delivery_info", None)
            self.metrics.task(name or "unknown", self.queues.delivered(delivery)).rejected.inc()
        except Exception as exc:  # noqa: BLE001
            self.fail("rejected", exc)

    def on_task_revoked(
        self, sender: Any = None, request: Any = None, reason: str = "", **_: Any
    ) -> None:
        """The ``task_revoked`` signal: the fallback where ``Request._announce_revoked``
        is not there to hook (see :mod:`csuite_async_obs.compat`)."""
        try:
            if getattr(sender, "app", None) is not self.app or request is None:
                return
            task_id = getattr(request, "id", None)
            if task_id is None or task_id in self.revoked_ids:
                return
            self.revoked_ids[task_id] = None
            if len(self.revoked_ids) > _REVOKED_IDS:
                self.revoked_ids.popitem(last=False)
            queue = self.queues.delivered(_delivery(request))
            self.metrics.task(str(sender.name), queue).revoked.inc()
        except Exception as exc:  # noqa: BLE001
            self.fail("revoked", exc)

    def event(self, event: str, request: Any, series: TaskSeries, **fields: Any) -> None:
        """One structured lifecycle event (only called when task logging is on)."""
        try:
            if self.log_args:
                fields["args"] = request.argsrepr
                fields["kwargs"] = request.kwargsrepr
            self.log.info(
                event, task_id=request.id, name=series.name, queue_name=series.queue, **fields
            )
        except Exception as exc:  # noqa: BLE001
            self.fail("log", exc)

    def prime(self) -> int:
        """Create the zero series of every registered task on the queue it routes to."""
        count = 0
        router = self.app.amqp.router
        for name in sorted(self.app.tasks):
            if name.startswith("celery."):
                continue
            try:
                queue = router.route({}, name).get("queue")
                queue_name = getattr(queue, "name", None) or getattr(queue, "routing_key", None)
                self.metrics.task(name, queue_name or UNKNOWN_QUEUE)
                count += 1
            except Exception as exc:  # noqa: BLE001
                self.fail("collect", exc)
        return count


def _delivery(request: Any) -> dict[str, Any]:
    """The delivery of a request's message as the transport gave it: kombu's public
    ``Message.delivery_info`` holds the exchange, the routing key, the redelivered
    flag and, on AMQP, the consumer tag, which Celery's ``Request.delivery_info``
    copy (exchange, routing key, priority, redelivered; Celery 5.4.0 to 5.7.0)
    leaves out.  Celery's copy where there is no message."""
    message = getattr(request, "message", None)
    delivery = getattr(message, "delivery_info", None)
    if delivery is None:
        delivery = getattr(request, "delivery_info", None)
    return delivery or {}
