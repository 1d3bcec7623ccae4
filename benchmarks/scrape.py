"""Scrape cost and cardinality: ``/metrics`` latency and size against task names and churn.

* Task names: prefork ``-c 4`` workers with 10, 100 and 500 registered task names
  (the package creates every registered task's series at zero on start-up, so
  the exposition is full-size without running a task).
* Child churn: the 500-name worker runs with ``--max-tasks-per-child 1``; after
  each batch of tasks every task has cost one pool-child restart.  The
  exposition is scraped once the worker is idle again.
* Series: how many series one worker exposes per (task name, queue) pair, per
  queue and per (task, queue, exception) triple, measured on a solo worker by
  adding queues and exceptions one step at a time.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .apps import BENCH_QUEUE, named_task, queue_name
from .broker import Broker
from .procs import CASES, WorkerProc, http_get, wait_for
from .stats import percentile
from .system import rss_bytes, tree, tree_cpu

__all__ = ["count_series", "measure_scrapes", "run_churn", "run_names", "run_series"]


def count_series(body: bytes) -> dict[str, int]:
    """Series in an exposition, in total and by metric-name prefix."""
    groups = {"task": 0, "queue": 0, "queue_labelled": 0, "worker": 0, "package": 0, "other": 0}
    total = 0
    for line in body.decode(errors="replace").splitlines():
        if not line or line.startswith("#"):
            continue
        total += 1
        if line.startswith("celery_task_"):
            groups["task"] += 1
        elif line.startswith("celery_queue_"):
            groups["queue"] += 1
            if 'queue_name="' in line:
                groups["queue_labelled"] += 1
        elif line.startswith("celery_worker_"):
            groups["worker"] += 1
        elif line.startswith("csuite_"):
            groups["package"] += 1
        else:
            groups["other"] += 1
    return {"total": total, **groups}


def measure_scrapes(worker: WorkerProc, scrapes: int) -> dict[str, Any]:
    """``scrapes`` sequential GETs of ``/metrics``: latency, size, worker CPU per scrape."""
    http_get(worker.metrics_url, timeout=30)  # warm
    pids = tree(worker.pid)
    cpu0 = tree_cpu(worker.pid, pids).cpu
    latencies = []
    body = b""
    for _ in range(scrapes):
        status, body, seconds = http_get(worker.metrics_url, timeout=30)
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        latencies.append(seconds)
    cpu1 = tree_cpu(worker.pid, pids).cpu
    # As Prometheus asks for it: compressed (the worker gzips at level 1).
    gzipped = []
    compressed = b""
    for _ in range(scrapes):
        status, compressed, seconds = http_get(
            worker.metrics_url, timeout=30, headers={"Accept-Encoding": "gzip"}
        )
        if status != 200:
            raise RuntimeError(f"/metrics (gzip) answered {status}")
        gzipped.append(seconds)
    try:
        fds = len(os.listdir(f"/proc/{worker.pid}/fd"))
    except OSError:
        fds = -1
    return {
        "scrapes": scrapes,
        "latency_ms": {
            "median": statistics.median(latencies) * 1e3,
            "p99": percentile(latencies, 99) * 1e3,
            "max": max(latencies) * 1e3,
        },
        "latency_gzip_ms": {
            "median": statistics.median(gzipped) * 1e3,
            "p99": percentile(gzipped, 99) * 1e3,
        },
        "body_bytes": len(body),
        "body_gzip_bytes": len(compressed),
        "series": count_series(body),
        "worker_cpu_ms_per_scrape": (cpu1 - cpu0) / scrapes * 1e3,
        "main_rss_mib": rss_bytes(worker.pid) / 2**20,
        "main_open_fds": fds,
        "pool_processes": len(tree(worker.pid)) - 1,
    }


def _succeeded(worker: WorkerProc) -> float:
    _, body, _ = http_get(worker.metrics_url, timeout=30)
    total = 0.0
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("celery_task_succeeded_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _idle(worker: WorkerProc, timeout: float = 60.0) -> None:
    """Wait until the worker tree stops burning CPU (children restarted, queue drained)."""
    last = tree_cpu(worker.pid).cpu
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = tree_cpu(worker.pid).cpu
        if now - last <= 0.011:
            return
        last = now


def _names_worker(broker: Broker, db: int, log_dir: Path, names: int, churn: bool) -> WorkerProc:
    args = ("--max-tasks-per-child", "1") if churn else ()
    return WorkerProc(
        CASES["package"],
        broker,
        db,
        log_dir,
        "prefork",
        4,
        args=args,
        env_extra={"BENCH_TASK_NAMES": str(names)},
    )


def run_names(
    broker: Broker,
    log_dir: Path,
    names_list: list[int],
    scrapes: int,
    churn_names: int,
    churn_steps: list[int],
    should_stop: Callable[[], str | None] = lambda: None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Scrape cost against task names, then (on the ``churn_names`` worker) against restarts."""
    by_names: list[dict[str, Any]] = []
    by_churn: list[dict[str, Any]] = []
    stopper: threading.Thread | None = None
    for index, names in enumerate(names_list):
        is_churn = names == churn_names
        reason = should_stop()
        if reason:
            by_names.append({"names": names, "error": reason})
            continue
        # A DB of its own, so that it can start while the previous worker stops.
        worker = _names_worker(broker, 10 + index, log_dir, names, is_churn)
        try:
            worker.start(timeout=120)
            if stopper is not None:
                stopper.join()
            _idle(worker)
            row = {"names": names, "children": 4, **measure_scrapes(worker, scrapes)}
            by_names.append(row)
            if is_churn:
                by_churn = run_churn(broker, worker, names, scrapes, churn_steps, row, should_stop)
        except Exception as exc:  # noqa: BLE001 -- reported in the table
            by_names.append({"names": names, "error": f"{type(exc).__name__}: {exc}"[:2000]})
        finally:
            if stopper is not None:
                stopper.join()
            stopper = threading.Thread(target=worker.stop, daemon=True)
            stopper.start()
    if stopper is not None:
        stopper.join()
    return by_names, by_churn


