"""`csuite-async-obs demo` from a clean environment: tasks flow, Ctrl-C leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from csuite_async_obs.servers.rabbitmq_server import RabbitMQServer
from csuite_async_obs.servers.redis_server import free_port
from csuite_async_obs.testing import scrape

from .support import alive, children_of, clean_env, wait_for


def test_demo_runs_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    lines = _run_demo_until_ctrl_c(tmp_path, {}, servers=1)
    assert any(line.startswith("broker: private redis-server") for line in lines), lines


def test_demo_runs_on_rabbitmq_when_the_broker_url_names_one(
    tmp_path: Path, rabbitmq_vhost: str, rabbitmq_server: RabbitMQServer
) -> None:
    lines = _run_demo_until_ctrl_c(
        tmp_path,
        {
            "CELERY_BROKER_URL": rabbitmq_vhost,
            "CSUITE_RABBITMQ_API_URL": rabbitmq_server.management_url,
        },
        servers=0,
        queue_metrics=True,
    )
    assert any(line.startswith("results: rpc://") for line in lines), lines
    assert any("guest:***@" in line for line in lines if line.startswith("broker: ")), lines


def _run_demo_until_ctrl_c(
    tmp_path: Path, extra_env: dict[str, str], *, servers: int, queue_metrics: bool = False
) -> list[str]:
    """Run the demo until tasks flow, Ctrl-C it, check nothing is left; its output lines."""
    env = clean_env()
    env.update(extra_env)
    env["PYTHONFAULTHANDLER"] = "1"  # a demo that does not stop shows where it is stuck
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "csuite_async_obs.cli",
            "demo",
            "--metrics-port",
            str(free_port()),
            "--rate",
            "20",
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(iter(proc.stdout.readline, "")),  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    try:
        url = wait_for(
            lambda: next(
                (m.group(1) for line in lines if (m := re.match(r"metrics: (http://\S+)", line))),
                None,
            ),
            90,
            message="the demo printing its metrics URL",
        )

        def flowing() -> bool:
            return scrape(url).sum("celery_task_succeeded_total") >= 5

        wait_for(flowing, 60, message="tasks flowing through the demo worker")
        if queue_metrics:
            # Every queue metric of the broker is served, none absent.
            wait_for(
                lambda: {"celery_queue_length", "celery_queue_unacked_messages",
                         "celery_queue_consumers", "celery_queue_oldest_message_age_seconds"}
                <= {x.name for x in scrape(url).samples},
                30,
                message="the queue metrics",
            )  # fmt: skip
        descendants = children_of(proc.pid)
        # The private servers, the worker and its 2 pool children.
        assert len(descendants) >= servers + 3
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            proc.wait(timeout=10)
            reader.join(timeout=5)
            raise AssertionError("the demo did not stop on Ctrl-C:\n" + "".join(lines)) from None
        assert code == 0, "".join(lines)
        reader.join(timeout=5)
        survivors = [pid for pid in descendants if alive(pid)]
        assert survivors == [], f"processes left behind: {survivors}"
        assert any(line.strip() == "stopped" for line in lines), "".join(lines)
        return lines
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in children_of(proc.pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
