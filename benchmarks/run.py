"""Run the benchmark suite: ``python -m benchmarks.run [--quick] [--out DIR]``.

Starts a private ``redis-server`` on loopback, runs every section and writes
``results.json``, ``results.md`` and PNG charts into ``--out`` (default
``benchmarks/results/``; there the table is also copied into
``benchmarks/README.md``).  ``--quick`` runs every case with a few hundred
tasks, for development and for the test suite; the full run fits in 30 minutes
on 2 cores.  A case or section that cannot run is reported with its reason.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from csuite_async_obs.servers.redis_server import RedisServer

from .ab import Comparison, Item, RoundResult, run_pool
from .broker import Broker
from .memory import run_memory
from .report import write_results
from .scrape import fleet_table, run_names, run_series
from .system import machine_info

__all__ = ["PROFILES", "Profile", "main"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SLEEPS = {"sleep1ms": 0.001, "sleep10ms": 0.01}
SECTIONS = (
    "hookpath", "publish", "queuedepth", "rabbitmq", "ab", "sleep", "scrape", "series", "memory"
)  # fmt: skip
README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"


@dataclass(frozen=True)
class Profile:
    """How much of everything a run does."""

    name: str
    ab_tasks: int
    ab_pairs: dict[str, dict[str, int]]
    legs: int
    sleep_tasks: dict[str, int]
    sleep_pairs: int
    sleep_pools: tuple[str, ...]
    hook_tasks: int
    hook_blocks: int
    publish_calls: int
    publish_block: int
    depth_polls: int
    rabbitmq_reads: int
    scrape_names: tuple[int, ...]
    scrapes: int
    churn: tuple[int, ...]
    series_queues: int
    series_exceptions: int
    memory_tasks: int
    memory_every: int
    budget_minutes: float
    idle_probe: float = 0.0
    pools: dict[str, int] = field(default_factory=lambda: {"solo": 1, "prefork": 2, "threads": 2})


_ALL_ONE = {c: 1 for c in ("plain", "package", "hooks", "events", "flower", "otel")}

PROFILES = {
    "quick": Profile(
        name="quick",
        ab_tasks=150,
        ab_pairs={"solo": _ALL_ONE, "prefork": _ALL_ONE, "threads": _ALL_ONE},
        legs=1,
        sleep_tasks={"sleep1ms": 40, "sleep10ms": 10},
        sleep_pairs=1,
        sleep_pools=("solo", "prefork"),
        hook_tasks=8_000,
        hook_blocks=4,
        publish_calls=400,
        publish_block=100,
        depth_polls=5,
        rabbitmq_reads=5,
        scrape_names=(10, 100, 500),
        scrapes=3,
        churn=(0, 4),
        series_queues=3,
        series_exceptions=3,
        memory_tasks=600,
        memory_every=200,
        budget_minutes=0,
        idle_probe=1.0,
    ),
    "full": Profile(
        name="full",
        ab_tasks=3_000,
        ab_pairs={
            "solo": {"plain": 5, "package": 5, "hooks": 3, "events": 3, "flower": 3, "otel": 3},
            "prefork": {"plain": 5, "package": 5, "hooks": 3, "events": 3, "flower": 3, "otel": 3},
            "threads": {"plain": 3, "package": 3, "hooks": 2, "events": 2, "flower": 2, "otel": 2},
        },
        legs=2,
        sleep_tasks={"sleep1ms": 1_000, "sleep10ms": 300},
        sleep_pairs=2,
        sleep_pools=("solo", "prefork"),
        hook_tasks=100_000,
        hook_blocks=50,
        publish_calls=10_000,
        publish_block=500,
        depth_polls=50,
        rabbitmq_reads=100,
        scrape_names=(10, 100, 500),
        scrapes=100,
        churn=(0, 1_000),
        series_queues=5,
        series_exceptions=10,
        memory_tasks=100_000,
        memory_every=5_000,
        budget_minutes=30,
        idle_probe=5.0,
    ),
}


class Budget:
    """The run's time budget: sections that would start after it are reported as skipped."""

    def __init__(self, minutes: float) -> None:
        self.start = time.monotonic()
        self.minutes = minutes

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def exhausted(self) -> str | None:
        if self.minutes and self.elapsed() > self.minutes * 60 * 0.95:
            return f"skipped: the {self.minutes:.0f}-minute budget ran out"
        return None


