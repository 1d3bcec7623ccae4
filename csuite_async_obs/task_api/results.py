"""Reading results: ``get_task_result`` and ``wait_for_task``, which never raise for the task."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from celery import states
from kombu.utils.encoding import safe_str

from .app import get_celery_app

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
    """The task's state as a dict, or ``None`` for an id this system never saw.

    Keys: ``task_id``, ``status`` (Celery state name), ``result`` (the return
    value on success; ``{"type", "message"}`` of the error on failure or
    retry), ``ready`` (finished), ``date_done`` (ISO 8601 or ``None``).
    """
    app = get_celery_app()
    # A ready state never changes, so the backend's cache of ready states is
    # harmless; not every backend takes a ``cache`` argument.
    meta = app.backend.get_task_meta(task_id)
    status = meta.get("status", states.PENDING)
    # An unknown id reads as a bare {"status": "PENDING", "result": None};
    # a stored state (our marker included) carries its task_id.
    if status == states.PENDING and "task_id" not in meta:
        return None
    return {
        "task_id": task_id,
        "status": status,
        "result": _result(status, meta.get("result")),
        "ready": status in states.READY_STATES,
        "date_done": _date(meta.get("date_done")),
    }


def wait_for_task(task_id: str, timeout: float = 60.0) -> TaskStatus | None:
    """Wait until the task is finished or ``timeout`` seconds pass; never raises for the task.

    Returns the :func:`get_task_result` dict plus ``timed_out`` (``True`` when
    it returned because of the timeout).  A failed task is reported in the dict,
    not raised.  ``None`` if the id is still unknown when the time is up.
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
