"""Simultaneous A/B: a plain worker and a case worker drain identical queues at once.

Design (see the issue's noise facts): both workers run at the same time, each on
its own Redis DB, each process tree pinned to one core, the two cores swapped
every 0.1 s.  A round fills both queues in one ``MULTI`` and measures, for each
side, the CPU time of its whole process tree from the fill until its queue is
drained and acknowledged -- start-up is never inside the window.  Rounds come in
pairs that swap every "slot" between the sides: which queue is filled first,
which side starts on core 0 and which is polled and read first; the Redis DB is
swapped between the two *legs* of a pool's run (every worker restarted), which
also puts two independent process instances per side into the figure.  Within a
leg one plain worker serves as the baseline of every case of its pool; each
case worker is started for its rounds and stopped after them.  The
figure of a pair is the geometric mean of its two rounds' ratios (case CPU per
task / plain CPU per task), so every slot effect cancels inside the pair.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .broker import Broker
from .procs import CASES, Scraper, WorkerProc, http_get
from .stats import Interval, log_ratio_interval
from .system import Pinner, TreeSample, cpu_between, tree, tree_cpu

__all__ = ["Comparison", "Item", "RoundResult", "run_pool"]


@dataclass
class RoundResult:
    """One round: CPU seconds and wall seconds of each side, and the slot layout."""

    tasks: int
    cpu_plain: float
    cpu_case: float
    wall_plain: float
    wall_case: float
    case_first: bool
    db_case: int
    processes_plain: int
    processes_case: int
    cpu_source: str = "ticks"

    @property
    def cpu_ratio(self) -> float:
        return self.cpu_case / self.cpu_plain

    @property
    def wall_ratio(self) -> float:
        return self.wall_case / self.wall_plain


@dataclass
class Comparison:
    """All rounds of one (case, pool, task) comparison against a plain worker."""

    case: str
    pool: str
    concurrency: int
    task: str
    tasks_per_round: int
    rounds: list[RoundResult] = field(default_factory=list)
    cpu_ratio: Interval | None = None
    throughput_ratio: Interval | None = None
    plain_cpu_per_task_us: float | None = None
    case_cpu_per_task_us: float | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def pair_ratios(self, value: Callable[[RoundResult], float]) -> list[float]:
        out = []
        for i in range(0, len(self.rounds) - 1, 2):
            out.append((value(self.rounds[i]) * value(self.rounds[i + 1])) ** 0.5)
        return out

    def summarise(self) -> None:
        if len(self.rounds) < 2:
            return
        self.cpu_ratio = log_ratio_interval(self.pair_ratios(lambda r: r.cpu_ratio))
        # Throughput of the case relative to plain = plain wall time / case wall time.
        self.throughput_ratio = log_ratio_interval(
            self.pair_ratios(lambda r: r.wall_plain / r.wall_case)
        )
        n = sum(r.tasks for r in self.rounds)
        self.plain_cpu_per_task_us = sum(r.cpu_plain for r in self.rounds) / n * 1e6
        self.case_cpu_per_task_us = sum(r.cpu_case for r in self.rounds) / n * 1e6

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["cpu_ratio"] = self.cpu_ratio.to_json() if self.cpu_ratio else None
        data["throughput_ratio"] = (
            self.throughput_ratio.to_json() if self.throughput_ratio else None
        )
        data["rounds"] = [
            {**asdict(r), "cpu_ratio": r.cpu_ratio, "wall_ratio": r.wall_ratio} for r in self.rounds
        ]
        return data


def _drain(
    broker: Broker,
    order: list[tuple[str, WorkerProc]],
    settle: float,
    timeout: float,
) -> tuple[dict[str, TreeSample], dict[str, float]]:
    """Wait until each side's queue is empty and acknowledged; CPU sample and wall per side."""
    start = time.monotonic()
    done: dict[str, float] = {}
    seen_empty: dict[str, int] = {}
    samples: dict[str, TreeSample] = {}
    while len(samples) < len(order):
        now = time.monotonic()
        if now - start > timeout:
            raise TimeoutError(f"round did not drain in {timeout:.0f}s")
        for side, worker in order:
            if side in samples:
                continue
            if side not in done:
                if broker.pending(worker.db) == 0:
                    seen_empty[side] = seen_empty.get(side, 0) + 1
                    # Twice in a row: a message between BRPOP and the unacked
                    # hash is invisible for an instant.
                    if seen_empty[side] >= 2:
                        done[side] = time.monotonic()
                else:
                    seen_empty[side] = 0
            elif now - done[side] >= settle:
                samples[side] = tree_cpu(worker.pid, tree(worker.pid))
        time.sleep(0.004)
    wall = {side: done[side] - start for side in done}
    return samples, wall


