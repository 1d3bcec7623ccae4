"""Queue depth served by a real worker and by `csuite-async-obs exporter`, on the real Redis."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from csuite_async_obs.servers.redis_server import free_port
from csuite_async_obs.testing import Samples, scrape

from . import worker_tasks as t
from .support import ROOT, wait_for


def _lengths(s: Samples) -> dict[str, float]:
    return {x.labels["queue_name"]: x.value for x in s.find("celery_queue_length")}


def test_worker_reports_its_queues_and_the_standalone_exporter_agrees(
    workers: Any, worker_env: dict[str, str], tmp_path: Path
) -> None:
    # Nobody consumes "qw.waiting": its messages stay. The worker consumes "qw.busy".
    for priority in (None, 0, 5, 9, 9):
        t.ok.apply_async(args=(1,), queue="qw.waiting", priority=priority)
    worker = workers(
        pool="prefork",
        concurrency=2,
        args=("-Q", "qw.busy", "--metrics-queues", "qw.waiting,qw.never-used",
              "--metrics-queue-poll-interval", "0.5"),
    )  # fmt: skip
    expected = {"qw.waiting": 5.0, "qw.busy": 0.0, "qw.never-used": 0.0, "celery": 0.0}
    wait_for(lambda: _lengths(worker.scrape()) == expected, 30, message="exact queue lengths")
    s = worker.scrape()
    assert s.value("celery_queue_length_poll_errors_total") == 0
    for queue in expected:
        assert s.value("celery_queue_unacked_messages", queue_name=queue) == 0

    port = free_port()
    with open(tmp_path / "exporter.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "csuite_async_obs.cli", "exporter", "--metrics-port", str(port),
             "--metrics-addr", "127.0.0.1", "--metrics-queues", "qw.waiting,qw.busy,qw.never-used",
             "--metrics-queue-poll-interval", "0.5"],
            env=worker_env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_for(lambda: _lengths(scrape(url)) == expected, 30, message="standalone lengths")
        # Both see the same broker: one more message shows on both.
        t.ok.apply_async(args=(2,), queue="qw.waiting")
        expected["qw.waiting"] = 6.0
        wait_for(lambda: _lengths(scrape(url)) == expected, 30, message="standalone update")
        wait_for(lambda: _lengths(worker.scrape()) == expected, 30, message="worker update")
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0


def test_queue_depth_can_be_turned_off_per_worker(workers: Any) -> None:
    worker = workers(pool="solo", env={"CSUITE_QUEUE_DEPTH": "false"})
    s = worker.scrape()
    assert s.find("celery_queue_length") == []
    assert s.find("celery_queue_length_poll_errors_total") == []
    assert s.value("celery_worker_up", hostname=worker.hostname) == 1


def test_a_queue_stays_reported_after_its_consumer_is_cancelled(workers: Any) -> None:
    worker = workers(
        pool="solo", args=("-Q", "celery,qc.cancelled", "--metrics-queue-poll-interval", "0.5")
    )
    wait_for(lambda: "qc.cancelled" in _lengths(worker.scrape()), 30, message="qc.cancelled polled")
    app = t.ok.app
    replies = app.control.cancel_consumer("qc.cancelled", destination=[worker.hostname], reply=True)
    assert replies and "ok" in next(iter(replies[0].values())), replies
    # Nobody consumes it now: what is published there stays, and must be seen.
    for i in range(3):
        t.ok.apply_async(args=(i,), queue="qc.cancelled")
    wait_for(
        lambda: _lengths(worker.scrape()).get("qc.cancelled") == 3.0,
        30,
        message="the cancelled queue's backlog reported",
    )
