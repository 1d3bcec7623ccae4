"""Reading results: ``get_task_result`` and ``wait_for_task``, which never raise for the task."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from celery import states
from kombu.utils.encoding import safe_str

from .app import get_celery_app
from .known_states import read_state

__all__ = ["TaskStatus", "get_task_result", "wait_for_task"]

TaskStatus = dict[str, Any]


def _date(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 -- a task's exception may not even print
        return f"<unprintable {type(exc).__name__}>"


def _result(status: str, value: Any) -> Any:
    if isinstance(value, BaseException):
        return {"type": type(value).__name__, "message": _message(value)}
    if status == states.FAILURE and isinstance(value, dict) and "exc_type" in value:
        return {"type": value.get("exc_type"), "message": safe_str(value.get("exc_message"))}
    return value


def get_task_result(task_id: str) -> TaskStatus | None:
    """The task's state as a dict, or ``None`` when no state of the id is visible here.

    Keys: ``task_id``, ``status`` (Celery state name), ``result`` (the return
    value on success; ``{"type", "message"}`` of the error on failure or
    retry), ``ready`` (finished), ``date_done`` (ISO 8601 once ready, else
    ``None``; also ``None`` with ``rpc://`` before Celery 5.7, whose state
    messages carry no time).

    A task published by :func:`~.publishing.delay_task` and not started reads
    ``PENDING``.  What ``None`` means depends on the result backend:

    - ``redis://``, ``db+...``: an id with no stored state, i.e. never
      published through ``delay_task`` and not started, or expired.
    - ``rpc://``: additionally every id this *thread* did not publish: its
      states go to the publishing thread's reply queue, so queued, running,
      finished elsewhere and never sent cannot be told apart here.
    """
    meta = read_state(get_celery_app().backend, task_id)
    if meta is None:
        return None
    status = meta.get("status", states.PENDING)
    ready = status in states.READY_STATES
    return {
        "task_id": task_id,
        "status": status,
        "result": _result(status, meta.get("result")),
        "ready": ready,
        "date_done": _date(meta.get("date_done")) if ready else None,
    }


def wait_for_task(task_id: str, timeout: float = 60.0) -> TaskStatus | None:
    """Wait until the task is finished or ``timeout`` seconds pass; never raises for the task.

    Returns the :func:`get_task_result` dict plus ``timed_out`` (``True`` when
    it returned because of the timeout).  A failed task is reported in the dict,
    not raised.  ``None`` if no state of the id is visible when the time is up
    (what that means per backend: :func:`get_task_result`).
    """
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        status = get_task_result(task_id)
        if status is not None and status["ready"]:
            return {**status, "timed_out": False}
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None if status is None else {**status, "timed_out": True}
        time.sleep(min(delay, remaining))
        delay = min(delay * 1.5, 0.25)
