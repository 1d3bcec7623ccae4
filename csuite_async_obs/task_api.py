"""The task API the platform codes against.

``get_celery_app()`` builds the process's one Celery app from
:class:`~csuite_async_obs.settings.CelerySettings` and instruments it.
``delay_task`` decides "the broker cannot take it" within seconds (bounded
publish retries instead of Celery's long default), so that a web handler can
fall back to running the work inline.  ``get_task_result`` tells an id that was
published through ``delay_task`` but not yet started (PENDING) from an id this
system never saw (``None``): right after publishing, ``delay_task`` leaves a
PENDING marker in the result backend, written only if the worker has not
already stored a state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar, cast

from celery import Celery, Task, states
from celery.result import AsyncResult
from celery.utils import uuid
from kombu.exceptions import OperationalError
from kombu.utils.encoding import safe_str

from .logs import get_logger
from .result_backend import RedisResultBackend, wants_redis_backend
from .settings import CelerySettings

__all__ = [
    "PUBLISH_RETRY_POLICY",
    "TaskStatus",
    "async_task",
    "delay_task",
    "get_celery_app",
    "get_task_result",
    "reset_celery_app",
    "wait_for_task",
]

F = TypeVar("F", bound=Callable[..., Any])
TaskStatus = dict[str, Any]

# At most ~1.5 s of retries after the first failed attempt.  With the socket
# timeouts below, "broker down" is known in about 1 s when the connection is
# refused and about 3 s when the broker accepts but never answers (tested).
PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0.25,
    "interval_step": 0.5,
    "interval_max": 1.0,
}
_SOCKET_TIMEOUTS = {"socket_connect_timeout": 1.5, "socket_timeout": 3.0}

_APP: Celery | None = None
_APP_LOCK = threading.Lock()


def _connection_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OperationalError, OSError, TimeoutError]
    try:
        import redis.exceptions

        errors += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    except ImportError:  # pragma: no cover -- the redis extra is a dependency
        pass
    return tuple(errors)


_CONNECTION_ERRORS = _connection_errors()


def create_celery_app(settings: CelerySettings | None = None, **instrument_options: Any) -> Celery:
    """A new Celery app configured from ``settings`` (default: the environment), instrumented."""
    from .instrument import instrument

    settings = settings or CelerySettings.from_env()
    app = Celery("csuite_async_obs")
    app.conf.update(settings.celery_config())
    if wants_redis_backend(settings.result_backend):
        # Celery.backend_cls (5.x) wins over the URL's scheme; the URL still
        # comes from app.conf.result_backend.
        app.backend_cls = RedisResultBackend
    broker_options = {**_SOCKET_TIMEOUTS}
    if not settings.broker_url.startswith(("redis", "rediss", "sentinel")):
        broker_options = {}
    app.conf.update(
        broker_transport_options=broker_options,
        broker_connection_timeout=2.0,
        redis_socket_connect_timeout=_SOCKET_TIMEOUTS["socket_connect_timeout"],
        broker_connection_retry_on_startup=True,
    )
    instrument(app, **instrument_options)
    return app


def get_celery_app() -> Celery:
    """The process's one Celery app, configured from the ``CELERY_*`` variables.

    Raises:
        ConfigError: a ``CELERY_*`` or ``CSUITE_*`` variable has a bad value.
    """
    global _APP
    if _APP is None:
        with _APP_LOCK:
            if _APP is None:
                _APP = create_celery_app()
    return _APP


def reset_celery_app() -> None:
    """Forget the process's app so the next :func:`get_celery_app` re-reads the environment."""
    global _APP
    with _APP_LOCK:
        _APP = None


def async_task(name: str | None = None, **options: Any) -> Callable[[F], Task]:
    """Register the decorated function as a task on :func:`get_celery_app`'s app.

    The returned task object is still callable inline (``add(1, 2)`` runs the
    function in the caller), and has Celery's ``delay``/``apply_async``.

    Args:
        name: the task name (default: Celery's ``module.function``).
        **options: any Celery task option (``bind``, ``max_retries``, ``queue``,
            ``soft_time_limit``, ``acks_late`` ...).
    """

    def decorator(fn: F) -> Task:
        kwargs = dict(options)
        if name is not None:
            kwargs["name"] = name
        return cast(Task, get_celery_app().task(**kwargs)(fn))

    return decorator


def _as_task(fn_or_task: Any) -> Task:
    if isinstance(fn_or_task, Task):
        return fn_or_task
    if isinstance(fn_or_task, str):
        return get_celery_app().tasks[fn_or_task]
    raise TypeError(
        f"delay_task() needs a task made with @async_task (or its name), got {fn_or_task!r}"
    )


def delay_task(fn_or_task: Any, *args: Any, **kwargs: Any) -> AsyncResult | None:
    """Publish a task; return its ``AsyncResult``, or ``None`` if the broker cannot take it.

    "Cannot" is decided in seconds: the publish is retried at most
    ``PUBLISH_RETRY_POLICY["max_retries"]`` times with short intervals and
    short socket timeouts.  The failure is logged; the caller may then run the
    work inline (``fn_or_task(*args, **kwargs)``).
    """
    task = _as_task(fn_or_task)
    task_id = uuid()
    try:
        result = task.apply_async(
            args, kwargs, task_id=task_id, retry=True, retry_policy=PUBLISH_RETRY_POLICY
        )
    except _CONNECTION_ERRORS as exc:
        get_logger().warning(
            "task_publish_failed",
            name=task.name,
            task_id=task_id,
            error=type(exc).__name__,
            detail=safe_str(exc)[:200],
        )
        return None
    _mark_pending(task, task_id)
    return result


def _mark_pending(task: Task, task_id: str) -> None:
    """Leave a PENDING record unless the worker already stored a state (Redis backend)."""
    backend = task.backend
    client = getattr(backend, "client", None)
    if client is None or not hasattr(backend, "get_key_for_task"):
        return
    meta = {
        "status": states.PENDING,
        "result": None,
        "traceback": None,
        "children": [],
        "date_done": None,
        "task_id": task_id,
    }
    try:
        expires = backend.expires
        client.set(
            backend.get_key_for_task(task_id),
            backend.encode(meta),
            nx=True,
            ex=int(expires) if expires else None,
        )
    except Exception as exc:  # noqa: BLE001 -- the task is queued; only the marker is lost
        get_logger().warning(
            "task_pending_marker_failed", task_id=task_id, error=type(exc).__name__
        )


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
    meta = app.backend.get_task_meta(task_id, cache=False)
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
