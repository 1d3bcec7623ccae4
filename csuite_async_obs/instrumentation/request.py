"""The worker side: a Request subclass that counts each task's lifecycle.

Design: every worker-side number is taken in the worker's *main* process, from
the hooks of Celery's ``Request`` object (``__init__``, ``on_accepted``,
``on_success``, ``on_failure``, ``on_timeout``, and revocation), which the
execution pool calls in the main process under every pool: inline for solo
and threads, from the result handler for prefork (the pool child sends its
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
Revocations are seen in ``Request._announce_revoked`` where
:mod:`csuite_async_obs.compat` found it, else through the ``task_revoked``
signal (:meth:`.hooks.TaskHooks.on_task_revoked`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
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

from ..compat import request_cancelled, uses_private
from ..metrics.task_metrics import TaskSeries
from ..protocol import DUE_AT_HEADER, PUBLISHED_AT_HEADER

if TYPE_CHECKING:
    from .hooks import TaskHooks

__all__ = ["InstrumentedRequestMixin", "exception_name", "instrumented_request_class"]


def exception_name(exc: BaseException) -> str:
    """Class name of a task's exception, seen through Celery's pickling wrappers."""
    if isinstance(exc, ExceptionWithTraceback):
        exc = exc.exc
    # UnpickleableExceptionWrapper keeps the original class name.
    wrapped = getattr(exc, "exc_cls_name", None)
    if isinstance(wrapped, str) and wrapped:
        return wrapped
    return type(exc).__name__


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
    _csuite_cancelled = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("on_success")
        if own is not None and not getattr(own, "_csuite_wrapped", False):
            cls.on_success = _wrap_on_success(own)  # type: ignore[method-assign]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        hooks = self._csuite_hooks
        try:
            series, redelivered = hooks.received(self)
            self._csuite_series = series
            if redelivered:
                # A message delivered again (lost connection or worker) is the same
                # task: counting it received would break received = started + waiting.
                series.inc_redelivered()
            else:
                series.inc_received()
            if hooks.task_log:
                hooks.event("task_received", self, series, redelivered=redelivered)
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
                wait = self.time_start - ready_at
                if wait < 0:
                    # The publisher's clock is ahead of this worker's: recorded as 0,
                    # and counted so that the skew is seen (doctor's clock check).
                    series.inc_wait_clamped()
                    wait = 0.0
                series.observe_wait(wait)
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
            series.last_success.set(time.time())
        elif state == "failed":
            series.failed(exception or "Exception").inc()
            series.last_failure.set(time.time())
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
            # Celery turns these into WorkerLostError unless it stopped the child itself.
            stopped = self._csuite_revoked or self._csuite_cancelled or hooks_revoked(self)
            if not request_cancelled(self, stopped):
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
        # A hard time limit reaches the request twice on every supported Celery
        # (billiard's hard-timeout error callback, then on_timeout): count it once.
        if self._csuite_hard:
            return
        self._csuite_hard = True
        series = self._csuite_series or self._csuite_hooks.series(self)
        series.time_limit["hard"].inc()
        if self._csuite_hooks.task_log:
            self._csuite_hooks.event("task_time_limit", self, series, kind="hard")

    def cancel(self, *args: Any, **kwargs: Any) -> Any:
        # Celery cancels a running task to re-queue it (connection loss): its child
        # then exits on purpose, which is not a lost worker.
        self._csuite_cancelled = True
        return super().cancel(*args, **kwargs)

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

    def _csuite_on_revoked(self, reason: str) -> None:
        hooks = self._csuite_hooks
        if self._csuite_revoked:
            return
        self._csuite_revoked = True
        series = self._csuite_series or hooks.series(self)
        series.revoked.inc()
        if self.time_start:
            self._csuite_finish("revoked", None)
        elif hooks.task_log:
            hooks.event("task_revoked", self, series, reason=reason)


def _announce_revoked(
    self: InstrumentedRequestMixin, reason: str, terminated: bool, signum: Any, expired: bool
) -> None:
    # Installed only where compat's announce_revoked probe found Celery's method:
    # every revocation (revoked, expired, terminated) passes through it.
    super(InstrumentedRequestMixin, self)._announce_revoked(reason, terminated, signum, expired)
    try:
        self._csuite_on_revoked(reason)
    except Exception as exc:  # noqa: BLE001
        self._csuite_hooks.fail("revoked", exc)


def hooks_revoked(request: Any) -> bool:
    """Whether the task_revoked fallback saw this request's id revoked."""
    return request.id in request._csuite_hooks.revoked_ids


def instrumented_request_class(base: type[Request], hooks: TaskHooks) -> type[Request]:
    """A subclass of ``base`` (a task's Request class) bound to ``hooks``.

    The classes are cached on ``hooks``, so that they go when the app goes.
    """
    if issubclass(base, InstrumentedRequestMixin) and base._csuite_hooks is hooks:
        return base
    cls = hooks.request_classes.get(base)
    if cls is None:
        attrs: dict[str, Any] = {"_csuite_hooks": hooks, "__module__": __name__}
        if uses_private("announce_revoked"):
            attrs["_announce_revoked"] = _announce_revoked
        cls = type(f"Instrumented{base.__name__}", (InstrumentedRequestMixin, base), attrs)
        hooks.request_classes[base] = cls
    return cls
