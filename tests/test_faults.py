"""Faults the worker and its exporter survive, each with real processes on a real Redis.

Every test compares the scraped numbers with ground truth gathered outside the
worker: task states in the result backend, files tasks leave behind, pids read
from /proc.  No fixed sleeps: every wait polls a condition against a deadline.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celery
import pytest
import redis
from celery import Celery
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)

from csuite_async_obs import wait_for_task
from csuite_async_obs.servers.rabbitmq_server import RabbitMQServer
from csuite_async_obs.servers.redis_server import RedisServer, free_port
from csuite_async_obs.testing import Samples, scrape

from . import worker_tasks as t
from .support import PYTHON, ROOT, Worker, alive, base_env, children_of, http_status, wait_for

Q = "celery"


def _val(samples: Samples, metric: str, **labels: str) -> float:
    value = samples.value(metric, **labels)
    assert value is not None, f"{metric}{labels} is missing from the scrape"
    return value


def _finished(ids: list[str], timeout: float = 90.0) -> list[dict[str, Any]]:
    statuses = []
    for task_id in ids:
        status = wait_for_task(task_id, timeout=timeout)
        assert status is not None and not status["timed_out"], status
        statuses.append(status)
    return statuses


def _idle(worker: Worker) -> Samples:
    """The first scrape with no task active or prefetched, and every started task ended."""

    def check() -> Samples | None:
        s = worker.scrape()
        idle = (s.value("celery_worker_tasks_active") == 0
                and s.value("celery_worker_prefetched_tasks") == 0
                and s.sum("celery_task_started_total")
                == s.sum("celery_task_runtime_seconds_count"))  # fmt: skip
        return s if idle else None

    result: Samples = wait_for(check, 60, message="worker idle")
    return result


class _Steady:
    """True once the same look comes twice in a row: nothing is still finishing (a task
    still running is active too, and must not pass for one stuck: seen on 5.4)."""

    def __init__(self) -> None:
        self.previous: Any = None

    def __call__(self, look: Any) -> bool:
        same, self.previous = look == self.previous, look
        return bool(same)


def _no_instrumentation_errors(s: Samples) -> None:
    assert s.sum("csuite_async_obs_instrumentation_errors_total") == 0


def _kill_victim(client: redis.Redis[bytes], key: str) -> int:
    pid = int(wait_for(lambda: client.get(key), 30, message="victim pid"))
    os.kill(pid, signal.SIGKILL)
    return pid


# ----------------------------------------------------------------------------- pool children


def test_pool_child_killed_by_sigkill(workers: Any, redis_client: redis.Redis[bytes]) -> None:
    worker = workers(pool="prefork", concurrency=2)
    before = [t.ok.delay(i).id for i in range(5)]
    _finished(before)
    victim = t.victim.delay("fault:victim")
    killed = _kill_victim(redis_client, "fault:victim")
    (status,) = _finished([victim.id])
    assert status["status"] == "FAILURE" and status["result"]["type"] == "WorkerLostError"
    wait_for(lambda: not alive(killed), 30, message="killed child reaped")
    after = [t.ok.delay(i).id for i in range(5)]
    _finished(after)

    s = _idle(worker)
    labels = {"name": "tests.victim", "queue_name": Q}
    assert _val(s, "celery_task_received_total", **labels) == 1
    assert _val(s, "celery_task_started_total", **labels) == 1
    assert _val(s, "celery_task_worker_lost_total", **labels) == 1
    assert _val(s, "celery_task_failed_total", exception="WorkerLostError", **labels) == 1
    assert s.sum("celery_task_failed_total", name="tests.victim") == 1
    assert _val(s, "celery_task_runtime_seconds_count", state="failed", **labels) == 1
    assert s.sum("celery_task_runtime_seconds_count", name="tests.victim") == 1
    assert _val(s, "celery_task_succeeded_total", name="tests.ok", queue_name=Q) == 10
    assert _val(s, "celery_worker_tasks_active") == 0
    assert _val(s, "celery_worker_pool_size") == 2
    _no_instrumentation_errors(s)


def test_hard_time_limit(workers: Any) -> None:
    worker = workers(pool="prefork", concurrency=2)
    task = t.hard_limit.delay(10.0)
    (status,) = _finished([task.id])
    assert status["status"] == "FAILURE" and status["result"]["type"] == "TimeLimitExceeded"
    _finished([t.ok.delay(1).id])  # the pool still works

    s = _idle(worker)
    labels = {"name": "tests.hard_limit", "queue_name": Q}
    # A hard limit reaches the request twice (pool error callback and on_timeout): once here.
    assert _val(s, "celery_task_time_limit_exceeded_total", kind="hard", **labels) == 1
    assert _val(s, "celery_task_time_limit_exceeded_total", kind="soft", **labels) == 1
    assert _val(s, "celery_task_failed_total", exception="TimeLimitExceeded", **labels) == 1
    assert s.sum("celery_task_failed_total", name="tests.hard_limit") == 1
    assert _val(s, "celery_task_worker_lost_total", **labels) == 0
    assert _val(s, "celery_task_runtime_seconds_count", state="failed", **labels) == 1
    assert s.sum("celery_task_runtime_seconds_count", name="tests.hard_limit") == 1
    assert _val(s, "celery_worker_tasks_active") == 0
    _no_instrumentation_errors(s)


def test_soft_time_limit(workers: Any) -> None:
    worker = workers(pool="prefork", concurrency=2)
    raised = [t.soft_limit.delay(2.0).id for _ in range(2)]
    caught = [t.soft_limit_caught.delay().id for _ in range(3)]
    statuses = _finished(raised + caught)
    assert [s["status"] for s in statuses] == ["FAILURE"] * 2 + ["SUCCESS"] * 3
    assert [s["result"] for s in statuses[2:]] == ["cleaned up"] * 3

    s = _idle(worker)
    soft = {"name": "tests.soft_limit", "queue_name": Q}
    assert _val(s, "celery_task_time_limit_exceeded_total", kind="soft", **soft) == 2
    assert _val(s, "celery_task_time_limit_exceeded_total", kind="hard", **soft) == 0
    assert _val(s, "celery_task_failed_total", exception="SoftTimeLimitExceeded", **soft) == 2
    caught_labels = {"name": "tests.soft_limit_caught", "queue_name": Q}
    # A task that handles its soft limit succeeds, and the limit is still counted.
    assert _val(s, "celery_task_time_limit_exceeded_total", kind="soft", **caught_labels) == 3
    assert _val(s, "celery_task_succeeded_total", **caught_labels) == 3
    assert s.sum("celery_task_failed_total", name="tests.soft_limit_caught") == 0
    _no_instrumentation_errors(s)


# ----------------------------------------------------------------------------- the port


def test_metrics_port_already_taken(workers: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        worker = workers(pool="prefork", concurrency=2, metrics_port=port, wait=False)
        ids = [t.ok.delay(i).id for i in range(6)]
        statuses = _finished(ids)
        assert [s["result"] for s in statuses] == list(range(6))
        assert worker.process is not None and worker.process.poll() is None
        log = worker.log()
        errors = [line for line in log.splitlines() if "metrics_exporter_not_started" in line]
        assert len(errors) == 1, log[-3000:]
        assert f"port={port}" in errors[0] and "Address already in use" in errors[0]
        assert "metrics_exporter_started" not in log
        assert "Traceback" not in log


# ----------------------------------------------------------------------------- PROMETHEUS_MULTIPROC_DIR


@contextlib.contextmanager
def _worker(env: dict[str, str], log_dir: Path, *, drop_dac: bool = False,
            **kwargs: Any) -> Iterator[Worker]:  # fmt: skip
    worker = Worker(env, log_dir, **kwargs)
    if drop_dac and os.geteuid() == 0:
        # root ignores file modes; without these capabilities it obeys them.
        worker.cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner",
                      "--", *worker.cmd]  # fmt: skip
    try:
        yield worker.start()
    finally:
        worker.stop()


def _files(folder: Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except FileNotFoundError:
        return []


@pytest.mark.parametrize("mode", ["unwritable", "deleted", "unwritable-later", "deleted-later"])
def test_prometheus_multiproc_dir_is_never_used(
    mode: str, worker_env: dict[str, str], tmp_path: Path
) -> None:
    folder = tmp_path / "multiproc"
    folder.mkdir()
    if mode == "unwritable":
        folder.chmod(0o555)
    elif mode == "deleted":
        folder.rmdir()
    env = {**worker_env, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    try:
        with _worker(env, tmp_path, pool="prefork", concurrency=2, drop_dac=True) as worker:
            first = [t.ok.delay(i).id for i in range(4)] + [t.boom.delay().id for _ in range(2)]
            _finished(first)
            assert _files(folder) == []
            if mode == "unwritable-later":
                folder.chmod(0o555)
            elif mode == "deleted-later":
                folder.rmdir()
            second = [t.ok.delay(i).id for i in range(4)] + [t.boom.delay().id for _ in range(2)]
            _finished(second)
            s = _idle(worker)
            assert _val(s, "celery_task_succeeded_total", name="tests.ok", queue_name=Q) == 8
            assert _val(s, "celery_task_failed_total", name="tests.boom", queue_name=Q,
                        exception="ValueError") == 4  # fmt: skip
            assert _val(s, "celery_task_received_total", name="tests.ok", queue_name=Q) == 8
            _no_instrumentation_errors(s)
            assert _files(folder) == []
            # Nothing ever tried the folder (an error would name it).
            assert str(folder) not in worker.log()
    finally:
        if folder.exists():
            folder.chmod(0o755)


# ----------------------------------------------------------------------------- hostile tasks


def test_exception_whose_str_raises(workers: Any) -> None:
    worker = workers(pool="prefork", concurrency=2)
    ids = [t.unprintable.delay().id for _ in range(3)]
    statuses = _finished(ids)
    assert [s["status"] for s in statuses] == ["FAILURE"] * 3
    assert {s["result"]["type"] for s in statuses} == {"UnprintableError"}
    _finished([t.ok.delay(1).id])

    s = _idle(worker)
    labels = {"name": "tests.unprintable", "queue_name": Q}
    assert _val(s, "celery_task_failed_total", exception="UnprintableError", **labels) == 3
    assert _val(s, "celery_task_runtime_seconds_count", state="failed", **labels) == 3
    assert _val(s, "celery_task_succeeded_total", name="tests.ok", queue_name=Q) == 1
    _no_instrumentation_errors(s)


def test_multi_megabyte_exception_message(workers: Any) -> None:
    size = 5 * 1024 * 1024
    worker = workers(pool="prefork", concurrency=2)
    ids = [t.big_error.delay(size).id for _ in range(2)]
    statuses = _finished(ids, timeout=120)
    assert [s["status"] for s in statuses] == ["FAILURE"] * 2
    assert [len(s["result"]["message"]) for s in statuses] == [size] * 2
    _finished([t.ok.delay(1).id])

    s = _idle(worker)
    labels = {"name": "tests.big_error", "queue_name": Q}
    assert _val(s, "celery_task_failed_total", exception="ValueError", **labels) == 2
    assert _val(s, "celery_task_runtime_seconds_count", state="failed", **labels) == 2
    # The message is nowhere in the exposition: labels carry the class name only.
    assert len(s.text) < 1024 * 1024 and "xxxxxxxxxx" not in s.text
    _no_instrumentation_errors(s)


def test_weird_task_and_queue_names_keep_the_exposition_valid(workers: Any) -> None:
    name, queue = t.WEIRD_TASK_NAME, t.WEIRD_QUEUE_NAME
    assert all(c in name for c in '"\n\\✓') and all(c in queue for c in '"\n\\✓')
    worker = workers(pool="prefork", concurrency=2, args=("-Q", f"{Q},{queue}"))
    ids = [t.weird.apply_async(args=(i,), queue=queue).id for i in range(4)]
    ids += [t.weird.apply_async(args=(9,)).id]  # and one on the default queue
    statuses = _finished(ids)
    assert [s["result"] for s in statuses] == [0, 1, 2, 3, 9]

    s = _idle(worker)
    # Parsed back by prometheus_client's parser, the label values are the exact names.
    assert _val(s, "celery_task_succeeded_total", name=name, queue_name=queue) == 4
    assert _val(s, "celery_task_succeeded_total", name=name, queue_name=Q) == 1
    assert _val(s, "celery_task_received_total", name=name, queue_name=queue) == 4
    assert _val(s, "celery_task_runtime_seconds_count", name=name, queue_name=queue,
                state="succeeded") == 4  # fmt: skip
    _no_instrumentation_errors(s)

    # promtool parses and lints the text format: no parse error, no lint problem.
    for accept in ("text/plain", "application/openmetrics-text; version=1.0.0"):
        request = urllib.request.Request(worker.url + "/metrics", headers={"Accept": accept})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        if accept == "text/plain":
            result = subprocess.run(["promtool", "check", "metrics"], input=body,
                                    capture_output=True, timeout=60)  # fmt: skip
            output = (result.stdout + result.stderr).decode(errors="replace")
            assert result.returncode == 0, output
            assert "error" not in output.lower(), output
        else:
            families = list(openmetrics_families(body.decode()))
            found = [sample for f in families for sample in f.samples
                     if sample.name == "celery_task_succeeded_total"
                     and sample.labels == {"name": name, "queue_name": queue}]  # fmt: skip
            assert [sample.value for sample in found] == [4]


# ----------------------------------------------------------------------------- shutdown


def _listening_inode(port: int) -> str | None:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    return inode
    return None


def _holders(inode: str, pids: set[int]) -> set[int]:
    held = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                        held.add(pid)
    return held


@pytest.mark.parametrize("how", ["warm", "cold"])
def test_shutdown_leaves_no_files_and_frees_the_port(
    how: str, worker_env: dict[str, str], tmp_path: Path
) -> None:
    cwd = tmp_path / "cwd"
    tmpdir = tmp_path / "tmpdir"
    cwd.mkdir()
    tmpdir.mkdir()
    env = {**worker_env, "TMPDIR": str(tmpdir)}
    # --max-tasks-per-child 2: pool children are replaced while the exporter runs.
    worker = Worker(env, tmp_path, pool="prefork", concurrency=2, cwd=cwd,
                    args=("--max-tasks-per-child", "2"))  # fmt: skip
    try:
        worker.start()
        _finished([t.ok.delay(i).id for i in range(8)])
        s = _idle(worker)
        assert _val(s, "celery_task_succeeded_total", name="tests.ok", queue_name=Q) == 8
        inode = _listening_inode(worker.port)
        assert inode is not None

        # Children are replaced every 2 tasks: wait for the pool to be full again.
        def full_pool() -> set[int] | None:
            live = {pid for pid in children_of(worker.pid) if alive(pid)}
            return live if len(live) == 2 else None

        children: set[int] = wait_for(full_pool, 30, message="two pool children")
        # Only the main process holds the metrics port, not the pool children
        # forked after the exporter started.  (A child inherits it for the moment
        # between fork() and its at-fork hook, hence a wait, not a single look.)
        wait_for(lambda: _holders(inode, {worker.pid} | children) == {worker.pid}, 10,
                 message="the metrics port held by the main process only")  # fmt: skip
        # A task running when the shutdown comes.
        running = t.sleep.delay(1.0)
        wait_for(lambda: worker.scrape().value("celery_worker_tasks_active") == 1, 30,
                 message="task running")  # fmt: skip
        process = worker.process
        assert process is not None
        process.send_signal(signal.SIGTERM if how == "warm" else signal.SIGQUIT)
        process.wait(timeout=60)
        stopped_at = time.monotonic()
        # The port is free at once: a new exporter binds it (with SO_REUSEADDR,
        # as ours does, since the scrapes' connections may sit in TIME_WAIT).
        with socket.socket() as again:
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(("127.0.0.1", worker.port))
            again.listen(1)
        rebound_after = time.monotonic() - stopped_at
        wait_for(lambda: not any(alive(pid) for pid in children_of(worker.pid) | children), 30,
                 message="pool children gone")  # fmt: skip
        assert rebound_after < 1.0
        assert http_status_or_none(worker.url + "/healthz") is None
        if how == "warm":
            status = wait_for_task(running.id, timeout=30)
            assert status is not None and status["status"] == "SUCCESS"
        assert _files(cwd) == []
        assert _files(tmpdir) == []
    finally:
        worker.stop()


def http_status_or_none(url: str) -> int | None:
    try:
        return http_status(url, timeout=2)
    except OSError:
        return None


# ----------------------------------------------------------------------------- the broker


class PersistentRedis(RedisServer):
    """A redis-server on a fixed port whose data (AOF, fsync on every write) survives SIGKILL."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        super().__init__(port=port or free_port())
        self.folder = folder

    def start(self, timeout: float = 10.0) -> PersistentRedis:
        assert self.binary is not None
        self.folder.mkdir(exist_ok=True)
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.folder),
             "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        wait_for(lambda: self.process is not None and self.process.poll() is None and self.ping(),
                 timeout, message=f"redis-server on port {self.port}")  # fmt: skip
        return self

    def kill(self) -> None:
        """SIGKILL, keeping the data folder."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = None


def _worker_running(worker: Worker) -> bool:
    """``True`` while the worker runs; ends the test at once if it died."""
    process = worker.process
    if process is None or process.poll() is None:
        return True
    log = worker.log()
    # kombu 5.7.0, Redis transport: when the consumer closes its connection after
    # the broker died, restoring the unacked messages sometimes goes through a
    # transport whose client is already gone (kombu/transport/redis.py
    # _connparams: AttributeError on ``None.hostname``); Celery 5.7.0 calls that
    # an "Unrecoverable error" and the worker exits.  Seen in 3 runs of 22 here,
    # with or without this package's queue-depth poller.
    if "AttributeError(\"'NoneType' object has no attribute 'hostname'\")" in log:
        pytest.xfail("kombu 5.7.0 crashed the worker on broker loss (None.hostname while "
                     "restoring unacked messages); not this package's code")  # fmt: skip
    pytest.fail(f"worker exited with {process.returncode} during the broker outage:\n"
                f"{log[-3000:]}")  # fmt: skip


class _Poller(threading.Thread):
    """Scrapes ``url`` every 0.2 s with a 1 s timeout; keeps every answer and failure."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.answers: list[tuple[float, float | None]] = []  # (when, consumer_up)
        self.failures: list[str] = []
        self.latencies: list[float] = []
        self.health: list[tuple[float, int]] = []  # (when, /healthz status)
        self._healthz = url.rsplit("/", 1)[0] + "/healthz"
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            began = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=1.0) as response:
                    body = response.read()
                self.latencies.append(time.monotonic() - began)
                # One line of a ~300 KB exposition: found without parsing it all,
                # so that the latencies are the exporter's, not this process's.
                match = re.search(rb"^celery_worker_consumer_up(?:\{[^}]*\})? (\S+)$", body, re.M)
                self.answers.append((began, float(match.group(1)) if match else None))
            except OSError as exc:
                self.failures.append(f"{began:.1f}: {exc!r}")
            try:
                code = http_status(self._healthz, timeout=1.0)
            except OSError as exc:
                code = -1
                self.failures.append(f"{began:.1f}: /healthz {exc!r}")
            self.health.append((time.monotonic(), code))
            self._halt.wait(0.2)

    def health_seen(self, status: int, since: float) -> bool:
        return any(at >= since and code == status for at, code in list(self.health))

    def seen(self, consumer_up: float, since: float) -> bool:
        return any(at >= since and up == consumer_up for at, up in list(self.answers))

    @contextlib.contextmanager
    def explained(self, worker: Worker) -> Iterator[None]:
        """On a failed wait, say what the scrapes saw and what the worker logged."""
        try:
            yield
        except (AssertionError, TimeoutError) as exc:
            raise AssertionError(
                f"{exc}; last scrapes (when, consumer_up): {self.answers[-5:]}; "
                f"failures: {self.failures[-5:]}\n{worker.log()[-3000:]}"
            ) from None

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(10)


