"""Publishing: ``@async_task`` and ``delay_task``, which decides "broker down" in seconds.

``delay_task`` retries a failed publish at most twice with short intervals
(bounded publish retries instead of Celery's long default), so that a web
handler can fall back to running the work inline.  Right after publishing, it
tells the result backend the id is queued (:func:`.known_states.mark_queued`:
a PENDING record in Redis or the database, written only if the worker has not
already stored a state; a per-thread mark with ``rpc://``), so that
:func:`~.results.get_task_result` can tell a queued id from one never seen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from celery import Task
from celery.result import AsyncResult
from celery.utils import uuid
from kombu.exceptions import OperationalError
from kombu.utils.encoding import safe_str

from ..logs import get_logger
from .app import get_celery_app
from .known_states import mark_queued
from .producers import publish_producer
from .retry_policy import PUBLISH_RETRY_POLICY, bounded

__all__ = ["PUBLISH_RETRY_POLICY", "async_task", "delay_task"]

F = TypeVar("F", bound=Callable[..., Any])


def _connection_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OperationalError, OSError, TimeoutError]
    try:
        import redis.exceptions

        errors += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    except ImportError:  # pragma: no cover -- the redis extra is a dependency
        pass
    return tuple(errors)


_CONNECTION_ERRORS = _connection_errors()


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
    short socket timeouts (on AMQP, on connections of its own: see
    :mod:`.producers`).  The failure is logged; the caller may then run the
    work inline (``fn_or_task(*args, **kwargs)``).
    """
    task = _as_task(fn_or_task)
    task_id = uuid()
    try:
        if task.app.conf.task_always_eager:
            # Runs here and now: no broker, and a held producer would be held for the
            # whole task (nested eager calls would wait for one another).
            result = task.apply_async(args, kwargs, task_id=task_id)
        else:
            with bounded(), publish_producer(task.app) as producer:
                result = task.apply_async(
                    args,
                    kwargs,
                    task_id=task_id,
                    retry=True,
                    retry_policy=PUBLISH_RETRY_POLICY,
                    producer=producer,
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
    _mark_queued(task, task_id)
    return result


def _mark_queued(task: Task, task_id: str) -> None:
    """Tell the task's result backend the id is queued; a failure loses only the mark."""
    try:
        mark_queued(task.backend, task_id)
    except Exception as exc:  # noqa: BLE001 -- the task is queued; only the marker is lost
        get_logger().warning(
            "task_pending_marker_failed", task_id=task_id, error=type(exc).__name__
        )
