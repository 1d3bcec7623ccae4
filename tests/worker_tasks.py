"""Tasks the test workers run (imported through CELERY_IMPORTS=tests.worker_tasks)."""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery.exceptions import Ignore, Reject, SoftTimeLimitExceeded

from csuite_async_obs import async_task


def _redis() -> redis.Redis:
    # The tests' own Redis (db 0), where tasks leave what the test waits for.
    return redis.Redis.from_url(os.environ.get("TEST_REDIS_URL") or os.environ["CELERY_BROKER_URL"])


@async_task(name="tests.ok")
def ok(value: Any = None) -> Any:
    return value


@async_task(name="tests.boom")
def boom(message: str = "boom") -> None:
    raise ValueError(message)


@async_task(name="tests.retry_once", bind=True, max_retries=3)
def retry_once(self: Any, countdown: float = 0.05) -> int:
    if self.request.retries == 0:
        raise self.retry(countdown=countdown)
    return self.request.retries


@async_task(name="tests.soft_limit", soft_time_limit=0.3, time_limit=10)
def soft_limit(seconds: float = 2.0) -> None:
    time.sleep(seconds)


@async_task(name="tests.hard_limit", time_limit=1, soft_time_limit=0.5)
def hard_limit(seconds: float = 10.0) -> None:
    """Ignores its soft time limit, so the hard one kills it."""
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        time.sleep(seconds)


@async_task(name="tests.victim")
def victim(key: str, seconds: float = 60.0) -> None:
    """Publishes its pid under ``key`` and sleeps, waiting to be killed."""
    _redis().set(key, os.getpid())
    time.sleep(seconds)


@async_task(name="tests.sleep")
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@async_task(name="tests.gate")
def gate(key: str, timeout: float = 60.0) -> bool:
    """Runs until the test sets ``key`` in its Redis (at most ``timeout`` seconds): a
    blocker that outlasts whatever the test does meanwhile, on any machine's speed.
    Whether it was opened, not timed out."""
    client = _redis()
    deadline = time.monotonic() + timeout
    while not client.exists(key):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


@async_task(name="tests.started_at")
def started_at() -> float:
    """Returns the wall-clock time it started (ground truth for queue wait)."""
    return time.time()


@async_task(name="tests.reject")
def reject() -> None:
    raise Reject("no thanks", requeue=False)


@async_task(name="tests.ignore")
def ignore() -> None:
    raise Ignore()


@async_task(name="tests.never_run")
def never_run() -> None:
    """Registered so that its zero series show; no test sends it."""


@async_task(name="tests.incr")
def incr(key: str) -> int:
    return int(_redis().incr(key))


# --- tasks of the alerting end-to-end test (tests/test_alerts_e2e.py) ------------------


@async_task(name="tests.periodic")
def periodic(key: str) -> int:
    """A periodic task that fails while the test has set ``<key>:fail``."""
    client = _redis()
    if client.exists(f"{key}:fail"):
        raise RuntimeError("scripted periodic failure")
    return int(client.incr(key))


@async_task(name="tests.flaky")
def flaky(fail: bool = False) -> bool:
    """A busy task whose failures the caller scripts."""
    if fail:
        raise ValueError("scripted failure")
    return True


@async_task(name="tests.rare")
def rare(fail: bool = False) -> bool:
    """A task that runs a few times an hour; fails when told to."""
    if fail:
        raise LookupError("scripted rare failure")
    return True


# ---------------------------------------------------------------- tests/test_faults.py


class UnprintableError(Exception):
    """An exception whose ``str()`` itself raises."""

    def __str__(self) -> str:
        raise RuntimeError("str() of this exception raises")


@async_task(name="tests.unprintable")
def unprintable() -> None:
    raise UnprintableError("payload")


@async_task(name="tests.big_error")
def big_error(size: int) -> None:
    """Raises a ValueError whose message is ``size`` characters long."""
    raise ValueError("x" * size)


WEIRD_TASK_NAME = 'tests.weird "quoted"\nname \\ back\\slash ✓ ünïcode'
WEIRD_QUEUE_NAME = 'q "weird"\n\\ ✓ ü'


@async_task(name=WEIRD_TASK_NAME)
def weird(value: Any = None) -> Any:
    return value


@async_task(name="tests.soft_limit_caught", soft_time_limit=0.3, time_limit=10)
def soft_limit_caught(seconds: float = 5.0) -> str:
    """Catches its soft time limit and returns normally."""
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "not interrupted"


@async_task(name="tests.mark", bind=True)
def mark(self: Any, folder: str, seconds: float = 0.0) -> str:
    """Leaves one new file in ``folder`` per execution (ground truth outside Redis)."""
    token = f"{self.request.id}.{os.getpid()}.{time.time_ns()}"
    with open(os.path.join(folder, token), "x"):
        pass
    time.sleep(seconds)
    return token


@async_task(name="tests.hold", acks_late=True)
def hold(seconds: float) -> float:
    """Sleeps with its message unacknowledged (``acks_late``): a prefork worker whose
    every process holds one prefetches nothing more (its prefetch count is reached), so
    n of them published at once fill n pool slots across the workers."""
    time.sleep(seconds)
    return seconds
