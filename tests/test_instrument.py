"""instrument(): options three ways, cardinality guard, faults inside the instrumentation, logs."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from prometheus_client import CollectorRegistry

from csuite_async_obs import instrument, wait_for_task
from csuite_async_obs.config.options import ObsSettings
from csuite_async_obs.metrics.task_metrics import LabelGuard, TaskMetrics

from . import worker_tasks as t


@pytest.fixture()
def memory_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    # Celery lets these variables override any app's configuration.
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)
    app = Celery("unit", broker="memory://", backend="cache+memory://")
    # kombu's memory transport is one per process: a queue of its own per test.
    queue = f"unit-{uuid.uuid4().hex[:8]}"
    app.conf.update(
        task_track_started=True, worker_hijack_root_logger=False, task_default_queue=queue
    )

    @app.task(name="unit.add", shared=False)
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="unit.fail", shared=False)
    def fail() -> None:
        raise KeyError("missing")

    yield app


def test_publish_side_counts_exactly(memory_app: Celery) -> None:
    registry = CollectorRegistry()
    instrumentation = instrument(memory_app, registry=registry, metrics_port=0)
    assert instrument(memory_app) is instrumentation  # idempotent
    for i in range(7):
        memory_app.tasks["unit.add"].delay(i, i)
    memory_app.tasks["unit.fail"].apply_async(queue="other")
    value = registry.get_sample_value
    queue = memory_app.conf.task_default_queue
    assert value("celery_task_sent_total", {"name": "unit.add", "queue_name": queue}) == 7
    assert value("celery_task_sent_total", {"name": "unit.fail", "queue_name": "other"}) == 1
    instrumentation.disconnect_signals()


def test_in_process_worker_counts_and_survives_instrumentation_faults(memory_app: Celery) -> None:
    registry = CollectorRegistry()
    instrumentation = instrument(
        memory_app, registry=registry, metrics_port=0, const_labels={"team": "core"}
    )
    metrics = instrumentation.metrics
    original = metrics.task

    def broken(name: str, queue: str) -> Any:
        if name == "unit.fail":
            raise RuntimeError("injected fault in the instrumentation")
        return original(name, queue)

    try:
        with start_worker(memory_app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
            metrics.task = broken  # type: ignore[method-assign]
            ok = [memory_app.tasks["unit.add"].delay(i, 1) for i in range(5)]
            bad = memory_app.tasks["unit.fail"].delay()
            assert [r.get(timeout=10) for r in ok] == [1, 2, 3, 4, 5]
            with pytest.raises(KeyError):
                bad.get(timeout=10, propagate=True)
    finally:
        metrics.task = original  # type: ignore[method-assign]
        instrumentation.disconnect_signals()
    # The worker's stop (a "terminate" here) took the exporter and poller threads with it.
    assert [th.name for th in threading.enumerate() if th.name.startswith("csuite-")] == []
    labels = {"name": "unit.add", "queue_name": memory_app.conf.task_default_queue, "team": "core"}
    value = registry.get_sample_value
    assert value("celery_task_succeeded_total", labels) == 5
    assert value("celery_task_runtime_seconds_count", {**labels, "state": "succeeded"}) == 5
    # The faulty task ran and failed on its own account; every hook that failed
    # for it was counted, none raised into the task or the worker.
    errors = {
        h: value("csuite_async_obs_instrumentation_errors_total", {"hook": h, "team": "core"})
        for h in ("received", "started", "finished", "publish")
    }
    assert errors == {"received": 1.0, "started": 1.0, "finished": 1.0, "publish": 1.0}


def test_label_guard_reports_overflow_as_other() -> None:
    registry = CollectorRegistry()
    metrics = TaskMetrics(registry, ObsSettings(max_task_names=2, max_exceptions=1))
    for name in ("a", "b", "c", "d"):
        metrics.task(name, "q").succeeded.inc()
    metrics.task("a", "q").failed("ValueError").inc()
    metrics.task("a", "q").failed("KeyError").inc()
    value = registry.get_sample_value
    assert value("celery_task_succeeded_total", {"name": "a", "queue_name": "q"}) == 1
    assert value("celery_task_succeeded_total", {"name": "other", "queue_name": "q"}) == 2
    assert (
        value("celery_task_failed_total", {"name": "a", "queue_name": "q", "exception": "other"})
        == 1
    )
    assert value("csuite_async_obs_label_overflow_total", {"label": "name"}) == 2
    assert value("csuite_async_obs_label_overflow_total", {"label": "exception"}) == 1
    # A stream of new names neither adds series nor grows the look-up cache.
    for i in range(1000):
        metrics.task(f"dynamic-{i}", "q").received.inc()
    assert value("celery_task_received_total", {"name": "other", "queue_name": "q"}) == 1000
    assert len(metrics._children) == 3  # (a, q), (b, q), (other, q)
    guard_calls = LabelGuard("x", 1, metrics.overflow.labels("x"))
    assert [guard_calls(v) for v in ("p", "p", "q")] == ["p", "p", "other"]


def test_worker_flags_env_and_lifecycle_logs(workers: Any) -> None:
    worker = workers(
        pool="solo",
        args=("--metrics-const-labels", "team=core,env=test", "--metrics-runtime-buckets", "0.5,2"),
        env={
            "CSUITE_TASK_LOG": "true",
            "CSUITE_LOG_FORMAT": "json",
            "CSUITE_RUNTIME_BUCKETS": "9,99",
        },  # the flag wins over the variable
    )
    result = t.ok.delay("secret-argument")
    assert wait_for_task(result.id, timeout=30)["status"] == "SUCCESS"  # type: ignore[index]
    s = worker.scrape()
    labels = {
        "name": "tests.ok",
        "queue_name": "celery",
        "state": "succeeded",
        "team": "core",
        "env": "test",
    }
    buckets = sorted(x.labels["le"] for x in s.find("celery_task_runtime_seconds_bucket", **labels))
    assert buckets == ["+Inf", "0.5", "2.0"]
    assert s.value("celery_task_runtime_seconds_count", **labels) == 1
    events = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    mine = [e for e in events if e.get("task_id") == result.id]
    assert [e["event"] for e in mine] == ["task_received", "task_started", "task_succeeded"]
    assert mine[-1]["state"] == "succeeded" and mine[-1]["queue_name"] == "celery"
    assert isinstance(mine[-1]["runtime"], float)
    assert all("args" not in e for e in mine)
