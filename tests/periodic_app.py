"""A beat schedule for the periodic-task tests: ``celery -A tests.periodic_app beat``.

``PERIODIC_SCHEDULER`` picks the scheduler class (Celery's PersistentScheduler by
default); ``PERIODIC_FAIL=1`` makes the interval entry's task fail on every run;
``PERIODIC_INTERVAL`` is the interval entry's period (seconds); ``PERIODIC_REDBEAT_URL``
is RedBeat's Redis (``redbeat_redis_url``).
"""

from __future__ import annotations

import os

from celery.beat import Scheduler
from celery.schedules import crontab

from csuite_async_obs import get_celery_app

from . import worker_tasks  # noqa: F401 -- registers tests.incr and tests.boom

celery_app = get_celery_app()
INTERVAL = float(os.environ.get("PERIODIC_INTERVAL", "5"))
#: The interval entry's task (tests.periodic fails while the test sets a flag).
TASK = os.environ.get("PERIODIC_TASK") or (
    "tests.boom" if os.environ.get("PERIODIC_FAIL") == "1" else "tests.incr"
)
#: Both entries' queue, where a test gives them a worker of their own.
OPTIONS = {"queue": os.environ["PERIODIC_QUEUE"]} if os.environ.get("PERIODIC_QUEUE") else {}
celery_app.conf.beat_schedule = {
    "every-5s": {
        "task": TASK,
        "schedule": INTERVAL,
        "args": ("periodic:every-5s",),
        "options": OPTIONS,
    },
    "every-minute": {
        "task": "tests.incr",
        "schedule": crontab(),
        "args": ("periodic:every-minute",),
        "options": OPTIONS,
    },
}
if os.environ.get("PERIODIC_SCHEDULER"):
    celery_app.conf.beat_scheduler = os.environ["PERIODIC_SCHEDULER"]
if os.environ.get("PERIODIC_REDBEAT_URL"):
    celery_app.conf.redbeat_redis_url = os.environ["PERIODIC_REDBEAT_URL"]


class ReloadingScheduler(Scheduler):
    """Re-reads its entries on every tick, as django-celery-beat syncs from its table."""

    def tick(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.merge_inplace(self.app.conf.beat_schedule)
        return super().tick(*args, **kwargs)