def run_churn(
    broker: Broker,
    worker: WorkerProc,
    names: int,
    scrapes: int,
    steps: list[int],
    first: dict[str, Any],
    should_stop: Callable[[], str | None] = lambda: None,
) -> list[dict[str, Any]]:
    """Restart pool children ``steps`` times in all (one task each), scraping at every step."""
    rows: list[dict[str, Any]] = []
    done = 0
    tasks = [(named_task(i), ()) for i in range(names)]
    for target in steps:
        if target == 0:
            rows.append({"restarts": 0, **first})
            continue
        reason = should_stop()
        if reason:
            rows.append({"restarts": target, "error": reason})
            continue
        batch = target - done
        started = time.monotonic()
        broker.fill(broker.template(batch, tasks), [worker.db])
        wait_for(
            lambda: broker.pending(worker.db) == 0,
            timeout=max(600.0, batch * 1.0),
            message=f"{batch} tasks through --max-tasks-per-child 1",
            interval=0.5,
        )
        _idle(worker)
        seconds = time.monotonic() - started
        done = target
        measured = measure_scrapes(worker, scrapes)
        rows.append(
            {
                "restarts": target,
                "tasks_succeeded": _succeeded(worker),
                "restart_seconds_each": seconds / batch,
                **measured,
            }
        )
    return rows


def run_series(broker: Broker, log_dir: Path, queues: int, exceptions: int) -> dict[str, Any]:
    """Series per (name, queue) pair, per queue and per exception, measured step by step."""
    names = 10
    extra_queues = [queue_name(i) for i in range(1, queues)]
    worker = WorkerProc(
        CASES["package"],
        broker,
        4,
        log_dir,
        "solo",
        1,
        env_extra={"BENCH_TASK_NAMES": str(names)},
        queues=(BENCH_QUEUE, *extra_queues),
    )
    steps: list[dict[str, Any]] = []
    try:
        worker.start()
        registered = names + 3  # bench.noop, bench.sleep, bench.fail
        _, body, _ = http_get(worker.metrics_url)
        steps.append(
            {
                "step": f"{registered} task names on 1 queue",
                "pairs": registered,
                "queues": 1,
                "exceptions": 0,
                "series": count_series(body),
            }
        )
        tasks = [(named_task(i), ()) for i in range(names)]
        for q in extra_queues:
            broker.fill(broker.template(names, tasks, queue=q), [worker.db], queue=q)
        wait_for(
            lambda: all(broker.pending(worker.db, q) == 0 for q in extra_queues),
            120,
            "tasks on the extra queues",
        )
        time.sleep(0.5)
        _, body, _ = http_get(worker.metrics_url)
        pairs = registered + names * len(extra_queues)
        steps.append(
            {
                "step": f"the {names} names also run on {len(extra_queues)} more queues",
                "pairs": pairs,
                "queues": queues,
                "exceptions": 0,
                "series": count_series(body),
            }
        )
        fails = [("bench.fail", (k,)) for k in range(exceptions)]
        broker.fill(broker.template(exceptions, fails), [worker.db])
        wait_for(lambda: broker.pending(worker.db) == 0, 120, "failing tasks")
        time.sleep(0.5)
        _, body, _ = http_get(worker.metrics_url)
        steps.append(
            {
                "step": f"bench.fail raised {exceptions} distinct exception classes",
                "pairs": pairs,
                "queues": queues,
                "exceptions": exceptions,
                "series": count_series(body),
                "body_bytes": len(body),
            }
        )
    finally:
        worker.stop()
    s0, s1, s2 = (s["series"] for s in steps)
    added_pairs = steps[1]["pairs"] - steps[0]["pairs"]
    per_pair = (s1["task"] - s0["task"]) / added_pairs if added_pairs else float("nan")
    # The poller reports every consumed queue from the start: count the series
    # that carry a queue label, per queue, rather than a difference.
    per_queue = s1["queue_labelled"] / queues
    per_exception = (s2["total"] - s1["total"]) / max(1, exceptions)
    fixed = s0["total"] - per_pair * steps[0]["pairs"] - s0["queue_labelled"]
    bytes_per_series = steps[2].get("body_bytes", 0) / max(1, s2["total"])
    return {
        "steps": steps,
        "per_pair": per_pair,
        "per_queue": per_queue,
        "per_exception": per_exception,
        "fixed": fixed,
        "bytes_per_series": bytes_per_series,
    }


def fleet_table(series: dict[str, Any], workers: int = 1000) -> list[dict[str, Any]]:
    """What the measured per-worker figures mean for a fleet of ``workers`` workers."""
    rows = []
    for names, queues, exceptions in ((10, 1, 0), (100, 5, 20), (500, 10, 50), (500, 10, 500)):
        per_worker = (
            series["fixed"]
            + series["per_pair"] * names
            + series["per_queue"] * queues
            + series["per_exception"] * exceptions
        )
        fleet = per_worker * workers
        rows.append(
            {
                "task_names": names,
                "queues": queues,
                "exception_triples": exceptions,
                "series_per_worker": round(per_worker),
                "fleet_series": round(fleet),
                "samples_per_second_at_15s": round(fleet / 15),
                "scrape_mib_per_interval": fleet * series["bytes_per_series"] / 2**20,
            }
        )
    return rows
