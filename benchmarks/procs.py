"""The processes a benchmark starts: Celery workers of each case, and Flower.

Every process is started in a session of its own and stopped by its own pid
(its process group), never by name.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from csuite_async_obs.servers.processes import free_port, stop_process, worker_command
from csuite_async_obs.testing import wait_for

from .apps import BENCH_QUEUE
from .broker import Broker
from .system import tcp_ports, tree

__all__ = ["CASES", "Case", "Flower", "Scraper", "WorkerProc", "http_get", "wait_for"]

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def http_get(
    url: str, timeout: float = 5.0, headers: dict[str, str] | None = None
) -> tuple[int, bytes, float]:
    """GET ``url``: status, body (as sent: not decompressed) and the seconds it took."""
    start = time.perf_counter()
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), int(exc.code)
    return status, body, time.perf_counter() - start


@dataclass(frozen=True)
class Case:
    """One way to run a worker: which app module, which flags, what runs beside it."""

    key: str
    title: str
    module: str
    events: bool = False
    flower: bool = False
    exporter: bool = False
    otel: bool = False
    #: A module the case needs, and the distribution that provides it.
    requires: tuple[str, str] | None = None
    #: Extra ``celery worker`` arguments.
    args: tuple[str, ...] = ()

    def missing(self) -> str | None:
        """Why this case cannot run here (a module is not installed), or ``None``."""
        if self.requires is None:
            return None
        module, dist = self.requires
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        return None if found else f"{dist} is not installed (pip install {dist})"


CASES: dict[str, Case] = {
    c.key: c
    for c in (
        Case("plain", "plain worker (baseline)", "benchmarks.worker_plain"),
        Case(
            "package",
            "csuite-async-obs fully on (metrics, exporter scraped 1/s, queue depth)",
            "benchmarks.worker_obs",
            exporter=True,
        ),
        Case(
            "hooks",
            "csuite-async-obs hooks only (no exporter, no queue-depth poller)",
            "benchmarks.worker_obs",
            args=("--metrics-port", "0", "--metrics-queue-depth", "false"),
        ),
        Case("events", "-E, no consumer", "benchmarks.worker_plain", events=True),
        Case(
            "flower",
            "-E + Flower consuming",
            "benchmarks.worker_plain",
            events=True,
            flower=True,
            requires=("flower", "flower"),
        ),
        Case(
            "otel",
            "opentelemetry-instrumentation-celery, in-memory spans",
            "benchmarks.worker_otel",
            otel=True,
            requires=(
                "opentelemetry.instrumentation.celery",
                "opentelemetry-instrumentation-celery",
            ),
        ),
    )
}


def _env(broker_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CELERY_", "CSUITE_", "BENCH_", "PROMETHEUS_MULTIPROC"))
    }
    env.update(
        BENCH_BROKER_URL=broker_url,
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


@dataclass
class WorkerProc:
    """A ``celery worker`` subprocess of one case, consuming ``bench`` in one Redis DB."""

    case: Case
    broker: Broker
    db: int
    log_dir: Path
    pool: str = "solo"
    concurrency: int = 1
    args: tuple[str, ...] = ()
    env_extra: dict[str, str] = field(default_factory=dict)
    queues: tuple[str, ...] = (BENCH_QUEUE,)
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    flower: Flower | None = None

    def command(self) -> list[str]:
        if self.case.exporter:
            self.port = self.port or free_port()
        extra = ["-Q", ",".join(self.queues), "--without-gossip", "--without-mingle",
                 "--without-heartbeat", *(["-E"] if self.case.events else [])]  # fmt: skip
        return worker_command(
            self.case.module,
            pool=self.pool,
            concurrency=self.concurrency,
            hostname=f"{self.case.key}-{self.db}@bench",
            # INFO would log two lines per task on both sides; WARNING keeps the
            # baseline lean, so a relative cost reads high rather than low.
            loglevel="WARNING",
            metrics_port=self.port if self.case.exporter else None,
            extra=[*extra, *self.case.args, *self.args],
            python=PYTHON,
        )

    @property
    def name(self) -> str:
        return f"{self.case.key}-{self.pool}-db{self.db}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"worker-{self.name}-{os.getpid()}-{id(self)}.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def start(self, timeout: float = 90.0) -> WorkerProc:
        self.broker.flush(self.db)
        extra = dict(self.env_extra)
        if self.case.otel:
            extra.setdefault("BENCH_SPAN_DIR", str(self.log_dir / f"spans-{self.name}"))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                env=_env(self.broker.url(self.db), extra),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if self.case.flower:
            self.flower = Flower(self.broker, self.db, self.log_dir).start()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"worker {self.name} exited with {self.process.returncode}: {self.log()[-3000:]}"
                )
            # Only this worker's own connection counts: the previous worker of
            # the DB may still be shutting down.
            if self.broker.consuming(self.db, tcp_ports(tree(self.pid))) < 1:
                return False
            return not self.case.exporter or http_get(self.metrics_url)[0] == 200

        try:
            wait_for(ready, timeout, f"worker {self.name}")
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}\n{self.log()[-3000:]}") from None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def spans(self) -> int | None:
        """Spans the OpenTelemetry worker exported (counted by its processes at exit)."""
        if not self.case.otel:
            return None
        folder = Path(self.env_extra.get("BENCH_SPAN_DIR", self.log_dir / f"spans-{self.name}"))
        total = 0
        for path in folder.glob("*"):
            with contextlib.suppress(OSError, ValueError):
                total += int(path.read_text().strip() or 0)
        return total

    def stop(self, timeout: float = 30.0) -> int | None:
        """Warm shutdown, then make sure the process group is gone."""
        if self.flower is not None:
            self.flower.stop()
        process, self.process = self.process, None
        return stop_process(process, signal.SIGTERM, timeout)


@dataclass
class Flower:
    """A real Flower consuming the events of the workers of one Redis DB."""

    broker: Broker
    db: int
    log_dir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> Flower:
        self.port = free_port()
        log_path = self.log_dir / f"flower-db{self.db}-{self.port}.log"
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    PYTHON,
                    "-m",
                    "celery",
                    "-A",
                    "benchmarks.worker_plain",
                    "flower",
                    f"--port={self.port}",
                    "--address=127.0.0.1",
                    "--logging=warning",
                ],
                env=_env(self.broker.url(self.db), {"FLOWER_UNAUTHENTICATED_API": "true"}),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"flower exited: {log_path.read_text(errors='replace')[-2000:]}")
            return http_get(f"http://127.0.0.1:{self.port}/healthcheck")[0] == 200

        wait_for(ready, timeout, "flower")
        return self

    def events_seen(self) -> float | None:
        """Events Flower has processed (from its own Prometheus metrics)."""
        try:
            status, body, _ = http_get(f"http://127.0.0.1:{self.port}/metrics", timeout=10)
        except OSError:
            return None
        if status != 200:
            return None
        total = 0.0
        for line in body.decode(errors="replace").splitlines():
            if line.startswith("flower_events_total{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        process, self.process = self.process, None
        stop_process(process, signal.SIGTERM, 15)


class Scraper:
    """Scrapes a ``/metrics`` URL every ``interval`` seconds on a thread, as Prometheus would."""

    def __init__(self, url: str, interval: float = 1.0) -> None:
        self.url = url
        self.interval = interval
        self.scrapes = 0
        self.failures = 0
        self.last_body = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                status, body, _ = http_get(self.url)
            except OSError:
                self.failures += 1
                continue
            if status == 200:
                self.scrapes += 1
                self.last_body = body
            else:
                self.failures += 1

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
