"""Memory soak: N tasks through a prefork worker, its RSS sampled as it goes.

    python benchmarks/soak_memory.py                 # 100,000 tasks, a sample every 5,000
    python benchmarks/soak_memory.py --tasks 3000 --interval 500 --output /tmp/soak

It starts a private ``redis-server`` and one instrumented ``celery worker``
(prefork, ``-c 2``, exporter on a free loopback port), publishes the tasks in
rounds of ``--interval``, waits after each round until the worker's
``celery_task_succeeded_total`` has counted every task published so far, and
then reads the resident set size of the worker's main process and of its pool
children from ``/proc``.  The claim under test: the main process keeps no
per-task state once a task has ended, so its RSS stays flat.  The slope is the
least-squares fit of the main process's RSS against tasks run, in bytes per
1,000 tasks, over the samples after the first round (the first round warms
caches: label children, imports, allocator arenas).

Writes ``<output>.json`` (samples, slope, environment and the exact command)
and ``<output>.md`` (the same as a table); default output
``benchmarks/results/soak_memory``.  Exit status 1 if the worker's counters do
not equal the number of tasks published.

Time limits matter.  With a time limit, Celery's prefork pool schedules a
kombu timer entry for every task and cancels it when the task ends, but a
cancelled entry stays in the event loop's heap until it would have fired
(kombu 5.x ``Timer.cancel`` only flags it).  With the package's default limits
(``CELERY_TASK_SOFT_TIME_LIMIT=240``, ``CELERY_TASK_TIME_LIMIT=300``) the main
process therefore grows by a few hundred bytes per task for the first 240 s of
a busy period and then levels off at throughput x 240 s worth of entries -- the
same with or without this package.  ``--time-limit``/``--soft-time-limit`` set
other limits; short ones take that effect out of the measurement, and
``--settle`` takes one more sample after that many idle seconds.

When a worker imports this module (``CELERY_IMPORTS=benchmarks.soak_memory``)
it only registers the task ``soak.noop``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.system import children as pool_children  # noqa: E402
from csuite_async_obs import (  # noqa: E402 -- after the path set-up above
    CelerySettings,
    async_task,
    get_celery_app,
    reset_celery_app,
)
from csuite_async_obs.servers.processes import free_port, stop_process, worker_command  # noqa: E402
from csuite_async_obs.servers.redis_server import RedisServer  # noqa: E402
from csuite_async_obs.testing import Samples, wait_for  # noqa: E402

TASK = "soak.noop"
DEFAULT_OUTPUT = ROOT / "benchmarks" / "results" / "soak_memory"


@async_task(name=TASK, ignore_result=True)
def noop(index: int) -> int:
    """The soak's task: as little work as possible, so the worker's own cost shows."""
    return index


# ----------------------------------------------------------------------------- /proc


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (VmRSS), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def slope_per_1000(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of y against x, per 1,000 units of x; ``None`` under 2 points."""
    if len(points) < 2:
        return None
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    return sxy / sxx * 1000


# ----------------------------------------------------------------------------- the run


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        return Samples(response.read().decode("utf-8"))


def succeeded(url: str) -> float | None:
    return scrape(url).value("celery_task_succeeded_total", name=TASK, queue_name="celery")


