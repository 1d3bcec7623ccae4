"""The Redis result backend, without a pub/sub subscription at publish time.

Celery's Redis backend subscribes to a task's result channel *before* it
publishes the task (``on_task_call``), so that ``AsyncResult.get()`` is woken
at once.  When Redis is down, that subscription retries for about 19 s (the
backend's retry policy: 20 attempts) before the publish is even tried, which
would keep :func:`~csuite_async_obs.delay_task` from reporting "broker down"
within seconds.  This package reads results by polling (``wait_for_task``),
and ``AsyncResult.get()`` still subscribes when it is called, so the early
subscription is dropped; everything else, including the worker's retries when
storing results, is Celery's.

Queued versus unknown: ``delay_task`` leaves a PENDING record with the task's
id right after publishing, with ``SET NX`` so that a state the worker stored
first is never overwritten.  Celery answers an id without a record with a bare
``{"status": "PENDING", "result": None}`` (no ``task_id``): unknown.

It is installed as the app's backend *class* (``app.backend_cls``), not
through the ``result_backend`` URL, because Celery lets a
``CELERY_RESULT_BACKEND`` environment variable override the configured URL;
the URL is still read from ``app.conf.result_backend``.
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.backends.redis import RedisBackend

from .known_states import KnownStates

__all__ = ["RedisResultBackend", "wants_redis_backend"]


class RedisResultBackend(KnownStates, RedisBackend):  # type: ignore[misc]
    """Celery's Redis backend minus the subscription at publish, plus queued markers."""

    def __init__(self, *args: Any, url: str | None = None, app: Any = None, **kwargs: Any) -> None:
        if url is None and app is not None:
            url = app.conf.result_backend
        super().__init__(*args, url=url, app=app, **kwargs)

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None

    def mark_queued(self, task_id: str) -> None:
        meta = {
            "status": states.PENDING,
            "result": None,
            "traceback": None,
            "children": [],
            "date_done": None,
            "task_id": task_id,
        }
        expires = self.expires
        self.client.set(
            self.get_key_for_task(task_id),
            self.encode(meta),
            nx=True,
            ex=int(expires) if expires else None,
        )

    def read_state(self, task_id: str) -> dict[str, Any] | None:
        meta: dict[str, Any] = self.get_task_meta(task_id)
        # A stored state (the marker included) carries its task_id; Celery's
        # answer for a missing key does not.
        if meta.get("status", states.PENDING) == states.PENDING and "task_id" not in meta:
            return None
        return meta


def wants_redis_backend(url: str) -> bool:
    """Whether ``url`` selects Celery's plain Redis result backend."""
    return url.startswith(("redis://", "rediss://", "unix://"))
