"""A seed-style worker module with a beat schedule: ``celery -A tests.beat_app``."""

from __future__ import annotations

from csuite_async_obs import get_celery_app

from . import worker_tasks  # noqa: F401 -- registers tests.incr

celery_app = get_celery_app()
celery_app.conf.beat_schedule = {
    "tick-every-second": {"task": "tests.incr", "schedule": 1.0, "args": ("beat:ticks",)},
}
