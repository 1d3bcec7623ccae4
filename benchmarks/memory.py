"""Memory: RSS of a prefork worker's main process and children over 100,000 tasks.

A plain and an instrumented prefork worker drain identical 100,000-task queues
at the same time (pinned and core-swapped like the A/B rounds); every 5,000
tasks each side's main-process RSS and its children's RSS are sampled.  The
slope of the main process's RSS is fitted after the first sample interval
(warm-up: first requests, first scrape, first queue-depth poll), and the
exporter's own RSS cost is the instrumented main process minus the plain one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .broker import Broker
from .procs import CASES, Scraper, WorkerProc
from .stats import slope
from .system import Pinner, children, rss_bytes, tree, tree_cpu

__all__ = ["run_memory"]


def _sample(worker: WorkerProc) -> dict[str, float]:
    kids = children(worker.pid)
    return {
        "main_mib": rss_bytes(worker.pid) / 2**20,
        "children_mib": sum(rss_bytes(k) for k in kids) / 2**20,
        "children": len(kids),
    }


def run_memory(
    broker: Broker, log_dir: Path, tasks: int, every: int, concurrency: int = 2
) -> dict[str, Any]:
    template = broker.template(tasks)
    plain = WorkerProc(CASES["plain"], broker, 5, log_dir, "prefork", concurrency)
    obs = WorkerProc(CASES["package"], broker, 6, log_dir, "prefork", concurrency)
    sides = {"plain": plain, "package": obs}
    samples: dict[str, list[dict[str, float]]] = {"plain": [], "package": []}
    cpu: dict[str, float] = {}
    try:
        plain.start()
        obs.start()
        with Scraper(obs.metrics_url) as scraper:
            time.sleep(1.5)  # a first scrape and queue-depth poll before the baseline sample
            for side, w in sides.items():
                samples[side].append({"tasks": 0, **_sample(w)})
            cpu0 = {side: tree_cpu(w.pid).cpu for side, w in sides.items()}
            next_mark = {side: every for side in sides}
            started = time.monotonic()
            with Pinner((plain.pid, obs.pid), (0, 1)):
                broker.fill(template, [plain.db, obs.db])
                while any(next_mark[s] <= tasks for s in sides):
                    if time.monotonic() - started > 3600:
                        raise TimeoutError("memory soak did not finish in an hour")
                    for side, w in sides.items():
                        if next_mark[side] > tasks:
                            continue
                        done = tasks - broker.pending(w.db)
                        if done >= next_mark[side]:
                            samples[side].append({"tasks": next_mark[side], **_sample(w)})
                            if next_mark[side] == tasks:
                                cpu[side] = tree_cpu(w.pid).cpu - cpu0[side]
                            next_mark[side] += every
                    time.sleep(0.01)
            wall = time.monotonic() - started
            scrapes = scraper.scrapes
        processes = {side: len(tree(w.pid)) for side, w in sides.items()}
    finally:
        obs.stop()
        plain.stop()
    result: dict[str, Any] = {
        "tasks": tasks,
        "every": every,
        "concurrency": concurrency,
        "samples": samples,
        "wall_seconds": wall,
        "scrapes_during_soak": scrapes,
        "processes": processes,
        "cpu_ratio_package_vs_plain": cpu["package"] / cpu["plain"] if cpu.get("plain") else None,
    }
    for side in sides:
        points = [s for s in samples[side] if s["tasks"] >= every]
        xs = [s["tasks"] / 10_000 for s in points]
        result[f"{side}_main_slope_mib_per_10k"] = slope(
            xs, [s["main_mib"] for s in points]
        ).to_json()
        result[f"{side}_children_slope_mib_per_10k"] = slope(
            xs, [s["children_mib"] for s in points]
        ).to_json()
        result[f"{side}_main_growth_mib"] = points[-1]["main_mib"] - points[0]["main_mib"]
        half = [s for s in points if s["tasks"] >= tasks / 2]
        result[f"{side}_main_slope_second_half_mib_per_10k"] = slope(
            [s["tasks"] / 10_000 for s in half], [s["main_mib"] for s in half]
        ).to_json()
    result["exporter_rss_cost_mib"] = {
        "at_start": samples["package"][0]["main_mib"] - samples["plain"][0]["main_mib"],
        "at_end": samples["package"][-1]["main_mib"] - samples["plain"][-1]["main_mib"],
    }
    return result
