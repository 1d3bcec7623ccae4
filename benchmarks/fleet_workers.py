"""The fleet benchmark's simulated workers, and how many series a body holds.

Each :class:`Worker` is its own :class:`~csuite_async_obs.metrics.task_metrics.TaskMetrics`
on its own ``CollectorRegistry`` (or, for the ``peer`` case, the peer's shapes made
with prometheus_client), rendered by the package's own renderer.  The counting
functions read what Prometheus would store from a body: sample lines of a text
exposition, and for the protobuf one a native histogram as one series.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from csuite_async_obs.config.options import ObsSettings
from csuite_async_obs.metrics import protobuf
from csuite_async_obs.metrics.exposition import wants_protobuf
from csuite_async_obs.metrics.task_metrics import TaskMetrics, TaskSeries

QUEUE = "celery"
EXCEPTION = "TimeoutError"
TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: The peer's histograms: 14 bounds and +Inf.
PEER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
PEER_COUNTERS = ("sent", "received", "started", "succeeded", "failed", "retried", "revoked")


# ---------------------------------------------------------------- simulated workers


class Worker:
    """One simulated worker: its registry, its task series and a renderer."""

    def __init__(self, case: str, names: Sequence[str], seed: int, failure_ratio: float) -> None:
        self.case = case
        self.names = list(names)
        self.random = random.Random(seed)
        self.failure_ratio = failure_ratio
        self.registry = CollectorRegistry()
        self.lock = threading.Lock()
        if case == "peer":
            self._peer_init()
        else:
            settings = ObsSettings(
                metrics_profile="full" if case == "full" else "default",
                native_histograms="native" if case == "native" else "off",
            )
            self.metrics = TaskMetrics(self.registry, settings)
            self.exposition = self.metrics.exposition()
            self.series: list[TaskSeries] = [self.metrics.task(n, QUEUE) for n in self.names]
        # Every series the run will touch exists from the start (one success and one
        # failure per name), so the served set is constant and can be checked exactly.
        for index in range(len(self.names)):
            self.run_task(index, fail=False)
            self.run_task(index, fail=True)

    def _peer_init(self) -> None:
        labels = ("name", "hostname")
        self.peer_counters = {
            kind: Counter(
                f"celery_peer_task_{kind}", f"Tasks {kind}.", labels, registry=self.registry
            )
            for kind in PEER_COUNTERS
        }
        self.peer_runtime = Histogram(
            "celery_peer_task_runtime",
            "Task runtime.",
            labels,
            buckets=PEER_BUCKETS,
            registry=self.registry,
        )
        self.peer_wait = Histogram(
            "celery_peer_task_queue_time",
            "Time in the queue.",
            labels,
            buckets=PEER_BUCKETS,
            registry=self.registry,
        )
        self.peer_children = []
        for name in self.names:
            key = (name, "worker@host")
            counters = {kind: c.labels(*key) for kind, c in self.peer_counters.items()}
            self.peer_children.append(
                (counters, self.peer_runtime.labels(*key), self.peer_wait.labels(*key))
            )

    def run_task(self, index: int, fail: bool) -> None:
        wait = self.random.lognormvariate(math.log(0.05), 1.0)
        runtime = self.random.lognormvariate(math.log(0.2), 1.2)
        if self.case == "peer":
            counters, runtime_child, wait_child = self.peer_children[index]
            counters["sent"].inc()
            counters["received"].inc()
            wait_child.observe(wait)
            counters["started"].inc()
            runtime_child.observe(runtime)
            counters["failed" if fail else "succeeded"].inc()
            return
        series = self.series[index]
        series.inc_received()
        series.observe_wait(wait)
        series.inc_started()
        if fail:
            series.failed(EXCEPTION).inc()
            series.observe_runtime["failed"](runtime)
            series.last_failure.set(time.time())
        else:
            series.inc_succeeded()
            series.observe_runtime["succeeded"](runtime)
            series.last_success.set(time.time())

    def work(self, tasks: int) -> None:
        """Run ``tasks`` tasks on random names; some fail."""
        for _ in range(tasks):
            index = self.random.randrange(len(self.names))
            self.run_task(index, self.random.random() < self.failure_ratio)

    def render(self, accept: str) -> tuple[bytes, str]:
        if self.case == "peer":
            return generate_latest(self.registry), TEXT_TYPE
        if wants_protobuf(accept):
            return self.exposition.render_protobuf(), protobuf.CONTENT_TYPE
        return self.exposition.render(openmetrics=False), TEXT_TYPE


def worker_names(count: int) -> list[str]:
    return [f"w{i:04d}" for i in range(1, count + 1)]


def task_names(count: int) -> list[str]:
    return [f"app.tasks.task_{i:03d}" for i in range(count)]


# ---------------------------------------------------------------- counting series


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int, Any]]:
    """(field, wire type, value) of one protobuf message (varint, 64-bit, bytes)."""
    out: list[tuple[int, int, Any]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        out.append((number, wire, value))
    return out


def protobuf_series(body: bytes) -> int:
    """Series Prometheus stores from a delimited MetricFamily stream: a native histogram
    (schema or spans present) is one series; a classic one its buckets, +Inf, count, sum."""
    total = pos = 0
    while pos < len(body):
        length, pos = _varint(body, pos)
        family, pos = body[pos : pos + length], pos + length
        for number, _, metric in _fields(family):
            if number != 4:
                continue
            histogram = next((v for n, _, v in _fields(metric) if n == 7), None)
            if histogram is None:
                total += 1
                continue
            parts = {n for n, _, _ in _fields(histogram)}
            if parts & {5, 6, 9, 12}:
                total += 1
            else:
                total += sum(1 for n, _, _ in _fields(histogram) if n == 3) + 3
    return total


def text_series(body: bytes) -> int:
    """Sample lines of a text exposition."""
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


def served_series(worker: Worker, native: bool) -> int:
    accept = protobuf.CONTENT_TYPE if native else "text/plain"
    body, content_type = worker.render(accept)
    if content_type == protobuf.CONTENT_TYPE:
        return protobuf_series(body)
    return text_series(body)
