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

from csuite_async_obs.servers.redis_server import free_port
from csuite_async_obs.testing import scrape

from .support import alive, children_of, wait_for


def test_demo_runs_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "CSUITE_"))}
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
        descendants = children_of(proc.pid)
        assert len(descendants) >= 4  # redis-server, worker, its 2 pool children
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        reader.join(timeout=5)
        survivors = [pid for pid in descendants if alive(pid)]
        assert survivors == [], f"processes left behind: {survivors}"
        assert any(line.strip() == "stopped" for line in lines), "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in children_of(proc.pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
