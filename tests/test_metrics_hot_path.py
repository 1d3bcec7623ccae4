"""The per-task hot path (TaskSeries.inc_* / observe_*) has the effect of prometheus_client's API."""

from __future__ import annotations

import math
import threading

from prometheus_client import CollectorRegistry, generate_latest

from csuite_async_obs.config.options import ObsSettings
from csuite_async_obs.metrics.task_metrics import TaskMetrics

# Every kind of amount: on a bound, between bounds, below the first, above the
# last finite bound, infinite, zero, negative (clock skew is clamped upstream,
# but the histogram must still match), and NaN (in no bucket, only the sum).
AMOUNTS = [0.0, 0.005, 0.0051, 1e-9, 2.5, 3.0, 299.9, 900.0, 901.0, math.inf, -1.0, 7.25]


def _body(metrics: TaskMetrics) -> str:
    # Without the _created samples: the two sets were created at different instants.
    lines = generate_latest(metrics.registry).decode().splitlines()
    return "\n".join(line for line in lines if "_created" not in line)


def test_hot_path_equals_the_public_api() -> None:
    fast = TaskMetrics(CollectorRegistry(), ObsSettings())
    public = TaskMetrics(CollectorRegistry(), ObsSettings())
    a, b = fast.task("t", "q"), public.task("t", "q")
    for amount in AMOUNTS:
        a.observe_wait(amount)
        b.queue_wait.observe(amount)
        for state in ("succeeded", "failed", "ignored"):
            a.observe_runtime[state](amount)
            public.runtime.labels("t", "q", state).observe(amount)
    for _ in range(3):
        a.inc_received()
        b.received.inc()
    for _ in range(2):
        a.inc_redelivered()
        b.redelivered.inc()
    a.inc_started()
    b.started.inc()
    a.inc_succeeded()
    b.succeeded.inc()
    a.inc_wait_unmeasured()
    public.queue_wait_unmeasured.labels("t", "q").inc()
    assert _body(fast) == _body(public)
    # NaN goes to the sum only (the text of both sums is then NaN).
    a.observe_wait(math.nan)
    b.queue_wait.observe(math.nan)
    assert _body(fast) == _body(public)


def test_hot_path_is_exact_under_threads() -> None:
    metrics = TaskMetrics(CollectorRegistry(), ObsSettings())
    series = metrics.task("t", "q")
    threads, per_thread = 8, 20_000

    def work() -> None:
        for i in range(per_thread):
            series.inc_received()
            series.observe_runtime["succeeded"](i % 7)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    total = threads * per_thread
    reg = metrics.registry
    assert (
        reg.get_sample_value("celery_task_received_total", {"name": "t", "queue_name": "q"})
        == total
    )
    labels = {"name": "t", "queue_name": "q", "state": "succeeded"}
    assert reg.get_sample_value("celery_task_runtime_seconds_count", labels) == total
    assert reg.get_sample_value("celery_task_runtime_seconds_sum", labels) == threads * sum(
        i % 7 for i in range(per_thread)
    )
