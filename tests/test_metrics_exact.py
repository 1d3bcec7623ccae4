"""Every counter on /metrics equals what really happened: real Redis, real workers.

:func:`run_exactness_mix` is the mix itself; ``tests/test_rabbitmq.py`` runs it on RabbitMQ.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
import redis
from celery import Celery
from celery.result import AsyncResult

from csuite_async_obs import get_celery_app, wait_for_task
from csuite_async_obs.metrics.catalog import OUTCOME_STATES, ZERO_STATES

from . import worker_tasks as t
from .support import wait_for

Q = "celery"


def _val(samples: Any, metric: str, **labels: str) -> float:
    value = samples.value(metric, **labels)
    assert value is not None, f"{metric}{labels} is missing from the scrape"
    return value


def _wait_all(ids: list[str], timeout: float = 60.0) -> None:
    for task_id in ids:
        status = wait_for_task(task_id, timeout=timeout)
        assert status is not None and not status["timed_out"], status


def _kill_victim(client: redis.Redis, key: str) -> int:
    pid = int(wait_for(lambda: client.get(key), 30, message="victim pid"))
    os.kill(pid, signal.SIGKILL)
    return pid


class Publisher:
    """Publishes the mix's tasks by name through one app (the broker under test)."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def send(self, task: Any, *args: Any, **options: Any) -> str:
        return str(self.app.send_task(task.name, args=args, **options).id)

    def revoke(self, task_id: str) -> None:
        self.app.control.revoke(task_id)


@pytest.mark.parametrize(
    ("pool", "fallbacks"),
    [
        ("solo", ""),
        ("prefork", ""),
        ("threads", ""),
        ("gevent", ""),
        # Every compat shim on its public fallback, as if the private attributes
        # were missing: the numbers must not change.
        ("solo", "all"),
        ("prefork", "all"),
    ],
)
def test_counters_equal_ground_truth(
    pool: str, fallbacks: str, workers: Any, redis_client: redis.Redis
) -> None:
    prefork = pool == "prefork"
    args: tuple[str, ...] = ("--max-tasks-per-child", "3") if prefork else ()
    env = {"CSUITE_COMPAT_FALLBACKS": fallbacks} if fallbacks else {}
    worker = workers(pool=pool, concurrency=2 if pool != "solo" else 1, args=args, env=env)
    run_exactness_mix(worker, Publisher(get_celery_app()), redis_client, pool)


