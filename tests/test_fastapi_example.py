"""examples/fastapi_app.py served by uvicorn, driven by a real HTTP client, broker up and down."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from csuite_async_obs.servers.redis_server import free_port
from csuite_async_obs.testing import Samples

from .support import ROOT, base_env, wait_for


@contextmanager
def serve(env: dict[str, str], log: Path) -> Iterator[str]:
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "examples.fastapi_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: httpx.get(url + "/docs", timeout=2).status_code == 200, 60, message="uvicorn up"
        )
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_process_and_status_with_broker_up(
    workers: Any, worker_env: dict[str, str], tmp_path: Path
) -> None:
    env = dict(worker_env, CELERY_IMPORTS="examples.tasks")
    workers(pool="solo", env={"CELERY_IMPORTS": "examples.tasks"})
    with serve(env, tmp_path / "api.log") as url, httpx.Client(base_url=url, timeout=10) as client:
        answers = [client.post("/process", json={"values": [1, 2, 3, 4]}) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 200]
        body = answers[0].json()
        assert set(body) == {"task_id", "status"} and body["status"] == "started"

        def done() -> Any:
            status = client.get(f"/task/{body['task_id']}").json()
            return status if status["ready"] else None

        status = wait_for(done, 30, message="task finished")
        assert status["status"] == "SUCCESS"
        assert status["result"] == {"count": 4, "mean": 2.5, "min": 1.0, "max": 4.0}

        missing = client.get("/task/not-a-task-id")
        assert missing.status_code == 404
        assert missing.json() == {
            "detail": {"error": "unknown task id", "task_id": "not-a-task-id"}
        }

        # The web process exposes its publish-side metrics with one mount.
        metrics = Samples(client.get("/metrics/").text)
        assert (
            metrics.value(
                "celery_task_sent_total", name="examples.analyse_metrics", queue_name="celery"
            )
            == 3
        )


def test_process_runs_inline_with_broker_down(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}"
    env = base_env(dead + "/0", dead + "/1", CELERY_IMPORTS="examples.tasks")
    with serve(env, tmp_path / "api.log") as url:
        began = time.monotonic()
        answer = httpx.post(url + "/process", json={"values": [2, 4]}, timeout=30)
        assert time.monotonic() - began < 5.0
        assert answer.status_code == 200
        assert answer.json() == {
            "result": {"count": 2, "mean": 3.0, "min": 2.0, "max": 4.0},
            "status": "completed_inline",
        }
