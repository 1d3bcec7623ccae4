"""The worker's /metrics: valid for promtool, OpenMetrics on request, health, churn without files."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from csuite_async_obs import wait_for_task
from csuite_async_obs.metrics.catalog import METRICS

from . import worker_tasks as t
from .support import http_status, wait_for


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, dict(response.headers), response.read()


def test_promtool_check_metrics_is_clean(workers: Any) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by the test command (apt-get install prometheus)"
    worker = workers(pool="prefork", concurrency=2)
    ids = [t.ok.delay(1).id, t.boom.delay().id, t.retry_once.delay().id]
    for task_id in ids:
        assert wait_for_task(task_id, timeout=30)["ready"]  # type: ignore[index]
    _, _, body = _get(worker.url + "/metrics")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.decode().strip() == "" and check.stderr.decode().strip() == ""
    text = body.decode()
    # Every metric of the reference table is on a worker's scrape, except publish-only
    # and queue-depth ones that appear once their source exists.
    for spec in METRICS:
        if spec.name.startswith("celery_queue_") or spec.process != "worker":
            continue
        assert f"# TYPE {spec.name} {spec.type}" in text, spec.name
    assert "_created" not in text


def test_openmetrics_gzip_and_paths(workers: Any) -> None:
    worker = workers(pool="solo")
    status, headers, body = _get(
        worker.url + "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    status, headers, body = _get(worker.url + "/metrics", {"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip"
    assert b"celery_worker_up" in gzip.decompress(body)

    # An idle worker's gzipped answers (its compression reused) are its plain body, and
    # they follow the next task.
    def idle_bodies() -> tuple[bytes, bytes, bytes] | None:
        first = gzip.decompress(_get(worker.url + "/metrics", {"Accept-Encoding": "gzip"})[2])
        plain = _get(worker.url + "/metrics")[2]
        again = gzip.decompress(_get(worker.url + "/metrics", {"Accept-Encoding": "gzip"})[2])
        return (first, plain, again) if first == plain == again else None

    before = wait_for(idle_bodies, 30, message="three scrapes of an idle worker alike")
    assert wait_for_task(t.ok.delay(1).id, timeout=30)["ready"]  # type: ignore[index]
    after = wait_for(idle_bodies, 30, message="three scrapes of an idle worker alike")
    line = 'celery_task_succeeded_total{name="tests.ok",queue_name="celery"}'
    counts = [
        [float(x.rsplit(b" ", 1)[1]) for x in body.splitlines() if x.startswith(line.encode())]
        for body in (before[0], after[0])
    ]
    assert counts[1] == [counts[0][0] + 1 if counts[0] else 1.0], counts
    status, headers, body = _get(worker.url + "/healthz")
    assert status == 200 and b'"consumer_running": true' in body
    for path in ("/", "/metrics/../etc", "/favicon.ico", "/healthz/x", "/debug"):
        assert http_status(worker.url + path) == 404


def test_healthz_follows_the_consumer_through_a_broker_outage(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    from csuite_async_obs.servers.redis_server import RedisServer

    from .support import Worker

    server = RedisServer().start()
    env = dict(
        worker_env, CELERY_BROKER_URL=f"{server.url}/0", CELERY_RESULT_BACKEND=f"{server.url}/1"
    )
    worker = Worker(env, tmp_path, pool="solo")
    try:
        worker.start()
        assert worker.scrape().value("celery_worker_consumer_up") == 1
        server.stop(kill=True)
        wait_for(
            lambda: http_status(worker.url + "/healthz") == 503,
            30,
            message="/healthz 503 while the broker is down",
        )
        assert worker.scrape().value("celery_worker_consumer_up") == 0
        server.start()
        wait_for(
            lambda: http_status(worker.url + "/healthz") == 200,
            60,
            message="/healthz 200 once the broker is back",
        )
        assert worker.scrape().value("celery_worker_consumer_up") == 1
    finally:
        worker.stop()
        server.stop()


@pytest.mark.parametrize(
    "tasks",
    [
        pytest.param(200, id="200"),
        pytest.param(10_000, id="10000", marks=[pytest.mark.slow, pytest.mark.timeout(3600)]),
    ],
)
def test_child_churn_leaves_no_files_and_exact_counts(
    tasks: int, workers: Any, tmp_path: Path
) -> None:
    workdir = tmp_path / "cwd"
    tmpdir = tmp_path / "tmp"
    workdir.mkdir()
    tmpdir.mkdir()
    worker = workers(
        pool="prefork",
        concurrency=2,
        args=("--max-tasks-per-child", "1"),
        cwd=workdir,
        env={"TMPDIR": str(tmpdir)},
    )
    before = len(worker.scrape().samples)
    for _ in range(tasks):
        t.ok.apply_async(args=(1,), ignore_result=True)

    def finished() -> bool:
        done = worker.scrape().value(
            "celery_task_succeeded_total", name="tests.ok", queue_name="celery"
        )
        return done == tasks

    wait_for(finished, 60 + tasks * 0.1, interval=0.5, message=f"{tasks} churned tasks")
    s = worker.scrape()
    assert s.value("celery_task_started_total", name="tests.ok", queue_name="celery") == tasks
    assert (
        s.value(
            "celery_task_runtime_seconds_count",
            name="tests.ok",
            queue_name="celery",
            state="succeeded",
        )
        == tasks
    )
    # No per-child state: the scrape has exactly as many samples as before the churn.
    assert len(s.samples) == before
    assert os.listdir(workdir) == []
    # billiard keeps one temporary folder of its own (pymp-*); nothing else, and
    # nothing in it, whatever the number of children.
    entries = os.listdir(tmpdir)
    assert len(entries) <= 1 and all(e.startswith("pymp-") for e in entries), entries
    assert all(os.listdir(tmpdir / e) == [] for e in entries)