def run_round(
    broker: Broker,
    plain: WorkerProc,
    case: WorkerProc,
    template: str,
    tasks: int,
    case_first: bool,
    settle: float,
    timeout: float,
    cores: tuple[int, int],
) -> RoundResult:
    sides = [("case", case), ("plain", plain)]
    if not case_first:
        sides.reverse()
    roots = (sides[0][1].pid, sides[1][1].pid)
    pids = {side: tree(w.pid) for side, w in sides}
    with Pinner(roots, cores, first=0):
        before = {side: tree_cpu(w.pid, pids[side]) for side, w in sides}
        broker.fill(template, [w.db for _, w in sides])
        after, wall = _drain(broker, sides, settle, timeout)
    cpu = {side: cpu_between(before[side], after[side]) for side, _ in sides}
    return RoundResult(
        tasks=tasks,
        cpu_plain=cpu["plain"][0],
        cpu_case=cpu["case"][0],
        wall_plain=wall["plain"],
        wall_case=wall["case"],
        case_first=case_first,
        db_case=case.db,
        processes_plain=after["plain"].processes,
        processes_case=after["case"].processes,
        cpu_source=f"{cpu['plain'][1]}/{cpu['case'][1]}",
    )


@dataclass(frozen=True)
class Item:
    """One comparison to run against the plain worker of a pool."""

    case: str
    task: str
    template: str
    tasks: int
    pairs: int
    settle: float = 0.02


def _stop_all(workers: list[WorkerProc]) -> threading.Thread:
    """Stop ``workers`` on a thread (a warm shutdown waits on the broker for ~1 s)."""
    thread = threading.Thread(target=lambda: [w.stop() for w in workers], daemon=True)
    thread.start()
    return thread


def _quiet(workers: list[WorkerProc], timeout: float = 5.0) -> None:
    """Wait until no worker tree burns CPU (start-up finished) before a round."""
    deadline = time.monotonic() + timeout
    last = [tree_cpu(w.pid).cpu for w in workers]
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = [tree_cpu(w.pid).cpu for w in workers]
        if all(b - a <= 0.011 for a, b in zip(last, now, strict=True)):
            return
        last = now