def run(
    tasks: int,
    interval: int,
    concurrency: int,
    output: Path,
    command: str,
    *,
    time_limit: float | None = None,
    soft_time_limit: float | None = None,
    settle: float = 0.0,
) -> dict[str, Any]:
    """Run the soak; return the report that is also written to ``output``.json/.md."""
    defaults = CelerySettings()
    hard = defaults.task_time_limit if time_limit is None else time_limit
    soft = defaults.task_soft_time_limit if soft_time_limit is None else soft_time_limit
    workdir = Path(tempfile.mkdtemp(prefix="csuite-soak-"))
    redis = RedisServer().start()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "CSUITE_"))}
    env.update(
        CELERY_BROKER_URL=f"{redis.url}/0",
        CELERY_RESULT_BACKEND=f"{redis.url}/1",
        CELERY_IMPORTS="benchmarks.soak_memory",
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        PYTHONUNBUFFERED="1",
        CELERY_TASK_TIME_LIMIT=repr(hard),
        CELERY_TASK_SOFT_TIME_LIMIT=repr(soft),
    )
    worker_cmd = worker_command(
        pool="prefork",
        concurrency=concurrency,
        hostname=f"soak{port}@localhost",
        loglevel="WARNING",
        metrics_port=port,
        extra=["--without-gossip", "--without-mingle", "--without-heartbeat"],
    )
    log_path = workdir / "worker.log"
    log = open(log_path, "wb")  # noqa: SIM115 -- closed in the finally below
    worker = subprocess.Popen(
        worker_cmd,
        env=env,
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    # The publisher: this process's app, pointed at the private Redis.
    os.environ["CELERY_BROKER_URL"] = env["CELERY_BROKER_URL"]
    os.environ["CELERY_RESULT_BACKEND"] = env["CELERY_RESULT_BACKEND"]
    reset_celery_app()
    app = get_celery_app()
    samples: list[dict[str, Any]] = []
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    started = time.monotonic()
    try:
        wait_for(
            lambda: scrape(metrics_url).value("celery_worker_consumer_up") == 1,
            120,
            "the worker to consume",
        )

        def sample(done: int, note: str = "") -> None:
            children = sorted(pool_children(worker.pid))
            entry: dict[str, Any] = {
                "tasks": done,
                "note": note,
                "elapsed_seconds": round(time.monotonic() - started, 2),
                "main_rss_bytes": rss_bytes(worker.pid),
                "children_rss_bytes": sum(rss_bytes(pid) for pid in children),
                "children": len(children),
            }
            samples.append(entry)
            print(
                f"{done:>8} tasks  {entry['elapsed_seconds']:>7.1f}s  main "
                f"{entry['main_rss_bytes'] / 2**20:7.2f} MiB  children "
                f"{entry['children_rss_bytes'] / 2**20:7.2f} MiB",
                flush=True,
            )

        sample(0)
        published = 0
        while published < tasks:
            batch = min(interval, tasks - published)
            with app.producer_or_acquire() as producer:
                for index in range(published, published + batch):
                    app.send_task(TASK, args=(index,), producer=producer)
            published += batch
            target = published
            wait_for(
                lambda: succeeded(metrics_url) == target,  # noqa: B023 -- called at once
                max(300.0, batch / 20),
                f"{target} tasks counted",
            )
            sample(published)
        if settle > 0:
            time.sleep(settle)  # the measurement itself: memory after an idle period
            sample(published, f"after {settle:g} s idle")
        final = scrape(metrics_url)
    except BaseException:
        log.flush()
        sys.stderr.write(log_path.read_text(errors="replace")[-4000:])
        raise
    finally:
        stop_process(worker, signal.SIGTERM, 60)
        log.close()
        redis.stop()

    labels = {"name": TASK, "queue_name": "celery"}
    counters = {
        metric: final.value(f"celery_task_{metric}_total", **labels)
        for metric in ("received", "started", "succeeded", "retried", "revoked", "rejected")
    }
    counters["failed"] = final.sum("celery_task_failed_total", name=TASK)
    counters["instrumentation_errors"] = final.sum("csuite_async_obs_instrumentation_errors_total")
    after_warmup = [s for s in samples if s["tasks"] >= min(interval, tasks) and not s["note"]]
    main_slope = slope_per_1000([(s["tasks"], s["main_rss_bytes"]) for s in after_warmup])
    children_slope = slope_per_1000([(s["tasks"], s["children_rss_bytes"]) for s in after_warmup])
    report: dict[str, Any] = {
        "command": command,
        "started_at": started_at,
        "duration_seconds": round(time.monotonic() - started, 1),
        "tasks": tasks,
        "interval": interval,
        "pool": "prefork",
        "concurrency": concurrency,
        "time_limit_seconds": hard,
        "soft_time_limit_seconds": soft,
        "time_limits_from": "package defaults"
        if time_limit is None and soft_time_limit is None
        else "command line",
        "settle_seconds": settle,
        "task": TASK,
        "worker_command": shlex.join(["python", *worker_cmd[1:]]),
        "environment": {
            "python": platform.python_version(),
            "celery": version("celery"),
            "prometheus_client": version("prometheus_client"),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "samples": samples,
        "slope_fit_from_tasks": after_warmup[0]["tasks"] if after_warmup else None,
        "main_rss_slope_bytes_per_1000_tasks": main_slope,
        "children_rss_slope_bytes_per_1000_tasks": children_slope,
        "main_rss_growth_after_warmup_bytes": (
            after_warmup[-1]["main_rss_bytes"] - after_warmup[0]["main_rss_bytes"]
            if after_warmup
            else None
        ),
        "counters": counters,
        "counters_exact": all(counters[m] == tasks for m in ("received", "started", "succeeded"))
        and counters["failed"] == 0
        and counters["instrumentation_errors"] == 0,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{output}.json").write_text(json.dumps(report, indent=2) + "\n")
    Path(f"{output}.md").write_text(markdown(report))
    return report


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.2f}"


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page."""
    env = report["environment"]
    slope = report["main_rss_slope_bytes_per_1000_tasks"]
    children_slope = report["children_rss_slope_bytes_per_1000_tasks"]
    lines = [
        "# Memory soak: worker RSS over tasks run",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Worker: `{report['worker_command']}`",
        "",
        f"{report['tasks']:,} `{report['task']}` tasks through a {report['pool']} worker with "
        f"concurrency {report['concurrency']}, sampled every {report['interval']:,} tasks once "
        f"the worker had counted them all; {report['duration_seconds']} s in total. Time limits "
        f"soft {report['soft_time_limit_seconds']:g} s, hard {report['time_limit_seconds']:g} s "
        f"({report['time_limits_from']}). Python "
        f"{env['python']}, Celery {env['celery']}, prometheus_client {env['prometheus_client']}, "
        f"{env['platform']}, {env['cpus']} CPUs. Started {report['started_at']}.",
        "",
        "| tasks | elapsed (s) | main RSS (MiB) | children RSS (MiB) | children | note |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for s in report["samples"]:
        lines.append(
            f"| {s['tasks']:,} | {s['elapsed_seconds']} | {_mib(s['main_rss_bytes'])} | "
            f"{_mib(s['children_rss_bytes'])} | {s['children']} | {s['note']} |"
        )
    lines += [
        "",
        f"Least-squares slope from {report['slope_fit_from_tasks']:,} tasks on (after the "
        "first, warm-up round): main process "
        + ("n/a" if slope is None else f"**{slope:,.0f} bytes per 1,000 tasks**")
        + ", pool children (sum) "
        + ("n/a" if children_slope is None else f"{children_slope:,.0f} bytes per 1,000 tasks")
        + f". Main-process growth over that range: "
        f"{_mib(report['main_rss_growth_after_warmup_bytes'])} MiB.",
        "",
        "Time limits and memory: for every task with a time limit, Celery's prefork pool "
        "schedules a kombu timer entry and cancels it when the task ends, but a cancelled entry "
        "stays in the event loop's heap until it would have fired (kombu 5.x `Timer.cancel` only "
        "flags it; celery/celery#5200). The main process therefore grows by a few hundred bytes "
        f"per task for the first {report['soft_time_limit_seconds']:g} s (the soft limit) of a "
        "busy period and then levels off, with or without this package; a run shorter than the "
        "soft limit shows that growth as a straight line. Short limits take it out of the "
        "measurement and leave the instrumentation's own per-task cost.",
        "",
        "Worker counters at the end: "
        + ", ".join(f"{k} {v:g}" for k, v in report["counters"].items() if v is not None)
        + (" (exact)." if report["counters_exact"] else " (NOT equal to the tasks published)."),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks to run (100000)")
    parser.add_argument(
        "--interval", type=int, default=5_000, help="tasks between two RSS samples (5000)"
    )
    parser.add_argument("--concurrency", type=int, default=2, help="pool processes (2)")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="CELERY_TASK_TIME_LIMIT for the worker (package default)",
    )
    parser.add_argument(
        "--soft-time-limit",
        type=float,
        default=None,
        help="CELERY_TASK_SOFT_TIME_LIMIT for the worker (package default)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="seconds to wait idle before one last sample (0: none)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="path of the results without suffix (benchmarks/results/soak_memory)",
    )
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.interval < 1 or args.concurrency < 1:
        parser.error("--tasks, --interval and --concurrency must be positive")
    command = shlex.join(["python", *(sys.argv if argv is None else [__file__, *argv])])
    # SIGTERM ends the run through the clean-up path (worker and Redis stopped).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    report = run(
        args.tasks,
        args.interval,
        args.concurrency,
        args.output,
        command,
        time_limit=args.time_limit,
        soft_time_limit=args.soft_time_limit,
        settle=args.settle,
    )
    slope = report["main_rss_slope_bytes_per_1000_tasks"]
    print(
        f"main-process RSS slope: {'n/a' if slope is None else f'{slope:,.0f}'} bytes per 1,000 "
        f"tasks; results in {args.output}.json and .md"
    )
    return 0 if report["counters_exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
