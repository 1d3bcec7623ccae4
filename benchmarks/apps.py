"""The Celery apps the benchmark workers run, built identically for every case.

Every worker of a comparison runs the *same* app configuration and tasks; the
cases differ only by what is layered on top (``instrument(app)``, ``-E``,
OpenTelemetry).  The app is a bare ``Celery()`` -- not the package's
``get_celery_app()``, which instruments its app and sets time limits and
``task_track_started`` -- so that the plain worker carries no instrumentation.

Environment read at import:

* ``BENCH_BROKER_URL`` -- the broker (a private redis-server, one DB per worker);
* ``BENCH_TASK_NAMES`` -- extra no-op tasks ``bench.named.0000`` ... to register
  (the scrape benchmark's label cardinality); default 0;
* ``BENCH_QUEUES`` -- queues the named tasks are routed to round-robin; default 1.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

__all__ = ["BENCH_QUEUE", "ERRORS", "BoomError", "make_app", "named_task", "queue_name"]

#: The queue the A/B workers consume.
BENCH_QUEUE = "bench"


def named_task(index: int) -> str:
    """Name of the ``index``-th extra task."""
    return f"bench.named.{index:04d}"


def queue_name(index: int) -> str:
    """Name of the ``index``-th extra queue."""
    return BENCH_QUEUE if index == 0 else f"{BENCH_QUEUE}.{index:03d}"


class BoomError(Exception):
    """Raised by ``bench.fail``; its subclasses make distinct exception label values."""


#: Module-level subclasses, so that prefork children can pickle them by reference.
ERRORS: tuple[type[BoomError], ...] = tuple(
    type(f"BenchError{kind:03d}", (BoomError,), {"__module__": __name__}) for kind in range(64)
)
for _error in ERRORS:
    globals()[_error.__name__] = _error


def make_app(main: str) -> Celery:
    """A plain Celery app with the benchmark tasks, configured from ``BENCH_*``."""
    app = Celery(main)
    names = int(os.environ.get("BENCH_TASK_NAMES", "0"))
    queues = max(1, int(os.environ.get("BENCH_QUEUES", "1")))
    app.conf.update(
        broker_url=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/1"),
        task_ignore_result=True,
        task_default_queue=BENCH_QUEUE,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        task_routes={named_task(i): {"queue": queue_name(i % queues)} for i in range(names)},
    )

    app.task(name="bench.noop")(noop)
    app.task(name="bench.sleep")(sleep)
    app.task(name="bench.fail")(fail)
    for i in range(names):
        app.task(name=named_task(i))(noop)
    return app


def noop(*_: Any) -> None:
    """The no-op task: as little work as possible, so that the worker's own cost shows."""
    return None


def sleep(seconds: float) -> None:
    """A task that sleeps ``seconds``: where the relative cost of instrumentation fades."""
    time.sleep(seconds)


def fail(kind: int = 0) -> None:
    """Raises a distinct exception class per ``kind``: the exception label's cardinality."""
    raise ERRORS[kind % len(ERRORS)](kind)
