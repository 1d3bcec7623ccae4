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

It is installed as the app's backend *class* (``app.backend_cls``), not
through the ``result_backend`` URL, because Celery lets a
``CELERY_RESULT_BACKEND`` environment variable override the configured URL;
the URL is still read from ``app.conf.result_backend``.
"""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend

__all__ = ["RedisResultBackend", "wants_redis_backend"]


class RedisResultBackend(RedisBackend):  # type: ignore[misc]
    """Celery's Redis backend minus the subscription at publish."""

    def __init__(self, *args: Any, url: str | None = None, app: Any = None, **kwargs: Any) -> None:
        if url is None and app is not None:
            url = app.conf.result_backend
        super().__init__(*args, url=url, app=app, **kwargs)

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None


def wants_redis_backend(url: str) -> bool:
    """Whether ``url`` selects Celery's plain Redis result backend."""
    return url.startswith(("redis://", "rediss://", "unix://"))
