"""Worker and publisher hooks that turn Celery's task lifecycle into metrics.

Design: every worker-side number is taken in the worker's *main* process, from
the hooks of Celery's ``Request`` object (``__init__``, ``on_accepted``,
``on_success``, ``on_failure``, ``on_timeout``, ``_announce_revoked``), which
the execution pool calls in the main process under every pool: inline for
solo and threads, from the result handler for prefork (the pool child sends its
accept and result messages back to the main process).  We chose this over
prometheus_client's multiprocess mode because:

* nothing is written to disk, so there is no ``PROMETHEUS_MULTIPROC_DIR`` to
  set up or clean, and no file per pool child -- scrape cost does not grow with
  ``--max-tasks-per-child`` churn;
* a child killed by SIGKILL or by a hard time limit cannot take its numbers
  with it: the main process sees ``WorkerLostError`` / ``TimeLimitExceeded``
  for the task and counts it;
* the multiprocess lock is neither fork- nor signal-safe; here pool children
  never touch a metric, so a fork can never inherit a held metric lock.

Celery builds a per-task subclass of the task's ``Request`` class
(``celery.worker.request.create_request_cls``, Celery 5.x) whose ``on_success``
does not call ``super()``; :class:`InstrumentedRequestMixin` therefore wraps
the ``on_success`` of every subclass as it is created (``__init_subclass__``).

Publish side: ``before_task_publish`` stamps the message with the publish time
(and the ETA, when later) so the worker can measure time spent in the queue
without Celery events; ``after_task_publish`` counts ``celery_task_sent_total``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime
from functools import wraps
from typing import TYPE_CHECKING, Any, ClassVar

from billiard.einfo import ExceptionWithTraceback
from celery.exceptions import (
    Ignore,
    Reject,
    Retry,
    Terminated,
    TimeLimitExceeded,
    WorkerLostError,
)
from celery.worker.request import Request

from .logs import get_logger
from .metrics import TaskMetrics, TaskSeries

if TYPE_CHECKING:
    from celery import Celery

    from .settings import ObsSettings

__all__ = [
    "DUE_AT_HEADER",
    "PUBLISHED_AT_HEADER",
    "InstrumentedRequestMixin",
    "TaskHooks",
    "exception_name",
    "instrumented_request_class",
]

# Message headers stamped at publish time (seconds since the epoch, floats).
PUBLISHED_AT_HEADER = "csuite_published_at"
DUE_AT_HEADER = "csuite_due_at"

UNKNOWN_QUEUE = "unknown"
_ERROR_LOG_INTERVAL = 60.0


def exception_name(exc: BaseException) -> str:
    """Class name of a task's exception, seen through Celery's pickling wrappers."""
    if isinstance(exc, ExceptionWithTraceback):
        exc = exc.exc
    # UnpickleableExceptionWrapper keeps the original class name.
    wrapped = getattr(exc, "exc_cls_name", None)
    if isinstance(wrapped, str) and wrapped:
        return wrapped
    return type(exc).__name__


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
        self._last_error_log: dict[str, float] = {}

    # ------------------------------------------------------------------ errors

    def fail(self, hook: str, exc: BaseException) -> None:
        """Count and (rate-limited) log an error raised inside the instrumentation."""
        try:
            self.metrics.error(hook)
            now = time.monotonic()
            if now - self._last_error_log.get(hook, -_ERROR_LOG_INTERVAL) >= _ERROR_LOG_INTERVAL:
                self._last_error_log[hook] = now
                self.log.error("instrumentation_error", hook=hook, exc_info=exc)
        except Exception:  # noqa: BLE001 -- the last line of defence must not raise
            pass

    # ------------------------------------------------------------------ publish side

    def before_publish(self, headers: dict[str, Any] | None = None, **_: Any) -> None:
        if headers is None:
            return
        try:
            now = time.time()
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
        routing_key: str | None = None,
        **_: Any,
    ) -> None:
        # A prefork pool child is a separate process whose memory nobody scrapes;
        # it must also never take a metric lock (it may have inherited one held).
        if os.getpid() != self._owner_pid and _in_pool_child():
            return
        try:
            name = sender or (headers or {}).get("task") or "unknown"
            self.metrics.task(str(name), routing_key or UNKNOWN_QUEUE).sent.inc()
        except Exception as exc:  # noqa: BLE001
            self.fail("publish", exc)

    # ------------------------------------------------------------------ worker side

    def series(self, request: Request) -> TaskSeries:
        delivery = request.delivery_info or {}
        queue = delivery.get("routing_key") or UNKNOWN_QUEUE
        return self.metrics.task(request.name, queue)

    def on_unknown_task(self, message: Any = None, name: str | None = None, **_: Any) -> None:
        try:
            delivery = getattr(message, "delivery_info", None) or {}
            self.metrics.task(
                name or "unknown", delivery.get("routing_key") or UNKNOWN_QUEUE
            ).rejected.inc()
        except Exception as exc:  # noqa: BLE001
            self.fail("rejected", exc)

    def event(self, event: str, request: Request, series: TaskSeries, **fields: Any) -> None:
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
                routing_key = getattr(queue, "routing_key", None) or getattr(queue, "name", None)
                self.metrics.task(name, routing_key or UNKNOWN_QUEUE)
                count += 1
            except Exception as exc:  # noqa: BLE001
                self.fail("collect", exc)
        return count


def _in_pool_child() -> bool:
    from billiard.process import current_process

    # billiard names its pool processes ForkPoolWorker-N / SpawnPoolWorker-N.
    return "PoolWorker" in (current_process().name or "")


def _wrap_on_success(on_success: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(on_success)
    def wrapper(self: InstrumentedRequestMixin, failed__retval__runtime: Any, **kwargs: Any) -> Any:
        self._csuite_result(failed__retval__runtime)
        return on_success(self, failed__retval__runtime, **kwargs)

    wrapper._csuite_wrapped = True  # type: ignore[attr-defined]
    return wrapper


class InstrumentedRequestMixin(Request):
    """Counts a request's lifecycle from the main process; see the module docstring."""

    _csuite_hooks: ClassVar[TaskHooks]
    # Per-request flags, as class defaults so that a request that never needs
    # them costs no attribute writes.
    _csuite_series: TaskSeries | None = None
    _csuite_runtime: float | None = None
    _csuite_done = False
    _csuite_hard = False
    _csuite_revoked = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("on_success")
        if own is not None and not getattr(own, "_csuite_wrapped", False):
            cls.on_success = _wrap_on_success(own)  # type: ignore[method-assign]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        hooks = self._csuite_hooks
        try:
            series = self._csuite_series = hooks.series(self)
            series.inc_received()
            if hooks.task_log:
                hooks.event("task_received", self, series)
        except Exception as exc:  # noqa: BLE001
            hooks.fail("received", exc)

    def on_accepted(self, pid: int, time_accepted: float) -> None:
        super().on_accepted(pid, time_accepted)
        hooks = self._csuite_hooks
        try:
            series = self._csuite_series or hooks.series(self)
            series.inc_started()
            headers = self.request_dict
            ready_at = headers.get(DUE_AT_HEADER) or headers.get(PUBLISHED_AT_HEADER)
            if isinstance(ready_at, (int, float)) and self.time_start:
                # Clock skew between publisher and worker can make this negative.
                series.observe_wait(max(0.0, self.time_start - ready_at))
            else:
                series.inc_wait_unmeasured()
            if hooks.task_log:
                hooks.event("task_started", self, series, pid=pid)
        except Exception as exc:  # noqa: BLE001
            hooks.fail("started", exc)

    def _csuite_result(self, failed__retval__runtime: Any) -> None:
        hooks = self._csuite_hooks
        try:
            failed, _retval, runtime = failed__retval__runtime
            if failed:
                # on_failure comes next with the ExceptionInfo; keep the child's timing.
                self._csuite_runtime = runtime
                return
            self._csuite_finish("succeeded", runtime)
        except Exception as exc:  # noqa: BLE001
            hooks.fail("finished", exc)

    def on_success(self, failed__retval__runtime: Any, **kwargs: Any) -> Any:
        self._csuite_result(failed__retval__runtime)
        return super().on_success(failed__retval__runtime, **kwargs)

    on_success._csuite_wrapped = True  # type: ignore[attr-defined]

    def _csuite_finish(
        self, state: str, runtime: float | None, exception: str | None = None
    ) -> None:
        if self._csuite_done:
            return
        self._csuite_done = True
        hooks = self._csuite_hooks
        series = self._csuite_series or hooks.series(self)
        if state == "succeeded":
            series.inc_succeeded()
        elif state == "failed":
            series.failed(exception or "Exception").inc()
        elif state == "retried":
            series.retried.inc()
        elif state == "rejected":
            series.rejected.inc()
        if runtime is None and self.time_start:
            runtime = max(0.0, time.time() - self.time_start)
        if runtime is not None:
            series.observe_runtime[state](runtime)
        if hooks.task_log:
            fields: dict[str, Any] = {"state": state, "runtime": runtime}
            if exception:
                fields["exception"] = exception
            hooks.event(f"task_{state}", self, series, **fields)

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        hooks = self._csuite_hooks
        try:
            self._csuite_classify(exc_info.exception)
        except Exception as exc:  # noqa: BLE001
            hooks.fail("finished", exc)
        return super().on_failure(
            exc_info, send_failed_event=send_failed_event, return_ok=return_ok
        )

    def _csuite_classify(self, exc: BaseException) -> None:
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        runtime = self._csuite_runtime
        if isinstance(exc, Terminated):
            self._csuite_finish("revoked", runtime)
        elif isinstance(exc, (SystemExit, KeyboardInterrupt)):
            # Celery 5.7 turns these into WorkerLostError unless we killed the child.
            if not (self._already_cancelled or self._already_revoked):
                self._csuite_lost(runtime)
        elif isinstance(exc, Reject):
            self._csuite_finish("rejected", runtime)
        elif isinstance(exc, Ignore):
            self._csuite_finish("ignored", runtime)
        elif isinstance(exc, Retry):
            self._csuite_finish("retried", runtime)
        elif isinstance(exc, WorkerLostError):
            self._csuite_lost(runtime)
        elif isinstance(exc, TimeLimitExceeded):
            self._csuite_hard_limit()
            self._csuite_finish("failed", runtime, "TimeLimitExceeded")
        else:
            self._csuite_finish("failed", runtime, exception_name(exc))

    def _csuite_lost(self, runtime: float | None) -> None:
        if not self._csuite_done:
            series = self._csuite_series or self._csuite_hooks.series(self)
            series.worker_lost.inc()
        self._csuite_finish("failed", runtime, "WorkerLostError")

    def _csuite_hard_limit(self) -> None:
        # Celery 5.7 reports a hard time limit twice (pool error callback, then
        # on_timeout): count it once per request.
        if self._csuite_hard:
            return
        self._csuite_hard = True
        series = self._csuite_series or self._csuite_hooks.series(self)
        series.time_limit["hard"].inc()
        if self._csuite_hooks.task_log:
            self._csuite_hooks.event("task_time_limit", self, series, kind="hard")

    def on_timeout(self, soft: bool, timeout: float) -> None:
        hooks = self._csuite_hooks
        try:
            if soft:
                series = self._csuite_series or hooks.series(self)
                series.time_limit["soft"].inc()
                if hooks.task_log:
                    hooks.event("task_time_limit", self, series, kind="soft", limit=timeout)
            else:
                self._csuite_hard_limit()
                self._csuite_finish("failed", None, "TimeLimitExceeded")
        except Exception as exc:  # noqa: BLE001
            hooks.fail("timeout", exc)
        super().on_timeout(soft, timeout)

    def _announce_revoked(self, reason: str, terminated: bool, signum: Any, expired: bool) -> None:
        super()._announce_revoked(reason, terminated, signum, expired)
        hooks = self._csuite_hooks
        try:
            if not self._csuite_revoked:
                self._csuite_revoked = True
                series = self._csuite_series or hooks.series(self)
                series.revoked.inc()
                if self.time_start:
                    self._csuite_finish("revoked", None)
                elif hooks.task_log:
                    hooks.event("task_revoked", self, series, reason=reason)
        except Exception as exc:  # noqa: BLE001
            hooks.fail("revoked", exc)


_REQUEST_CLASSES: dict[tuple[int, type], type[InstrumentedRequestMixin]] = {}


def instrumented_request_class(base: type[Request], hooks: TaskHooks) -> type[Request]:
    """A subclass of ``base`` (a task's Request class) bound to ``hooks``."""
    if issubclass(base, InstrumentedRequestMixin) and base._csuite_hooks is hooks:
        return base
    key = (id(hooks), base)
    cls = _REQUEST_CLASSES.get(key)
    if cls is None:
        cls = type(
            f"Instrumented{base.__name__}",
            (InstrumentedRequestMixin, base),
            {"_csuite_hooks": hooks, "__module__": __name__},
        )
        _REQUEST_CLASSES[key] = cls
    return cls