def run_pool(
    broker: Broker,
    pool: str,
    concurrency: int,
    items: list[Item],
    legs: int,
    log_dir: Path,
    round_timeout: float = 600.0,
    cores: tuple[int, int] = (0, 1),
    on_round: Callable[[Comparison, RoundResult], None] | None = None,
    should_stop: Callable[[], str | None] = lambda: None,
    idle_probe: float = 0.0,
) -> list[Comparison]:
    """Every item of one pool against one plain worker per leg (DBs swapped between legs)."""
    results = {
        (i.case, i.task): Comparison(i.case, pool, concurrency, i.task, i.tasks) for i in items
    }
    by_case: dict[str, list[Item]] = {}
    for item in items:
        by_case.setdefault(item.case, []).append(item)
    stopper: threading.Thread | None = None
    for leg in range(legs):
        db_plain, db_case = (1, 2) if leg % 2 == 0 else (2, 1)
        todo = {
            case: [(i, i.pairs // legs + (1 if leg < i.pairs % legs else 0)) for i in its]
            for case, its in by_case.items()
        }
        todo = {case: its for case, its in todo.items() if any(n for _, n in its)}
        if not todo:
            continue
        plain = WorkerProc(CASES["plain"], broker, db_plain, log_dir, pool, concurrency)
        try:
            plain.start()
            for case_key, its in todo.items():
                reason = should_stop()
                if reason:
                    for item, _n in its:
                        results[(item.case, item.task)].notes.append(f"leg {leg + 1}: {reason}")
                    continue
                case = WorkerProc(CASES[case_key], broker, db_case, log_dir, pool, concurrency)
                try:
                    _run_case(
                        broker,
                        plain,
                        case,
                        its,
                        results,
                        round_timeout,
                        cores,
                        on_round,
                        stopper,
                        idle_probe,
                    )
                    stopper = None
                except Exception as exc:  # noqa: BLE001 -- one case failing must not sink the rest
                    for item, _n in its:
                        comp = results[(item.case, item.task)]
                        comp.error = f"{type(exc).__name__}: {exc}"[:2000]
                finally:
                    stopper = _stop_all([case])
        finally:
            if stopper is not None:
                stopper.join()
            stopper = _stop_all([plain])
    if stopper is not None:
        stopper.join()
    for comp in results.values():
        comp.summarise()
    return list(results.values())


def _run_case(
    broker: Broker,
    plain: WorkerProc,
    case: WorkerProc,
    items: list[tuple[Item, int]],
    results: dict[tuple[str, str], Comparison],
    round_timeout: float,
    cores: tuple[int, int],
    on_round: Callable[[Comparison, RoundResult], None] | None,
    stopper: threading.Thread | None = None,
    idle_probe: float = 0.0,
) -> None:
    case_def = case.case
    try:
        missing = case_def.missing()
        if missing:
            raise RuntimeError(f"cannot run: {missing}")
        case.start()
    finally:
        # The previous case worker stopped while this one started; no round
        # runs before it is gone.
        if stopper is not None:
            stopper.join()
    scraper: Scraper | None = None
    try:
        if case_def.exporter:
            scraper = Scraper(case.metrics_url).__enter__()
        flower_before = case.flower.events_seen() if case.flower is not None else None
        for item, pairs in items:
            comp = results[(item.case, item.task)]
            for _pair in range(pairs):
                for case_first in (True, False):
                    _quiet([plain, case])
                    r = run_round(
                        broker,
                        plain,
                        case,
                        item.template,
                        item.tasks,
                        case_first,
                        item.settle,
                        round_timeout,
                        cores,
                    )
                    comp.rounds.append(r)
                    if on_round is not None:
                        on_round(comp, r)
        first = results[(items[0][0].case, items[0][0].task)]
        if case.flower is not None:
            # Flower may lag behind the worker: give it a moment, then count.
            expected = 3 * sum(i.tasks * 2 * n for i, n in items)
            deadline = time.monotonic() + 10
            seen = 0.0
            while time.monotonic() < deadline:
                after = case.flower.events_seen()
                seen = (after or 0.0) - (flower_before or 0.0)
                if seen >= expected:
                    break
                time.sleep(0.5)
            first.extra.setdefault("flower_events", []).append(
                {"seen": seen, "task_events_sent": expected}
            )
        if scraper is not None and idle_probe > 0:
            # The fixed cost of being on: CPU per second of an idle worker that is
            # scraped once a second and polls queue depth, against the idle plain one.
            pids = {"plain": tree(plain.pid), "case": tree(case.pid)}
            cpu0 = {k: tree_cpu(p[0], p) for k, p in pids.items()}
            time.sleep(idle_probe)
            cpu1 = {k: tree_cpu(p[0], p) for k, p in pids.items()}
            first.extra.setdefault("idle_cpu_ms_per_s", []).append(
                {k: cpu_between(cpu0[k], cpu1[k])[0] / idle_probe * 1e3 for k in pids}
            )
        if scraper is not None:
            first.extra["scrapes"] = first.extra.get("scrapes", 0) + scraper.scrapes
            first.extra["scrape_failures"] = (
                first.extra.get("scrape_failures", 0) + scraper.failures
            )
            status, body, _ = http_get(case.metrics_url)
            first.extra["queue_depth_poller"] = status == 200 and b"celery_queue_length" in body
    finally:
        if scraper is not None:
            scraper.__exit__(None, None, None)
    if case_def.otel:
        # The span counts are written at shutdown: stop now, not on the stopper thread.
        case.stop()
        spans = case.spans()
        first = results[(items[0][0].case, items[0][0].task)]
        first.extra["otel_spans"] = first.extra.get("otel_spans", 0) + (spans or 0)
        first.extra["otel_tasks"] = first.extra.get("otel_tasks", 0) + sum(
            i.tasks * 2 * n for i, n in items
        )