def run_exactness_mix(worker: Any, pub: Publisher, redis_client: redis.Redis, pool: str) -> None:
    """Publish the mix through ``pub``, wait for it, compare every counter with ground truth."""
    prefork = pool == "prefork"
    app = get_celery_app()  # results are read from the shared result backend

    n_ok, n_fail, n_retry, n_revoked = 12, 5, 4, 3
    ids = [pub.send(t.ok, i) for i in range(n_ok)]
    ids += [pub.send(t.boom) for _ in range(n_fail)]
    ids += [pub.send(t.retry_once) for _ in range(n_retry)]
    # Neither stores a final state on every Celery version (Reject stays STARTED
    # before 5.7, Ignore never stores one): both are awaited through the metrics below.
    pub.send(t.reject)
    pub.send(t.ignore)
    _wait_all(ids)

    # Revoked before they start: queue them behind a blocker that occupies every
    # pool slot, revoke them, then let the blocker finish.
    slots = 1 if pool == "solo" else 2
    blockers = [pub.send(t.sleep, 1.5) for _ in range(slots)]
    revoked = [pub.send(t.ok, "r", countdown=0.5) for _ in range(n_revoked)]
    for task_id in revoked:
        pub.revoke(task_id)
    _wait_all(blockers)

    n_soft = n_hard = n_lost = 0
    if prefork:
        # Time limits need a pool with timers; pool children need prefork.
        n_soft, n_hard, n_lost = 2, 1, 1
        soft = [pub.send(t.soft_limit, 2.0) for _ in range(n_soft)]
        hard = [pub.send(t.hard_limit, 10.0)]
        lost = pub.send(t.victim, "victim:pid")
        _kill_victim(redis_client, "victim:pid")
        _wait_all([*soft, *hard, lost])
        assert AsyncResult(lost, app=app).state == "FAILURE"

    def settled() -> Any:
        s = worker.scrape()
        revoked_now = s.value("celery_task_revoked_total", name="tests.ok", queue_name=Q)
        active = s.value("celery_worker_tasks_active")
        ignored = s.value(
            "celery_task_runtime_seconds_count", name="tests.ignore", queue_name=Q, state="ignored"
        )
        rejected = s.value(
            "celery_task_runtime_seconds_count", name="tests.reject", queue_name=Q, state="rejected"
        )
        done = (revoked_now, active, ignored, rejected) == (n_revoked, 0, 1, 1)
        return s if done else None

    s = wait_for(settled, 30, message="revoked, ignored and rejected counted, pool idle")

    def v(metric: str, name: str, **labels: str) -> float:
        return _val(s, metric, name=name, queue_name=Q, **labels)

    # received: every message, including the re-published retries and the revoked ones
    assert v("celery_task_received_total", "tests.ok") == n_ok + n_revoked
    assert v("celery_task_received_total", "tests.boom") == n_fail
    assert v("celery_task_received_total", "tests.retry_once") == 2 * n_retry
    assert v("celery_task_started_total", "tests.ok") == n_ok
    assert v("celery_task_started_total", "tests.retry_once") == 2 * n_retry
    assert v("celery_task_succeeded_total", "tests.ok") == n_ok
    assert v("celery_task_succeeded_total", "tests.retry_once") == n_retry
    assert v("celery_task_succeeded_total", "tests.boom") == 0
    assert v("celery_task_failed_total", "tests.boom", exception="ValueError") == n_fail
    assert v("celery_task_retried_total", "tests.retry_once") == n_retry
    assert v("celery_task_retried_total", "tests.ok") == 0
    assert v("celery_task_revoked_total", "tests.ok") == n_revoked
    assert v("celery_task_rejected_total", "tests.reject") == 1
    assert v("celery_task_runtime_seconds_count", "tests.ignore", state="ignored") == 1
    assert v("celery_task_runtime_seconds_count", "tests.boom", state="failed") == n_fail
    assert v("celery_task_runtime_seconds_count", "tests.retry_once", state="retried") == n_retry
    assert v("celery_task_runtime_seconds_count", "tests.retry_once", state="succeeded") == n_retry
    assert v("celery_task_runtime_seconds_count", "tests.ok", state="succeeded") == n_ok
    assert v("celery_task_started_total", "tests.sleep") == slots

    if prefork:
        assert (
            v("celery_task_failed_total", "tests.soft_limit", exception="SoftTimeLimitExceeded")
            == n_soft
        )
        assert v("celery_task_time_limit_exceeded_total", "tests.soft_limit", kind="soft") == n_soft
        assert v("celery_task_time_limit_exceeded_total", "tests.soft_limit", kind="hard") == 0
        # A hard limit reaches the request twice on every Celery; it must count once.
        assert v("celery_task_time_limit_exceeded_total", "tests.hard_limit", kind="hard") == n_hard
        assert v("celery_task_time_limit_exceeded_total", "tests.hard_limit", kind="soft") == n_hard
        assert (
            v("celery_task_failed_total", "tests.hard_limit", exception="TimeLimitExceeded")
            == n_hard
        )
        assert v("celery_task_runtime_seconds_count", "tests.hard_limit", state="failed") == n_hard
        assert v("celery_task_worker_lost_total", "tests.victim") == n_lost
        assert v("celery_task_failed_total", "tests.victim", exception="WorkerLostError") == n_lost
        assert v("celery_task_runtime_seconds_count", "tests.victim", state="failed") == n_lost

    # Every task that started ended in exactly one runtime observation.
    started = s.sum("celery_task_started_total")
    observed = s.sum("celery_task_runtime_seconds_count")
    assert observed == started
    assert started == n_ok + n_fail + 2 * n_retry + 2 + slots + n_soft + n_hard + n_lost
    assert _val(s, "celery_worker_tasks_active") == 0
    assert _val(s, "celery_worker_prefetched_tasks") == 0
    assert _val(s, "celery_worker_pool_size") == (1 if pool == "solo" else 2)
    assert s.sum("csuite_async_obs_instrumentation_errors_total") == 0
    assert s.sum("celery_task_queue_wait_unmeasured_total") == 0
    assert s.sum("celery_task_queue_wait_seconds_count") == started


