"""``csuite-async-obs demo``: a worker with its exporter and a steady mix of tasks, in one command.

With no ``CELERY_BROKER_URL`` it starts a private Redis (see
:mod:`csuite_async_obs.servers.redis_server`); an ``amqp://`` broker URL runs it
on that RabbitMQ, with ``rpc://`` results unless ``CELERY_RESULT_BACKEND`` says
otherwise.  Every process it starts runs in a
session of its own, so that Ctrl-C reaches the demo alone, which then stops
them in order (worker warm shutdown, then its process group, then Redis) and
leaves nothing behind.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.celery_settings import CelerySettings
from ..servers.processes import (
    ProcessError,
    free_port,
    stop_process,
    wait_until_ready,
    worker_command,
)
from ..servers.redis_server import RedisServer
from .interrupts import STOP_SIGNALS, HeldInterrupts

__all__ = ["Demo", "DemoOptions"]

Echo = Callable[[str], None]


@dataclass
class DemoOptions:
    pool: str = "prefork"
    concurrency: int = 2
    metrics_port: int = 9808
    rate: float = 4.0  # tasks per second
    prometheus: bool = False
    duration: float | None = None
    extra_env: dict[str, str] = field(default_factory=dict)


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")


def _without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class Demo:
    """Owns every process the demo starts; :meth:`run` blocks until Ctrl-C."""

    def __init__(self, options: DemoOptions, echo: Echo = print) -> None:
        self.options = options
        self.echo = echo
        self.redis: RedisServer | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.prometheus: Any = None
        self.workdir = Path(tempfile.mkdtemp(prefix="csuite-demo-"))
        self.metrics_port = options.metrics_port
        self.sent = 0

    # ------------------------------------------------------------------ start

    def _broker(self) -> None:
        broker = os.environ.get("CELERY_BROKER_URL")
        if broker:
            self.echo(f"broker: {_without_password(broker)} (from CELERY_BROKER_URL)")
            if broker.startswith(_AMQP_SCHEMES) and not os.environ.get("CELERY_RESULT_BACKEND"):
                # The package's default backend is a Redis that a RabbitMQ setup
                # may not have; results over the broker need nothing else.
                os.environ["CELERY_RESULT_BACKEND"] = "rpc://"
                self.echo("results: rpc:// (over the broker; set CELERY_RESULT_BACKEND to change)")
            return
        self.redis = RedisServer().start()
        os.environ["CELERY_BROKER_URL"] = f"{self.redis.url}/0"
        os.environ.setdefault("CELERY_RESULT_BACKEND", f"{self.redis.url}/1")
        self.echo(
            f"broker: private redis-server at {self.redis.url} (pid {self.redis.process.pid})"
            if self.redis.process
            else "broker: private redis-server"
        )

    def _start_worker(self) -> None:
        if not _port_free(self.metrics_port):
            self.metrics_port = free_port()
        env = dict(os.environ)
        imports = [i for i in env.get("CELERY_IMPORTS", "").split(",") if i.strip()]
        env["CELERY_IMPORTS"] = ",".join([*imports, "csuite_async_obs.demo.tasks"])
        env.update(self.options.extra_env)
        log_path = self.workdir / "worker.log"
        cmd = worker_command(
            pool=self.options.pool,
            concurrency=self.options.concurrency,
            hostname="demo@%h",
            metrics_port=self.metrics_port,
        )
        with open(log_path, "ab") as log:
            self.worker = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.echo(
            f"worker: pid {self.worker.pid}, pool {self.options.pool} "
            f"-c {self.options.concurrency}, log {log_path}"
        )
        health = f"{self.metrics_url.rsplit('/', 1)[0]}/healthz"
        try:
            wait_until_ready(
                self.worker, lambda: _http_ok(health), timeout=60, what="the worker", interval=0.2
            )
        except ProcessError as exc:
            raise RuntimeError(f"{exc}; see {log_path}") from None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def _start_prometheus(self) -> None:
        """A private Prometheus with the rules generated by the installed package.

        The rule files are written into the demo's folder from the default monitoring
        config (no source tree needed), and the rule groups are read back from
        Prometheus's /api/v1/rules before they are announced as loaded.
        """
        from ..monitoring.config import MonitoringConfig
        from ..monitoring.export import groups_summary, write_rules
        from ..servers.prometheus_server import PrometheusServer, find_prometheus

        if find_prometheus() is None:
            self.echo("prometheus: no `prometheus` binary on the PATH; skipping --prometheus")
            return
        config = MonitoringConfig()
        files = write_rules(config, self.workdir / "rules")
        self.prometheus = PrometheusServer(
            targets=[f"127.0.0.1:{self.metrics_port}"], rule_files=files
        ).start()
        self.echo(f"prometheus: {self.prometheus.url} (alerts at {self.prometheus.url}/alerts)")
        loaded = _wait_for_rule_groups(self.prometheus, dict(groups_summary(config)))
        self.echo(
            "prometheus: rule groups loaded (read from /api/v1/rules): "
            + ", ".join(f"{name} ({count} rules)" for name, count in loaded.items())
        )

    # ------------------------------------------------------------------ run

    def _send_mix(self) -> None:
        from ..task_api.publishing import delay_task
        from . import tasks as t

        roll = random.random()
        if roll < 0.5:
            delay_task(t.analyse_metrics, [random.random() for _ in range(10)])
        elif roll < 0.8:
            delay_task(t.send_email, f"user{random.randint(1, 99)}@example.com")
        elif roll < 0.95:
            delay_task(t.sync_crm, random.randint(1, 1000))
        else:
            delay_task(t.generate_report, random.uniform(1.0, 4.0))
        self.sent += 1

    def run(self) -> int:
        """Start everything, send tasks until Ctrl-C or SIGTERM (or ``duration``), stop
        everything."""
        with HeldInterrupts().installed() as interrupts:
            return self._run(interrupts)

    def _run(self, interrupts: HeldInterrupts) -> int:
        try:
            CelerySettings.from_env()  # a bad variable stops here with one line
            self._broker()
            self._start_worker()
            self.echo(f"metrics: {self.metrics_url}")
            self.echo(f"health:  {self.metrics_url.rsplit('/', 1)[0]}/healthz")
            if self.options.prometheus:
                self._start_prometheus()
            self.echo(
                "sending a mix of tasks (successes, failures, retries, slow reports); "
                "Ctrl-C stops everything"
            )
            started = time.monotonic()
            next_report = started + 5
            interval = 1.0 / self.options.rate if self.options.rate > 0 else 1.0
            while (
                self.options.duration is None or time.monotonic() - started < self.options.duration
            ):
                with interrupts.held():
                    self._send_mix()
                if time.monotonic() >= next_report:
                    self.echo(self._summary())
                    next_report += 5
                time.sleep(interval)
            return 0
        except KeyboardInterrupt:
            self.echo("stopping ...")
            return 0
        finally:
            self.stop()

    def _summary(self) -> str:
        try:
            from ..testing import scrape

            s = scrape(self.metrics_url, timeout=2)
            done = {
                k: int(s.sum(f"celery_task_{k}_total")) for k in ("succeeded", "failed", "retried")
            }
            return (
                f"sent {self.sent}; worker: {done['succeeded']} succeeded, {done['failed']} "
                f"failed, {done['retried']} retried"
            )
        except Exception as exc:  # noqa: BLE001 -- a summary line must not stop the demo
            return f"sent {self.sent}; /metrics not readable right now ({type(exc).__name__})"

    # ------------------------------------------------------------------ stop

    def stop(self) -> None:
        # Ignore further Ctrl-C and SIGTERM while cleaning up, so that nothing is
        # left half-stopped.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
        try:
            if self.prometheus is not None:
                self.prometheus.stop()
                self.prometheus = None
            if self.worker is not None:
                stop_process(self.worker, signal.SIGTERM, 15)
                self.worker = None
            if self.redis is not None:
                self.redis.stop()
                self.redis = None
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.echo("stopped")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return int(response.status) == 200
    except OSError:
        return False


def _wait_for_rule_groups(
    prometheus: Any, expected: dict[str, int], timeout: float = 30.0
) -> dict[str, int]:
    """Rule group name -> rule count, as Prometheus's API lists them, once all expected are.

    Raises:
        RuntimeError: a group missing or short of rules by the deadline (a rule file
            Prometheus did not load; its log is named).
    """
    deadline = time.monotonic() + timeout
    loaded: dict[str, int] = {}
    while True:
        loaded = {g["name"]: len(g.get("rules", [])) for g in prometheus.rules()}
        if all(loaded.get(name) == count for name, count in expected.items()):
            return loaded
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"prometheus at {prometheus.url} lists rule groups {loaded or 'none'}, expected "
                f"{expected}: the rule files were not loaded (see its log)"
            )
        time.sleep(0.2)
