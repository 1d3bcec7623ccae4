"""What the benchmarks read from Linux: CPU time and RSS of process trees, core pinning.

CPU time of a worker's tree (main process and pool children) is read two
ways: the nanosecond run time of every thread (``/proc/<pid>/task/<tid>/schedstat``),
exact as long as no thread or process of the tree exits in between, and
``utime + stime`` from ``/proc/<pid>/stat`` (every thread of a process, living
or exited) plus the main process's ``cutime + cstime`` (children it has already
reaped, e.g. after ``--max-tasks-per-child``), in 10 ms clock ticks.
:func:`cpu_between` uses the first when it can.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CLOCK_TICK",
    "PAGE_SIZE",
    "Pinner",
    "TreeSample",
    "children",
    "cpu_between",
    "machine_info",
    "pin",
    "rss_bytes",
    "tcp_ports",
    "tree",
    "tree_cpu",
]

CLOCK_TICK = 1.0 / os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # Field 2 (the command) may hold spaces and parentheses: split after its end.
    return text.rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from every thread's ``children`` file)."""
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    out = [pid]
    frontier = [pid]
    while frontier:
        nxt = [c for p in frontier for c in children(p)]
        out.extend(nxt)
        frontier = nxt
    return out


@dataclass(frozen=True)
class TreeSample:
    """CPU of a process tree at one instant.

    ``cpu`` is in seconds from the clock ticks of ``/proc/<pid>/stat`` (10 ms
    steps; reaped children included).  ``ns`` is the nanosecond run time of
    every thread (``/proc/<pid>/task/<tid>/schedstat``), exact but blind to
    threads and processes that exit: it is used only between two samples that
    saw the same ``threads``.
    """

    cpu: float
    processes: int
    ns: int = 0
    threads: frozenset[tuple[int, int]] = frozenset()


def _thread_ns(pid: int) -> tuple[int, set[tuple[int, int]]]:
    total = 0
    seen: set[tuple[int, int]] = set()
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0, seen
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        seen.add((pid, int(tid)))
    return total, seen


def tree_cpu(pid: int, pids: Sequence[int] | None = None) -> TreeSample:
    """CPU used so far by ``pid``'s tree (see :class:`TreeSample`)."""
    total = 0
    count = 0
    ns = 0
    threads: set[tuple[int, int]] = set()
    for p in pids if pids is not None else tree(pid):
        fields = _stat(p)
        if fields is None:
            continue
        count += 1
        total += int(fields[11]) + int(fields[12])
        if p == pid:
            total += int(fields[13]) + int(fields[14])
        run, seen = _thread_ns(p)
        ns += run
        threads |= seen
    return TreeSample(total * CLOCK_TICK, count, ns, frozenset(threads))


def cpu_between(before: TreeSample, after: TreeSample) -> tuple[float, str]:
    """CPU seconds between two samples of one tree, and which counter gave them."""
    if before.threads and before.threads == after.threads:
        return (after.ns - before.ns) / 1e9, "schedstat"
    return after.cpu - before.cpu, "ticks"


def tcp_ports(pids: Iterable[int]) -> set[int]:
    """Local TCP ports of the sockets held by ``pids`` (from ``/proc/net/tcp``)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[9] in inodes:
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def rss_bytes(pid: int) -> int:
    """Resident set size of one process, in bytes (0 if it is gone)."""
    fields = _stat(pid)
    return int(fields[21]) * PAGE_SIZE if fields is not None else 0


def pin(pids: Iterable[int], cores: set[int]) -> None:
    """Restrict every thread of every process in ``pids`` to ``cores``."""
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            # sched_setaffinity acts on one thread id; threads created later
            # inherit the mask of their creator.
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), cores)


class Pinner:
    """Pins two process trees to one core each and swaps the cores every ``period`` s.

    Each side gets the same share of each core over a round, whatever else runs
    on the machine; ``first`` says which side starts on core 0.
    """

    def __init__(
        self, roots: tuple[int, int], cores: tuple[int, int], period: float = 0.1, first: int = 0
    ) -> None:
        self.roots = roots
        self.cores = cores
        self.period = period
        self.flip = first
        self.swaps = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._trees: list[list[int]] = [tree(r) for r in roots]

    def _apply(self) -> None:
        for side, pids in enumerate(self._trees):
            core = self.cores[(side + self.flip) % 2]
            pin(pids, {core})

    def _run(self) -> None:
        ticks = 0
        while not self._stop.wait(self.period):
            ticks += 1
            if ticks % 10 == 0:
                # Pool children may be replaced (max-tasks-per-child); re-read the trees.
                self._trees = [tree(r) for r in self.roots]
            self.flip ^= 1
            self.swaps += 1
            self._apply()

    def __enter__(self) -> Pinner:
        self._apply()
        self._thread = threading.Thread(target=self._run, name="pinner", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 -- a missing package is reported, not fatal
        return "not installed"


def machine_info(redis_binary: str | None) -> dict[str, Any]:
    """CPU model, cores, kernel, Python and library versions, for the result stamp."""
    redis_version = "unknown"
    if redis_binary:
        try:
            out = subprocess.run(
                [redis_binary, "--version"], capture_output=True, text=True, timeout=10
            ).stdout
            redis_version = next(
                (w.split("=", 1)[1] for w in out.split() if w.startswith("v=")), out.strip()
            )
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "celery": _version("celery"),
        "kombu": _version("kombu"),
        "prometheus_client": _version("prometheus_client"),
        "csuite_async_obs": _version("csuite-async-obs"),
        "flower": _version("flower"),
        "opentelemetry_instrumentation_celery": _version("opentelemetry-instrumentation-celery"),
        "redis_server": redis_version,
        "load_average_at_start": [round(x, 2) for x in load],
    }
