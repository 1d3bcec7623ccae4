"""A worker module whose app declares topic-bound queues: ``celery -A tests.topic_app``
(the queues: :func:`tests.support.topic_queues`)."""

from __future__ import annotations

from csuite_async_obs import get_celery_app

from . import worker_tasks  # noqa: F401 -- registers the test tasks
from .support import topic_queues

celery_app = get_celery_app()
celery_app.conf.task_queues = topic_queues()