def test_broker_killed_and_restarted_under_load(tmp_path: Path, redis_server: RedisServer) -> None:
    broker = PersistentRedis(tmp_path / "redis-data").start()
    marks = tmp_path / "executions"
    marks.mkdir()
    url = broker.url
    env = base_env(f"{url}/0", f"{url}/1")
    # Celery prefers CELERY_BROKER_URL (set for the session's Redis) to an app's
    # broker argument, so this publisher gets its connection explicitly.
    publisher = Celery("faults")
    worker = Worker(env, tmp_path, pool="prefork", concurrency=2)
    poller = _Poller(worker.url + "/metrics")
    cleanup_second = contextlib.ExitStack()
    n_tasks = 300
    try:
        worker.start()
        with publisher.connection_for_write(f"{url}/0") as connection:
            ids = [publisher.send_task("tests.mark", args=(str(marks), 0.02),
                                       connection=connection).id
                   for _ in range(n_tasks)]  # fmt: skip
        # Kill the broker mid-run: once a third has run.
        wait_for(lambda: len(_files(marks)) >= n_tasks // 3, 120, message="a third executed")
        poller.start()
        broker.kill()
        killed_at = time.monotonic()
        executed_at_kill = len(_files(marks))
        # An outage of 3 s at least, and until the worker has noticed it.
        with poller.explained(worker):
            wait_for(lambda: _worker_running(worker) and time.monotonic() - killed_at >= 3.0
                     and poller.seen(0, killed_at) and poller.health_seen(503, killed_at), 60,
                     message="consumer down reported, /healthz 503")  # fmt: skip
        broker.start()
        restarted_at = time.monotonic()
        with poller.explained(worker):
            wait_for(lambda: _worker_running(worker) and poller.seen(1, restarted_at)
                     and poller.health_seen(200, restarted_at), 120,
                     message="consumer back, /healthz 200")  # fmt: skip
        consumer_back = time.monotonic() - restarted_at
        executed_before_restart = len(_files(marks))
        wait_for(lambda: _worker_running(worker) and len(_files(marks)) > executed_before_restart,
                 120, message="a task executed after the restart")  # fmt: skip
        first_task_after = time.monotonic() - restarted_at
        outage_scrapes = sum(1 for at, _ in poller.answers if killed_at <= at)

        # Settled: the queue is empty, nothing active or prefetched, and the
        # counters have caught up with the executions.
        client = redis.Redis(port=broker.port)

        stuck: list[int] = []
        steady = _Steady()

        def settled() -> Samples | None:
            _worker_running(worker)
            s = scrape(worker.url + "/metrics")
            executions = len(_files(marks))
            if client.llen(Q) != 0:
                return None
            if s.value("celery_worker_prefetched_tasks") != 0:
                return None
            # Every execution (a file on disk) either finished in our runtime count
            # or is still active in Celery's own worker state (our gauge reads it).
            active = s.value("celery_worker_tasks_active") or 0
            finished = s.sum("celery_task_runtime_seconds_count", name="tests.mark")
            if not steady((active, finished, executions)):  # seen on 5.4: 3 "stuck" of 2
                return None
            if finished + active != executions:
                return None
            # Celery 5.7 finishes what ran through the outage: the last tasks may still be
            # running (executed, active, not yet finished) when the queue first reads empty.
            if celery.VERSION >= (5, 7) and active:
                return None
            stuck[:] = [int(active)]
            return s

        s = wait_for(settled, 180, interval=0.5, message="queue drained and counters settled")
        # Celery before 5.7 keeps the requests that were running when the broker died
        # active for good (a plain worker without this package does the same: `celery
        # inspect active` lists them, checked on 5.4.0 and 5.5.3); 5.7 finishes them, and
        # settled() waited for nothing active there.
        if celery.VERSION < (5, 7):
            assert 0 <= stuck[0] <= 2  # at most the pool's two processes
        poller.stop()
        # /metrics answered every scrape (1 s timeout) from the kill until now.
        assert poller.failures == []

        # Ground truth, none of it from our counters:
        # executions: one file per execution of the task body;
        executions = _files(marks)
        runs: dict[str, int] = {}
        for entry in executions:
            task_id = entry.split(".", 1)[0]
            runs[task_id] = runs.get(task_id, 0) + 1
        # outcomes: the states the tasks stored in the result backend (db 1);
        results = redis.Redis(port=broker.port, db=1)
        stored: dict[str, str | None] = {}
        for task_id in ids:
            meta = results.get(f"celery-task-meta-{task_id}")
            stored[task_id] = json.loads(meta)["status"] if meta else None
        results.close()
        # deliveries: Celery's own "received" log line per message;
        received_ids = re.findall(r"Task tests\.mark\[([0-9a-f-]+)\] received", worker.log())
        # and the messages the broker still holds for redelivery (visibility timeout).
        waiting = {
            json.loads(raw)[0]["headers"]["id"] for raw in client.hgetall("unacked").values()
        }
        client.close()

        labels = {"name": "tests.mark", "queue_name": Q}
        received = _val(s, "celery_task_received_total", **labels)
        started = _val(s, "celery_task_started_total", **labels)
        succeeded = _val(s, "celery_task_succeeded_total", **labels)
        failed = s.sum("celery_task_failed_total", name="tests.mark")
        never_ran = {task_id for task_id in ids if task_id not in runs}
        states = collections.Counter(stored.values())
        report = (
            f"broker outage: published {n_tasks}; {executed_at_kill} had run at the kill; "
            f"/metrics answered all {outage_scrapes} scrapes from the kill to the first task after "
            f"the restart (slowest {max(poller.latencies) * 1000:.0f} ms); "
            f"consumer back {consumer_back:.1f}s and first task {first_task_after:.1f}s after "
            f"the restart; ran {len(executions)} ({len(runs)} distinct), stored {dict(states)}, "
            f"{len(never_ran)} not run ({len(never_ran & waiting)} waiting in the broker for "
            f"redelivery, {len(never_ran - waiting)} lost by the transport); worker received "
            f"{len(received_ids)}; counters: received {received:.0f} started {started:.0f} "
            f"succeeded {succeeded:.0f} failed {failed:.0f} "
            f"({[(x.labels['exception'], x.value) for x in s.find('celery_task_failed_total')]})"
        )
        print(report)
        assert max(runs.values()) == 1, report  # no task ran twice
        # What did not run either awaits redelivery in the broker or was lost by
        # the transport before the worker got it (kombu's Redis transport takes a
        # message off the queue and then records it as unacked: a broker killed
        # in between loses it).  Either way the worker never received it.
        assert not (never_ran - waiting) & set(received_ids), report
        assert started == len(executions), report
        # A message delivered again (restored unacked) counts as redelivered, not received.
        redelivered = _val(s, "celery_task_redelivered_total", **labels)
        assert received == len(set(received_ids)), report
        assert received + redelivered == len(received_ids), report
        # A request left active (Celery < 5.7, above) may have stored its state from
        # the pool child before the main process lost track of it: at most that many.
        assert succeeded <= states["SUCCESS"] <= succeeded + stuck[0], report
        assert failed <= states["FAILURE"] <= failed + stuck[0], report
        assert states[None] == len(never_ran), report
        assert s.sum("celery_task_runtime_seconds_count", name="tests.mark") == started - stuck[0]
        assert _val(s, "celery_task_revoked_total", **labels) == 0
        _no_instrumentation_errors(s)
        # Until restored, the messages the outage left unacknowledged hold the balance
        # open: received - started - prefetched is what was received and never ran.
        assert received - started - s.value("celery_worker_prefetched_tasks") == len(
            set(received_ids) - set(runs)
        ), report
        assert set(received_ids) - set(runs) <= waiting, report

        # Their redelivery: kombu restores them (flagged redelivered) once older than
        # the visibility timeout; a second worker with a 2 s one does it now.
        worker.stop()
        runs_before = dict(runs)
        second = Worker({**env, "TESTS_VISIBILITY_TIMEOUT": "2"}, tmp_path, pool="prefork",
                        concurrency=2, app="tests.visibility_app")  # fmt: skip
        cleanup_second.callback(second.stop)
        second.start()
        check = redis.Redis(port=broker.port)
        try:

            def restored() -> Samples | None:
                s2 = scrape(second.url + "/metrics")
                done = s2.sum("celery_task_runtime_seconds_count", name="tests.mark")
                if (
                    check.llen(Q)
                    or check.hlen("unacked")
                    or s2.value("celery_worker_prefetched_tasks")
                ):
                    return None
                if s2.value("celery_worker_tasks_active"):
                    return None
                return s2 if done == _val(s2, "celery_task_started_total", **labels) else None

            s2 = wait_for(restored, 120, interval=0.5, message="the waiting messages redelivered")
        finally:
            check.close()
        runs2: dict[str, int] = {}
        for entry in _files(marks):
            task_id = entry.split(".", 1)[0]
            runs2[task_id] = runs2.get(task_id, 0) + 1
        second_runs = sum(runs2.values()) - sum(runs_before.values())
        second_deliveries = re.findall(r"Task tests\.mark\[([0-9a-f-]+)\] received", second.log())
        report2 = (
            f"{report}; second worker: {len(second_deliveries)} deliveries of "
            f"{len(set(second_deliveries))} messages, {second_runs} runs; waiting was {len(waiting)}"
        )
        print(report2)
        # Every message it got was one the outage left waiting, and came flagged.
        assert set(second_deliveries) == waiting, report2
        assert _val(s2, "celery_task_redelivered_total", **labels) == len(second_deliveries)
        assert _val(s2, "celery_task_received_total", **labels) == 0, report2
        assert _val(s2, "celery_task_started_total", **labels) == second_runs, report2
        # The fleet's balance is closed: received - started - prefetched is 0 again,
        # but for what really ran twice (a run whose acknowledgement the outage lost is
        # restored and runs again: started twice, as it happened) and for a message
        # the first worker never got (its first delivery came flagged).
        fleet_received = received + _val(s2, "celery_task_received_total", **labels)
        fleet_started = started + _val(s2, "celery_task_started_total", **labels)
        ran_twice = sum(n - 1 for n in runs2.values())
        first_seen_flagged = len(waiting - set(received_ids))
        assert set(received_ids) <= set(runs2), report2
        assert (
            fleet_received + first_seen_flagged - fleet_started
            - s2.value("celery_worker_prefetched_tasks") + ran_twice
            == 0
        ), report2  # fmt: skip
        _no_instrumentation_errors(s2)
    finally:
        # Every step runs even if one before it raised: no process is left behind.
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(shutil.rmtree, tmp_path / "redis-data", ignore_errors=True)
            cleanup.callback(broker.stop, kill=True)
            cleanup.callback(worker.stop)
            cleanup.callback(cleanup_second.close)
            cleanup.callback(poller.stop)


@pytest.mark.parametrize("kill", [False, True], ids=["restarted", "sigkilled"])
def test_rabbitmq_restarted_under_load(
    kill: bool,
    tmp_path: Path,
    rabbitmq_server: RabbitMQServer,
    rabbitmq_vhost: str,
    rabbitmq_env: dict[str, str],
) -> None:
    """The same outage on RabbitMQ: the node stopped (``rabbitmqctl stop``) or SIGKILLed,
    then the same node again.

    Published with confirms: without them a SIGKILLed node loses what it had not
    written yet (measured here: 104 of 200 persistent messages, and every
    prefetched one), which no counter can be compared with.  After a clean stop
    RabbitMQ redelivers exactly the messages that were unacknowledged, flagged.
    After a crash it flags *every* recovered message as redelivered and delivers
    again the ones whose acknowledgement it had not written (they run twice:
    measured 77 of 200): the counters follow the broker's flag, and equal its
    own count of redeliveries.
    """
    marks = tmp_path / "executions"
    marks.mkdir()
    vhost = rabbitmq_vhost.rsplit("/", 1)[1]
    publisher = Celery("faults-rabbitmq")
    publisher.conf.broker_transport_options = {"confirm_publish": True}
    env = {**rabbitmq_env, "CSUITE_RABBITMQ_API_URL": rabbitmq_server.management_url}
    worker = Worker(env, tmp_path, pool="prefork", concurrency=2,
                    args=("--prefetch-multiplier", "8"))  # fmt: skip
    poller = _Poller(worker.url + "/metrics")
    n_tasks = 200
    try:
        worker.start()
        with publisher.connection_for_write(rabbitmq_vhost) as connection:
            ids = [publisher.send_task("tests.mark", args=(str(marks), 0.05),
                                       connection=connection).id
                   for _ in range(n_tasks)]  # fmt: skip
        wait_for(lambda: len(_files(marks)) >= n_tasks // 3, 120, message="a third executed")
        poller.start()
        # From the management API (counts at most stats_interval_ms, 500 ms, old), not
        # rabbitmqctl: that starts an Erlang VM, seconds on a loaded machine, long
        # enough for the rest of the run to finish before the outage (seen: 200 of
        # 200 run, nothing unacknowledged or redelivered at the SIGKILL).
        queue = rabbitmq_server.api(f"queues/{vhost}/{Q}")
        prefetched_before = int(queue.get("messages_unacknowledged", 0))
        rabbitmq_server.stop(kill=kill)
        killed_at = time.monotonic()
        with poller.explained(worker):
            wait_for(lambda: _worker_running(worker) and time.monotonic() - killed_at >= 3.0
                     and poller.seen(0, killed_at) and poller.health_seen(503, killed_at), 60,
                     message="consumer down reported, /healthz 503")  # fmt: skip
        rabbitmq_server.start()
        restarted_at = time.monotonic()
        with poller.explained(worker):
            wait_for(lambda: _worker_running(worker) and poller.seen(1, restarted_at)
                     and poller.health_seen(200, restarted_at), 120,
                     message="consumer back, /healthz 200")  # fmt: skip

        # Why the last look was not settled yet: the timeout message says it.
        last: dict[str, Any] = {}
        steady = _Steady()
        # Celery 5.7 finishes every job through a clean stop.  After a crash it may lose
        # the end of one whose message the node delivers again while it runs (seen once
        # in CI: 259 of 260 executions finished, none active; the request has left
        # Celery's state, as on 5.4): bounded as before 5.7.
        strict = celery.VERSION >= (5, 7) and not kill

        def settled() -> Samples | None:
            _worker_running(worker)
            last.clear()
            live = rabbitmq_server.list_queues(vhost).get(Q)
            last["live"] = live
            if live is None or live["messages_ready"] or live["messages_unacknowledged"]:
                return None
            s = scrape(worker.url + "/metrics")
            prefetched = s.value("celery_worker_prefetched_tasks")
            active = s.value("celery_worker_tasks_active") or 0
            finished = s.sum("celery_task_runtime_seconds_count", name="tests.mark")
            executions = len(_files(marks))
            look = dict(prefetched=prefetched, active=active, finished=finished,
                        executions=executions)  # fmt: skip
            last["look"] = look
            if not steady(look) or prefetched != 0:
                return None
            if strict:
                return s if active == 0 and finished == executions else None
            # Before 5.7, and after a crash on any version, a job running at the outage
            # may never finish in Celery's main process (compat.BEHAVIOURS:
            # active_after_broker_restart): steady is all there is to wait for; what is
            # left over is bounded below.
            return s

        try:
            s = wait_for(settled, 180, interval=0.5, message="queue drained and counters settled")
        except TimeoutError as exc:
            raise AssertionError(
                f"{exc}; last look: {last}\n--- worker log ---\n{worker.log()[-6000:]}"
            ) from None
        poller.stop()
        assert poller.failures == []

        executions = _files(marks)
        runs = collections.Counter(entry.split(".", 1)[0] for entry in executions)
        # Celery's own "received" log line per delivery that reached the worker.
        deliveries = re.findall(r"Task tests\.mark\[([0-9a-f-]+)\] received", worker.log())
        # RabbitMQ's own count of deliveries flagged redelivered (since its restart:
        # every redelivery happens after it).
        stats = rabbitmq_server.api(f"queues/{vhost}/{Q}").get("message_stats", {})
        broker_redelivered = int(stats.get("redeliver", 0))

        labels = {"name": "tests.mark", "queue_name": Q}
        received = _val(s, "celery_task_received_total", **labels)
        redelivered = _val(s, "celery_task_redelivered_total", **labels)
        started = _val(s, "celery_task_started_total", **labels)
        succeeded = _val(s, "celery_task_succeeded_total", **labels)
        # Executions in a pool child that Celery's main process (where starts and outcomes
        # are counted) never saw begin, or never saw end: 0 when strict, above.
        never_started = len(executions) - started
        unfinished = started - s.sum("celery_task_runtime_seconds_count", name="tests.mark")
        report = (
            f"rabbitmq outage: published {n_tasks}, {prefetched_before} unacked at the kill; "
            f"ran {len(executions)} ({len(runs)} distinct), in celery {celery.__version__} "
            f"{never_started:.0f} never started and {unfinished:.0f} never finished in the main "
            f"process; deliveries {len(deliveries)}; "
            f"broker redelivered {broker_redelivered}; counters: received {received:.0f} "
            f"redelivered {redelivered:.0f} started {started:.0f} succeeded {succeeded:.0f}"
        )
        print(report)
        assert set(runs) == set(ids), report  # durable queue, confirmed messages: none lost
        # Every delivery counted once, as received or as redelivered: the broker's flag.
        assert received + redelivered == len(deliveries), report
        assert redelivered == broker_redelivered, report
        assert succeeded == started - unfinished, report
        ran_twice = sum(n - 1 for n in runs.values())
        if strict:
            assert never_started == unfinished == 0, report
        else:
            # The jobs in the pool's two children at the outage: Celery (before 5.7, or
            # after a crash) may lose the child's news of them (compat.BEHAVIOURS:
            # active_after_broker_restart), and still lists the unfinished ones as
            # active, unless their message came again and ran (after a crash).  One whose start never reached the main
            # process was never acknowledged either: its message came again and ran again.
            assert 0 <= never_started <= ran_twice, report
            assert unfinished >= 0 and never_started + unfinished <= 2, report
            assert s.value("celery_worker_tasks_active") <= unfinished, report
        if kill:
            # A crash flags every recovered message: some were in flight at the kill.
            assert redelivered >= prefetched_before > 0, report
        else:
            # A clean restart: each message received once, and the received - started -
            # prefetched balance is back to 0, but for what really ran twice.
            # (Whether any message was still unacknowledged when the connections
            # closed depends on how fast the pool drained its prefetch meanwhile:
            # what was is in redelivered, equal to RabbitMQ's count above.)  An
            # acknowledgement written as `rabbitmqctl stop` closes the connection can be
            # lost (seen in CI: 201 runs of 200 messages): the broker then delivers that
            # message again, flagged, and it runs again: at-least-once, as Celery
            # promises with early acknowledgement too.  Started counts both runs, as
            # they happened; each second run must have come as a flagged delivery.
            per_id = collections.Counter(deliveries)
            assert all(per_id[i] >= n for i, n in runs.items()), report
            assert ran_twice <= redelivered, report
            assert received == n_tasks == len(set(deliveries)), report
            # So received - started - prefetched is back to 0 but for the second runs the
            # counters saw start (received == n_tasks, started == executions -
            # never_started, settled with nothing prefetched).
        _no_instrumentation_errors(s)
    finally:
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(worker.stop)
            cleanup.callback(poller.stop)
            if rabbitmq_server.process is None:
                cleanup.callback(rabbitmq_server.start)


# ----------------------------------------------------------------------------- memory


def test_memory_soak_short(tmp_path: Path) -> None:
    """The short version of benchmarks/soak_memory.py (the full one runs 100,000 tasks).

    Time limits of 1 s / 2 s: with the package's 240 s / 300 s, kombu keeps every
    cancelled time-limit timer for 240 s, which would hide our own per-task cost.
    """
    output = tmp_path / "soak"
    tasks, interval = 3000, 500
    command = [PYTHON, str(ROOT / "benchmarks" / "soak_memory.py"), "--tasks", str(tasks),
               "--interval", str(interval), "--time-limit", "2", "--soft-time-limit", "1",
               "--output", str(output)]  # fmt: skip
    soak = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, stderr = soak.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        soak.terminate()  # the script stops its worker and Redis on SIGTERM
        _, stderr = soak.communicate(timeout=120)
    assert soak.returncode == 0, stderr.decode(errors="replace")[-4000:]
    report = json.loads(Path(f"{output}.json").read_text())
    assert Path(f"{output}.md").read_text().startswith("# Memory soak")
    assert report["command"].endswith(" ".join(command[2:]))
    assert [s["tasks"] for s in report["samples"]] == list(range(0, tasks + 1, interval))
    assert report["counters_exact"] is True
    assert report["counters"]["succeeded"] == tasks
    # Generous: 4 MiB over 2,500 tasks after the warm-up round is 1.6 KiB per task;
    # the runs measured here grow by well under 1 MiB.
    assert report["main_rss_growth_after_warmup_bytes"] < 4 * 2**20, report["samples"]