def _git() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        status = subprocess.run(
            # What the runs write themselves does not make a checkout dirty.
            [
                "git",
                "status",
                "--porcelain",
                "--",
                ".",
                ":!benchmarks/results",
                ":!benchmarks/README.md",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    changed = [line for line in status.splitlines() if line.strip()]
    return f"{head} ({'clean checkout' if not changed else f'{len(changed)} uncommitted paths'})"


def stamp(command: str, mode: str, redis_binary: str | None) -> dict[str, Any]:
    """What a results file says of its run: date, command, mode, commit, package digest,
    machine and interpreter."""
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "mode": mode,
        "git": _git(),
        "package_digest": package_digest(),
        "machine": machine_info(redis_binary),
        "python_executable": sys.executable,
    }


def package_digest() -> str:
    """A digest of the package's source files: which code a result was measured on."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "csuite_async_obs").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _inproc(name: str, args: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.inproc", name, *args]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-1500:]}"}
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _log(message: str, budget: Budget) -> None:
    print(f"[{budget.elapsed() / 60:5.1f} min] {message}", flush=True)


def run(
    profile: Profile, out: Path, sections: tuple[str, ...], command: str, tasks: int | None = None
) -> dict[str, Any]:
    budget = Budget(profile.budget_minutes)
    log_dir = Path(tempfile.mkdtemp(prefix="csuite-bench-logs-"))
    server = RedisServer()
    results: dict[str, Any] = {
        "stamp": stamp(command, profile.name, server.binary),
        "config": {"profile": profile.__dict__, "sections": list(sections)},
        "ab": [],
    }
    ab_tasks = tasks or profile.ab_tasks
    failed = False
    server.start()
    broker = Broker(server)
    try:
        raw = json.dumps(broker.prototype("bench.noop", ()))  # one real message, via Celery
        message_file = log_dir / "message.json"
        payload = json.loads(raw)
        payload["properties"]["delivery_info"]["routing_key"] = "bench"
        message_file.write_text(json.dumps(payload))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "CSUITE_"))}
        env.update(
            PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
            CELERY_BROKER_URL=broker.url(8),
            CELERY_RESULT_BACKEND=broker.url(9),
            CSUITE_METRICS_PORT="0",
        )

        def section(name: str, fn: Callable[[], Any], key: str | None = None) -> None:
            nonlocal failed
            if name not in sections:
                results[key or name] = {"skipped": "not selected (--only)"}
                return
            reason = budget.exhausted()
            if reason:
                results[key or name] = {"skipped": reason}
                return
            _log(f"{name} ...", budget)
            started = time.monotonic()
            try:
                value = fn()
                if value is not None:
                    results[key or name] = value
            except Exception as exc:  # noqa: BLE001 -- a section's failure is a result
                failed = True
                traceback.print_exc()
                results[key or name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            _log(f"{name} done in {time.monotonic() - started:.0f} s", budget)

        section(
            "hookpath",
            lambda: _inproc(
                "hookpath",
                [
                    "--message-file",
                    str(message_file),
                    "--tasks",
                    str(profile.hook_tasks),
                    "--blocks",
                    str(profile.hook_blocks),
                    "--core",
                    "1",
                ],
                env,
                900,
            ),
        )

        def publish() -> dict[str, Any]:
            args = [
                "--calls",
                str(profile.publish_calls),
                "--block",
                str(profile.publish_block),
                "--core",
                "1",
            ]
            memory_env = dict(
                env, CELERY_BROKER_URL="memory://", CELERY_RESULT_BACKEND="disabled://"
            )
            return {
                "redis": _inproc("publish", args, env, 900),
                "memory": _inproc("publish", args, memory_env, 900),
            }

        section("publish", publish)
        section(
            "queuedepth",
            lambda: _inproc(
                "queuedepth",
                [
                    "--broker",
                    broker.url(7),
                    "--polls",
                    str(profile.depth_polls),
                    "--message-file",
                    str(message_file),
                ],
                env,
                300,
            ),
        )

        section(
            "rabbitmq",
            lambda: _inproc(
                "rabbitmqdepth",
                ["--queues", "200", "--polls", str(profile.rabbitmq_reads)],
                env,
                300,
            ),
        )

        def on_round(comp: Comparison, r: RoundResult) -> None:
            _log(
                f"  {comp.case:8s} {comp.pool:8s} {comp.task:9s} round {len(comp.rounds)}: "
                f"cpu {r.cpu_plain:.2f}s / {r.cpu_case:.2f}s -> {r.cpu_ratio:.3f}",
                budget,
            )

        def ab() -> None:
            # One run per pool: the plain worker and each case worker are
            # started once per leg and serve every task kind of their case.
            noop = broker.template(ab_tasks)
            for pool, concurrency in profile.pools.items():
                items = []
                if "ab" in sections:
                    items += [
                        Item(case, "noop", noop, ab_tasks, pairs)
                        for case, pairs in profile.ab_pairs[pool].items()
                    ]
                if "sleep" in sections and pool in profile.sleep_pools:
                    for label, count in profile.sleep_tasks.items():
                        seconds = SLEEPS[label]
                        template = broker.template(count, [("bench.sleep", (seconds,))])
                        pairs = profile.sleep_pairs
                        items.append(Item("package", label, template, count, pairs, seconds + 0.02))
                if not items:
                    continue
                comparisons = run_pool(
                    broker,
                    pool,
                    concurrency,
                    items,
                    profile.legs,
                    log_dir,
                    on_round=on_round,
                    should_stop=budget.exhausted,
                    idle_probe=profile.idle_probe,
                )
                results["ab"] += [c.to_json() for c in comparisons]

        if "ab" in sections or "sleep" in sections:
            section("ab" if "ab" in sections else "sleep", ab, "ab_status")
        _floor(results)

        scrape: dict[str, Any] = {"churn_names": max(profile.scrape_names)}
        results["scrape"] = scrape

        def names() -> None:
            by_names, by_churn = run_names(
                broker,
                log_dir,
                list(profile.scrape_names),
                profile.scrapes,
                max(profile.scrape_names),
                list(profile.churn),
                budget.exhausted,
            )
            scrape["by_names"] = by_names
            scrape["by_churn"] = by_churn

        def series() -> None:
            scrape["series"] = run_series(
                broker, log_dir, profile.series_queues, profile.series_exceptions
            )
            scrape["fleet"] = fleet_table(scrape["series"])

        section("scrape", names, key="scrape_status")
        section("series", series, key="series_status")
        section(
            "memory",
            lambda: run_memory(broker, log_dir, profile.memory_tasks, profile.memory_every),
        )
        results["config"]["ab_note"] = _ab_note(results, ab_tasks)
    finally:
        broker.close()
        server.stop()
    results["stamp"]["duration_s"] = budget.elapsed()
    end_digest = package_digest()
    if end_digest != results["stamp"]["package_digest"]:
        results["stamp"]["warning"] = (
            f"the package's source changed during the run ({results['stamp']['package_digest']} "
            f"at the start, {end_digest} at the end): workers started at different times ran "
            "different code"
        )
    _merge_separate_runs(results, out)
    write_results(results, out)
    _log(f"results in {out}", budget)
    if failed:
        print(f"worker logs kept in {log_dir}", flush=True)
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
    return results


def _merge_separate_runs(results: dict[str, Any], out: Path) -> None:
    """Fold the runs made apart into ``out``'s subfolders (churn, RabbitMQ) into ``results``."""
    digest = results["stamp"].get("package_digest", "")
    long = _long_churn(out, digest)
    if long is not None:
        results["scrape_long"] = long
    own = results.get("rabbitmq") or {}
    if not own.get("available") or "source" in own:
        separate = _separate_rabbitmq(out, digest)
        if separate is not None:
            results["rabbitmq"] = separate


def _separate_rabbitmq(out: Path, digest: str) -> dict[str, Any] | None:
    """The RabbitMQ read of a separate run in ``out/rabbitmq`` (see the README), with its source.

    Used where ``out``'s own run has no RabbitMQ measurement (made before the
    section existed, or with ``--only`` without it).
    """
    path = out / "rabbitmq" / "results.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    section = data.get("rabbitmq") or {}
    if not section.get("available"):
        return None
    stamp = data["stamp"]
    source = f"`{stamp['command']}` on {stamp['date']}, git {stamp['git']}"
    if stamp.get("package_digest") != digest:
        source += f", package digest {stamp.get('package_digest', 'unknown')} (not this run's)"
    return {**section, "source": source}


def _long_churn(out: Path, digest: str) -> dict[str, Any] | None:
    """Churn steps of a separate long run written into ``out/churn`` (see the README).

    They count towards the goal only if that run measured the same package
    source (same digest); otherwise they are shown, marked as another build.
    """
    path = out / "churn" / "results.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    scrape = data.get("scrape") or {}
    if not scrape.get("by_churn"):
        return None
    stamp = data["stamp"]
    same = stamp.get("package_digest") == digest
    source = f"`{stamp['command']}` on {stamp['date']}, git {stamp['git']}"
    if not same:
        source += (
            f", package digest {stamp.get('package_digest', 'unknown')} -- NOT the code of this "
            f"run ({digest}): shown, not used for the goal; re-run it"
        )
    return {
        "source": source,
        "same_package": same,
        "churn_names": scrape.get("churn_names", 500),
        "by_churn": scrape["by_churn"],
    }


def _plain_cpu(results: dict[str, Any], pool: str) -> float | None:
    """Plain worker CPU per no-op task in ``pool``, over every round of every case."""
    cpu = tasks = 0.0
    for comp in results.get("ab", []):
        if comp["pool"] == pool and comp["task"] == "noop":
            for r in comp["rounds"]:
                cpu += r["cpu_plain"]
                tasks += r["tasks"]
    return cpu / tasks * 1e6 if tasks else None


def _floor(results: dict[str, Any]) -> None:
    hook = results.get("hookpath") or {}
    cost = (hook.get("package_cost_us") or {}).get("value")
    if cost is None:
        return
    hook["floor"] = {}
    for pool in ("solo", "prefork", "threads"):
        plain = _plain_cpu(results, pool)
        if plain:
            hook["floor"][pool] = {
                "package_us": cost,
                "plain_cpu_us": plain,
                "ratio_pct": cost / plain * 100,
            }


def _ab_note(results: dict[str, Any], tasks: int) -> str:
    rounds = [r for c in results.get("ab", []) for r in c["rounds"] if c["task"] == "noop"]
    if not rounds or tasks >= 20_000:
        return ""
    per_task = sum(max(r["wall_plain"], r["wall_case"]) / r["tasks"] for r in rounds) / len(rounds)
    return (
        f"Rounds of {tasks:,} tasks per worker, not the issue's 20,000: a round took "
        f"{per_task * 1e3:.2f} ms of wall time per task here, so the {len(rounds)} no-op rounds of "
        f"this run would take about {per_task * 20_000 * len(rounds) / 60:.0f} minutes at 20,000 "
        "tasks, beyond the 30-minute budget; `--tasks 20000` runs the issue's size."
    )


def _update_readme(out: Path) -> None:
    readme = HERE / "README.md"
    if not readme.exists():
        return
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return
    table = (out / "results.md").read_text()
    # Links in the results file are relative to results/.
    table = table.replace("](ab_cost.png)", "](results/ab_cost.png)")
    table = table.replace("](scrape.png)", "](results/scrape.png)")
    table = table.replace("](memory.png)", "](results/memory.png)")
    table = table.replace("# Benchmark results\n", "", 1).replace("\n## ", "\n### ")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{table.strip()}\n{README_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a few seconds per case")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="output folder")
    parser.add_argument("--only", help=f"comma-separated sections of: {', '.join(SECTIONS)}")
    parser.add_argument("--tasks", type=int, help="tasks per worker per A/B round")
    parser.add_argument("--churn", help="child restarts at which to scrape, e.g. 0,1000,10000")
    parser.add_argument("--budget-minutes", type=float, help="skip what would start after this")
    parser.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: re-judge the goals and rewrite results.md and the charts "
        "from --out's results.json (after a change to the report)",
    )
    args = parser.parse_args(argv)
    if args.render:
        out = args.out.resolve()
        results = json.loads((out / "results.json").read_text())
        _merge_separate_runs(results, out)
        write_results(results, out)
        if out == (HERE / "results").resolve():
            _update_readme(out)
        return 0
    profile = PROFILES["quick" if args.quick else "full"]
    overrides: dict[str, Any] = {}
    if args.churn:
        overrides["churn"] = tuple(int(x) for x in args.churn.split(","))
    if args.budget_minutes is not None:
        overrides["budget_minutes"] = args.budget_minutes
    if overrides:
        profile = Profile(**{**profile.__dict__, **overrides})
    sections = tuple(s.strip() for s in args.only.split(",")) if args.only else SECTIONS
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    shown = [a for a in (argv if argv is not None else sys.argv[1:])]
    command = "python -m benchmarks.run" + (" " + shlex.join(shown) if shown else "")
    out = args.out.resolve()
    run(profile, out, sections, command, args.tasks)
    if out == (HERE / "results").resolve():
        _update_readme(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
