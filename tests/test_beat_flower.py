"""celery beat and Flower run unchanged against the package's app."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import redis

from csuite_async_obs.servers.redis_server import free_port

from .support import ROOT, wait_for


def _popen(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_beat_schedule_runs_on_a_real_worker(
    workers: Any, worker_env: dict[str, str], redis_client: redis.Redis, tmp_path: Path
) -> None:
    worker = workers(pool="solo", app="tests.beat_app")
    beat = _popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.beat_app",
            "beat",
            "-l",
            "INFO",
            "-s",
            str(tmp_path / "beat-schedule"),
            "--pidfile",
            str(tmp_path / "beat.pid"),
        ],
        worker_env,
        tmp_path / "beat.log",
    )
    try:
        # The task's effect (a counter it increments) and its stored result prove it ran.
        wait_for(lambda: int(redis_client.get("beat:ticks") or 0) >= 2, 60, message="beat ticks")
        s = worker.scrape()
        succeeded = s.value("celery_task_succeeded_total", name="tests.incr", queue_name="celery")
        ticks = int(redis_client.get("beat:ticks") or 0)
        assert succeeded is not None and ticks - 1 <= succeeded <= ticks
    finally:
        _stop(beat)


def test_flower_lists_the_running_worker(
    workers: Any, worker_env: dict[str, str], tmp_path: Path
) -> None:
    worker = workers(pool="solo")
    port = free_port()
    env = dict(worker_env, FLOWER_UNAUTHENTICATED_API="true")
    flower = _popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "csuite_async_obs.worker",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
        ],
        env,
        tmp_path / "flower.log",
    )

    def listed() -> bool:
        url = f"http://127.0.0.1:{port}/api/workers?refresh=1"
        with urllib.request.urlopen(url, timeout=10) as response:
            return worker.hostname in json.load(response)

    try:
        wait_for(listed, 60, interval=0.5, message="Flower /api/workers listing the worker")
    finally:
        _stop(flower)
