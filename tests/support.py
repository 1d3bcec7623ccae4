"""Real processes for the integration tests: Celery workers, HTTP waits, process trees."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, TypeVar

import pytest

from csuite_async_obs.servers.processes import free_port, stop_process, worker_command
from csuite_async_obs.testing import Samples, scrape, wait_for

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def http_status(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def children_of(pid: int) -> set[int]:
    """Every descendant pid of ``pid`` (read from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # Field 4 is the ppid; the command (field 2) may hold spaces and parentheses.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents[int(entry)] = ppid
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        nxt = {child for child, parent in parents.items() if parent in frontier}
        nxt -= found
        found |= nxt
        frontier = nxt
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


def clean_env() -> dict[str, str]:
    """This process's environment without any ``CELERY_*`` or ``CSUITE_*`` variable."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "CSUITE_"))}


def run_benchmark(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m benchmarks.<args>`` from the checkout, in :func:`clean_env`."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def base_env(broker: str, backend: str, **extra: str) -> dict[str, str]:
    env = clean_env()
    env.update(
        CELERY_BROKER_URL=broker,
        CELERY_RESULT_BACKEND=backend,
        CELERY_IMPORTS="tests.worker_tasks",
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


_S = TypeVar("_S", bound="Served")


class Served:
    """A Celery process (``celery worker`` or ``celery beat``) started from a command,
    with its exporter on ``port`` of the loopback interface and its log in a file."""

    what = "process"

    def __init__(self, env: dict[str, str], cmd: list[str], port: int, log_path: Path,
                 cwd: Path | None = None) -> None:  # fmt: skip
        self.env = env
        self.cmd = cmd
        self.port = port
        self.log_path = log_path
        self.cwd = cwd or ROOT
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self: _S, wait: bool = True, timeout: float = 60.0) -> _S:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 -- closed in stop()
        self.process = subprocess.Popen(
            self.cmd, env=self.env, cwd=self.cwd, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until ``/healthz`` answers 200; fail with the log's tail if the process exits."""

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                # pytest.fail is not an Exception: wait_for does not swallow it.
                code = self.process.returncode
                pytest.fail(f"{self.what} exited with {code}:\n{self.log()[-4000:]}")
            return http_status(self.url + "/healthz") == 200

        try:
            wait_for(ready, timeout, message=f"{self.what} on {self.url} /healthz")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n--- {self.what} log ---\n{self.log()[-4000:]}") from None

    def scrape(self) -> Samples:
        return scrape(self.url + "/metrics")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Stop the process (SIGTERM: a warm shutdown; beat saves its schedule) and make
        sure its process group is gone."""
        process, self.process = self.process, None
        if process is None:
            return None
        code = stop_process(process, sig, timeout)
        self._log.close()
        return code


class Worker(Served):
    """A ``celery worker`` subprocess with its exporter on a free loopback port."""

    def __init__(
        self,
        env: dict[str, str],
        log_dir: Path,
        *,
        pool: str = "solo",
        concurrency: int = 1,
        args: tuple[str, ...] = (),
        metrics_port: int | None = None,
        app: str = "csuite_async_obs.worker",
        name: str | None = None,
        cwd: Path | None = None,
    ) -> None:
        port = metrics_port if metrics_port is not None else free_port()
        self.pool = pool
        self.hostname = name or f"w{port}@localhost"
        self.what = f"worker {self.hostname}"
        cmd = worker_command(
            app,
            pool=pool,
            concurrency=concurrency,
            hostname=self.hostname,
            metrics_port=port,
            extra=["--without-gossip", "--without-mingle", "--without-heartbeat", *args],
            python=PYTHON,
        )
        super().__init__(env, cmd, port, log_dir / f"worker-{port}.log", cwd)


def topic_queues() -> tuple[Any, ...]:
    """``celery``; ``reports`` bound to the topic exchange ``reports`` with ``reports.#``;
    ``daily`` bound to it with ``*.daily`` (``reports.daily`` reaches both).  New Queue
    objects on each call: kombu binds them to the channel that declares them."""
    from kombu import Exchange, Queue

    reports = Exchange("reports", type="topic")
    return (
        Queue("celery"),
        Queue("reports", reports, routing_key="reports.#"),
        Queue("daily", reports, routing_key="*.daily"),
    )


class Beat(Served):
    """A ``celery beat`` subprocess, instrumented, with its exporter on a free loopback port."""

    what = "beat"

    def __init__(
        self,
        env: dict[str, str],
        log_dir: Path,
        *,
        app: str = "tests.periodic_app",
        schedule_file: Path | None = None,
        args: tuple[str, ...] = (),
        metrics_port: int | None = None,
    ) -> None:
        port = metrics_port if metrics_port is not None else free_port()
        self.schedule_file = schedule_file or log_dir / "beat-schedule"
        cmd = [
            PYTHON, "-m", "celery", "-A", app, "beat", "-l", "INFO",
            "-s", str(self.schedule_file), "--metrics-port", str(port),
            "--metrics-addr", "127.0.0.1", *args,
        ]  # fmt: skip
        super().__init__(env, cmd, port, log_dir / f"beat-{port}.log")