def test_zero_series_before_first_task(workers: Any) -> None:
    worker = workers(pool="solo")
    s = worker.scrape()
    registered = sorted(n for n in get_celery_app().tasks if not n.startswith("celery."))
    assert "tests.never_run" in registered
    for name in registered:
        for metric in (
            "received",
            "started",
            "succeeded",
            "retried",
            "revoked",
            "rejected",
            "queue_wait_unmeasured",
            "queue_wait_clamped",
            "worker_lost",
            "sent",
        ):
            assert _val(s, f"celery_task_{metric}_total", name=name, queue_name=Q) == 0
        # The default profile: succeeded and failed from start, the other states from
        # their first run (test_native_histograms counts the full profile's).
        for state in OUTCOME_STATES:
            if state not in ZERO_STATES:
                found = s.value("celery_task_runtime_seconds_count", name=name, queue_name=Q,
                                state=state)  # fmt: skip
                assert found is None, (name, state, found)
                continue
            assert (
                _val(s, "celery_task_runtime_seconds_count", name=name, queue_name=Q, state=state)
                == 0
            )
            assert (
                _val(
                    s,
                    "celery_task_runtime_seconds_bucket",
                    name=name,
                    queue_name=Q,
                    state=state,
                    le="+Inf",
                )
                == 0
            )
        for kind in ("soft", "hard"):
            assert (
                _val(s, "celery_task_time_limit_exceeded_total", name=name, queue_name=Q, kind=kind)
                == 0
            )
        assert _val(s, "celery_task_queue_wait_seconds_count", name=name, queue_name=Q) == 0
    assert _val(s, "celery_worker_up", hostname=worker.hostname) == 1
    assert _val(s, "celery_worker_consumer_up") == 1


def test_queue_wait_measured_from_publish_or_eta(workers: Any) -> None:
    # Backlog: published while no worker runs, so each waits at least `backlog` seconds.
    backlog = 2.0
    published = time.time()
    queued = [t.started_at.delay().id for _ in range(3)]
    time.sleep(backlog)
    worker = workers(pool="solo")
    _wait_all(queued)
    # Countdown: the ETA, not the publish time, starts the clock.
    countdown = 2.0
    delayed = [t.started_at.apply_async(countdown=countdown).id for _ in range(3)]
    eta_published = time.time()
    _wait_all(delayed)
    app = get_celery_app()
    starts_queued = [AsyncResult(i, app=app).result for i in queued]
    starts_delayed = [AsyncResult(i, app=app).result for i in delayed]
    assert all(start - eta_published >= countdown - 0.05 for start in starts_delayed)

    s = worker.scrape()
    labels = {"name": "tests.started_at", "queue_name": Q}
    assert _val(s, "celery_task_queue_wait_seconds_count", **labels) == 6
    # Ground truth for the backlog: the task's own start time minus publish time.
    true_waits = [start - published for start in starts_queued]
    assert min(true_waits) >= backlog
    # Three of six waited >= 2 s (le=1.0 excludes them); the three ETA tasks
    # waited well under a second after their ETA.
    assert _val(s, "celery_task_queue_wait_seconds_bucket", le="1.0", **labels) == 3
    assert _val(s, "celery_task_queue_wait_seconds_bucket", le="30.0", **labels) == 6
    total = _val(s, "celery_task_queue_wait_seconds_sum", **labels)
    # The sum holds the backlog waits (measured independently above, within the
    # time between the task's start and the worker's accept) plus the small ETA waits.
    assert sum(true_waits) - 0.5 <= total <= sum(true_waits) + 3 * 1.0
