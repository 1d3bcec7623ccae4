"""A real Prometheus scraping a fleet of simulated workers: what each metrics profile costs it.

A few forked processes serve the targets, each a slice of the workers on a port
of its own (:class:`~benchmarks.fleet_server.FleetServer`); Prometheus tells the
targets apart by a URL parameter set by relabelling (static targets
``w0001``..``wNNNN`` grouped by shard; ``__address__`` -> ``__param_worker``,
``instance`` <- the worker's name, ``__address__`` <- the shard's ``host:port``,
a hidden label of the target group).  Each simulated worker is its own :class:`~csuite_async_obs.metrics.task_metrics.TaskMetrics` on
its own ``CollectorRegistry`` with ``--names`` task names primed, served by the
package's own renderer: text for the classic cases, ``render_protobuf()`` when
Prometheus asks for protobuf.  Values move: on every scrape the worker first runs
``--tasks-per-scrape`` tasks (received, queue wait, started, runtime, an
occasional failure).

The scrape interval of a cell is ``--interval`` unless the fleet server could
not keep up: from the CPU a scrape of that case cost at the previous size, a
cell whose server would need more than ``--server-cores`` cores scrapes at the
first multiple of ``--interval`` that fits (the cell records it and why).  What
is measured per series (head series, RSS, rule evaluation) does not depend on it.

Cases, side by side:

* ``default``: the default profile, classic histograms, text.
* ``full``: the full profile, classic histograms, text.
* ``native``: the default profile with native histograms (protobuf); Prometheus
  runs with ``--enable-feature=native-histograms`` and the native rules.
* ``peer``: the shapes of the most used event-based exporter, made here with
  prometheus_client: per task name 7 zero-initialised counters and two 15-bucket
  histograms, with their ``_created`` series (50 series per name).  Its names are
  prefixed ``celery_peer_`` so that the package's rules, loaded as for
  ``default``, select nothing of it: its rule time is that of rules over nothing.

Everything is measured from Prometheus itself (a self-scrape job): head series,
RSS, ``scrape_duration_seconds`` and ``scrape_samples_scraped`` of the fleet,
``prometheus_rule_group_last_duration_seconds`` by group; the fleet server adds
the bytes of each response.

The same command first judges the scrape goal on a real worker (prefork, 4
children, ``--max-tasks-per-child 1``, a private ``redis-server``): ``/metrics``
with ``--scrape-names`` task names, scraped plain and gzipped at each step of
``--churn`` child restarts (:func:`benchmarks.scrape.run_names`), and the series
count at every step.  Results go to ``results/fleet/results.{json,md}``.

    python -m benchmarks.fleet                 # 10, 100, 1000 workers x 50 names
    python -m benchmarks.fleet --quick         # 5 workers x 5 names, 20 names x 8 restarts
    python -m benchmarks.fleet --churn ''        # the fleet only, no scrape goal
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from csuite_async_obs.monitoring.config import MonitoringConfig
from csuite_async_obs.monitoring.export import write_rules
from csuite_async_obs.servers.prometheus_server import PrometheusServer
from csuite_async_obs.servers.redis_server import RedisServer

from .broker import Broker
from .fleet_server import SHARD_LABEL, FleetServer
from .fleet_workers import Worker, served_series, task_names, worker_names
from .run import stamp
from .scrape import run_names
from .system import rss_bytes

HERE = Path(__file__).resolve().parent
CASES = ("default", "full", "native", "peer")
#: Series Prometheus adds to every target: up, scrape_duration_seconds,
#: scrape_samples_scraped, scrape_samples_post_metric_relabeling, scrape_series_added.
SYNTHETIC_PER_TARGET = 5
#: Multiples of ``--interval`` a cell may scrape at when the fleet server cannot keep up.
INTERVAL_STEPS = (1, 2, 3, 6, 9, 12)
#: Scrapes of every target a cell measures at least, whatever its interval.
MIN_SCRAPES = 4


def series_shape(case: str, names: int) -> dict[str, int]:
    """Series per task name and fixed series per target, from what the renderer serves
    for a worker with one and with two names (Prometheus's synthetic series included)."""
    native = case == "native"
    one = served_series(Worker(case, task_names(1), 0, 0.0), native)
    two = served_series(Worker(case, task_names(2), 0, 0.0), native)
    per_task = two - one
    fixed = one - per_task + SYNTHETIC_PER_TARGET
    return {"per_task": per_task, "fixed_per_target": fixed, "per_target": per_task * names + fixed}


# ---------------------------------------------------------------- Prometheus


class FleetPrometheus(PrometheusServer):
    """A Prometheus whose ``fleet`` job relabels static worker names onto the shards
    that serve them, plus a self-scrape job ``prometheus``."""

    def __init__(
        self,
        server: FleetServer,
        rule_files: Sequence[Path],
        interval: float,
        features: Sequence[str],
    ) -> None:
        super().__init__(
            {"fleet": list(server.ids)},
            rule_files,
            scrape_interval=interval,
            evaluation_interval=interval,
            features=features,
        )
        self.fleet_groups = server.static_configs()

    def config(self, rule_paths: Sequence[Path]) -> dict[str, Any]:
        config = super().config(rule_paths)
        fleet = config["scrape_configs"][0]
        fleet["metrics_path"] = "/metrics"
        fleet["static_configs"] = self.fleet_groups
        fleet["relabel_configs"] = [
            {"source_labels": ["__address__"], "target_label": "__param_worker"},
            {"source_labels": ["__param_worker"], "target_label": "instance"},
            {"source_labels": [SHARD_LABEL], "target_label": "__address__"},
        ]
        config["scrape_configs"].append(
            {
                "job_name": "prometheus",
                "static_configs": [{"targets": [f"127.0.0.1:{self.port}"]}],
            }
        )
        return config


# ---------------------------------------------------------------- one cell


@dataclass
class Settings:
    sizes: tuple[int, ...] = (10, 100, 1000)
    names: int = 50
    cases: tuple[str, ...] = CASES
    interval: float = 15.0
    duration: float = 180.0
    tasks_per_scrape: int = 10
    failure_ratio: float = 0.05
    rss_budget_gib: float = 8.0
    budget_minutes: float = 60.0
    #: Processes serving the fleet, and the cores they may use in all (Prometheus
    #: shares the machine: on 2 cores it keeps the rest).
    server_processes: int = 2
    server_cores: float = 0.5
    #: The scrape goal's worker: task names, child restarts at which it is scraped, scrapes each.
    scrape_names: int = 500
    churn: tuple[int, ...] = (0, 10_000)
    scrapes: int = 200
    mode: str = "full"
    extra: dict[str, Any] = field(default_factory=dict)


def _quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "median": None, "p99": None, "max": None}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return {"n": len(ordered), "median": statistics.median(ordered), "p99": p99, "max": ordered[-1]}


#: Seconds a query may take: a Prometheus ingesting a large fleet on 2 shared cores is slow.
QUERY_TIMEOUT = 180.0


def _query(prom: PrometheusServer, expr: str) -> list[dict[str, Any]]:
    data = prom.api("query", {"query": expr}, timeout=QUERY_TIMEOUT)
    if data["resultType"] in ("scalar", "string"):
        return [{"metric": {}, "value": data["result"]}]
    return list(data["result"])


def _value(prom: PrometheusServer, expr: str) -> float | None:
    result = _query(prom, expr)
    if not result:
        return None
    number = float(result[0]["value"][1])
    return None if math.isnan(number) else number


def _range_values(prom: PrometheusServer, expr: str, window: float) -> list[dict[str, Any]]:
    """Raw samples of ``expr`` over the last ``window`` seconds, per series."""
    return _query(prom, f"{expr}[{max(1, round(window))}s]")


def _values(series: list[dict[str, Any]]) -> list[float]:
    return [float(v) for s in series for _, v in s.get("values", [])]


def _rules(case: str, folder: Path) -> list[Path]:
    histograms = "native" if case == "native" else "classic"
    return write_rules(MonitoringConfig(histograms=histograms), folder)


def cell_interval(
    size: int, settings: Settings, measured: list[dict[str, Any]]
) -> tuple[float, str | None]:
    """The scrape interval of a cell of ``size`` workers, and why when it is not
    ``settings.interval``: the first step whose round of scrapes the fleet server can
    render within ``settings.server_cores`` (else the longest step, and the reason says
    so), judged from the CPU a scrape of the same case cost in the last cell measured
    (sizes run in the order given: ascending, the previous size)."""
    usable = [c for c in measured if c.get("server_cpu_s_per_scrape")]
    if not usable:
        return settings.interval, None
    last = usable[-1]
    per_scrape = float(last["server_cpu_s_per_scrape"])
    need = per_scrape * size
    for step in INTERVAL_STEPS:
        interval = settings.interval * step
        if need / interval <= settings.server_cores:
            break
    if interval == settings.interval:
        return interval, None
    still = need / interval
    return interval, (
        f"scraped every {interval:g} s, not {settings.interval:g}: a round of {size:,} scrapes "
        f"costs the fleet server about {need:.1f} CPU s ({per_scrape * 1000:.1f} ms a scrape "
        f"at {last['workers']:,} workers), over {settings.server_cores:g} cores at "
        f"{settings.interval:g} s"
        + (
            f"; still {still:.2f} cores at {interval:g} s, the longest step"
            if still > settings.server_cores
            else ""
        )
    )


def run_cell(
    case: str,
    workers_count: int,
    settings: Settings,
    log: Callable[[str], None],
    interval: float | None = None,
) -> dict[str, Any]:
    """Start the fleet and a Prometheus, let it scrape for the cell's duration, measure."""
    interval = interval or settings.interval
    duration = max(settings.duration, MIN_SCRAPES * interval)
    started = time.monotonic()
    server = FleetServer(
        case,
        worker_names(workers_count),
        task_names(settings.names),
        failure_ratio=settings.failure_ratio,
        tasks_per_scrape=settings.tasks_per_scrape,
        processes=settings.server_processes,
    ).start()
    try:
        return _run_on(server, case, workers_count, settings, log, interval, duration, started)
    finally:
        server.stop()


def _run_on(
    server: FleetServer,
    case: str,
    workers_count: int,
    settings: Settings,
    log: Callable[[str], None],
    interval: float,
    duration: float,
    started: float,
) -> dict[str, Any]:
    shape = series_shape(case, settings.names)
    result: dict[str, Any] = {
        "case": case,
        "workers": workers_count,
        "names": settings.names,
        "shape": shape,
        "prime_s": round(time.monotonic() - started, 2),
        "interval_s": interval,
        "duration_s": duration,
        "server_processes": len(server.addresses),
        "rules": "package rules (classic)" if case != "native" else "package rules (native)",
    }
    if case == "peer":
        result["rules"] = (
            "the package's default (classic) rules: they select the package's metric names, "
            "none of the peer's, so they evaluate over nothing"
        )
    with tempfile.TemporaryDirectory(prefix="csuite-fleet-rules-") as tmp:
        rules = _rules(case, Path(tmp))
        prom = FleetPrometheus(
            server, rules, interval, ["native-histograms"] if case == "native" else []
        )
        budget = settings.rss_budget_gib * 2**30
        stopped: str | None = None
        peak_rss = 0
        try:
            prom.start()
            assert prom.process is not None
            pid = prom.process.pid
            deadline = time.monotonic() + interval * 3 + 30
            up = 0
            while time.monotonic() < deadline:
                up = int(_value(prom, 'count(up{job="fleet"} == 1)') or 0)
                if up == workers_count:
                    break
                time.sleep(min(1.0, interval / 4))
            result["targets_up_at_start"] = up
            window_start = time.time()
            before = server.stats()
            end = time.monotonic() + duration
            while time.monotonic() < end:
                rss = rss_bytes(pid)
                peak_rss = max(peak_rss, rss)
                if rss > budget:
                    stopped = (
                        f"stopped after {time.time() - window_start:.0f} s: Prometheus RSS "
                        f"{rss / 2**30:.2f} GiB passed the {settings.rss_budget_gib:g} GiB budget"
                    )
                    break
                time.sleep(min(1.0, interval / 4))
            after = server.stats()
            window = max(interval, time.time() - window_start)
            # The fleet server's CPU (every shard's work and renders) over the window.
            cpu = after["cpu_s"] - before["cpu_s"]
            scrapes = sum(n for _, n in after["bytes"].values()) - sum(
                n for _, n in before["bytes"].values()
            )
            result["server_cpu_per_interval_s"] = round(cpu / window * interval, 3)
            result["server_cores"] = round(cpu / window, 3)
            result["server_cpu_s_per_scrape"] = round(cpu / scrapes, 6) if scrapes else None
            result.update(_measure(prom, window, workers_count, shape))
            result["peak_rss_sampled_bytes"] = peak_rss
            result["window_s"] = round(window, 1)
            result["stopped"] = stopped
            final = server.stats(final=True)
            # What the renderer serves now, plus Prometheus's synthetic series per target.
            result["served_series"] = final["served_series"] + SYNTHETIC_PER_TARGET * workers_count
            result["expected_fleet_series"] = workers_count * shape["per_target"]
            for key in ("body_bytes", "body_gzip1_bytes", "format"):
                result[key] = final[key]
            result["responses"] = {
                kind: {"count": n, "mean_bytes": round(total / n) if n else None}
                for kind, (total, n) in final["bytes"].items()
            }
            result["server_errors"] = final["errors"]
        finally:
            prom.stop()
    result["cell_s"] = round(time.monotonic() - started, 1)
    log(
        f"{case:8s} {workers_count:5d} workers: fleet series {result.get('fleet_series')}"
        f" (expected {result.get('expected_fleet_series')}), RSS "
        f"{(result.get('rss_bytes') or 0) / 2**20:.0f} MiB, every {interval:g} s, "
        f"server {result.get('server_cores')} cores, {result['cell_s']} s"
    )
    return result


def _rule_group(series: Mapping[str, Any]) -> str:
    """The group name of a ``prometheus_rule_group_*`` series (its label is ``file;name``)."""
    return str(series["metric"].get("rule_group", "?")).split(";", 1)[-1]


def _measure(
    prom: PrometheusServer, window: float, workers: int, shape: dict[str, int]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["head_series"] = _value(prom, 'prometheus_tsdb_head_series{job="prometheus"}')
    # What the targets serve, not the recording rules' outputs and alerts that keep job="fleet".
    out["fleet_series"] = _value(
        prom, 'count({job="fleet", __name__!~".*:.*", __name__!~"ALERTS(_FOR_STATE)?"})'
    )
    out["rule_output_series"] = _value(
        prom,
        '(count({__name__=~".*:.*"}) or vector(0))'
        ' + (count({__name__=~"ALERTS(_FOR_STATE)?"}) or vector(0))',
    )
    out["rss_bytes"] = _value(prom, 'process_resident_memory_bytes{job="prometheus"}')
    out["rss_max_bytes"] = _value(
        prom, f'max_over_time(process_resident_memory_bytes{{job="prometheus"}}[{round(window)}s])'
    )
    out["targets_up"] = _value(prom, 'count(up{job="fleet"} == 1)')
    out["scrapes_failed"] = _value(
        prom, f'sum(count_over_time((up{{job="fleet"}} == 0)[{round(window)}s:]))'
    )
    durations = _values(_range_values(prom, 'scrape_duration_seconds{job="fleet"}', window))
    out["scrape_duration_s"] = _quantiles(durations)
    samples = _values(_range_values(prom, 'scrape_samples_scraped{job="fleet"}', window))
    out["scrape_samples"] = {
        "min": min(samples) if samples else None,
        "max": max(samples) if samples else None,
    }
    groups: dict[str, dict[str, float | None]] = {}
    for series in _range_values(prom, "prometheus_rule_group_last_duration_seconds", window):
        groups[_rule_group(series)] = _quantiles([float(v) for _, v in series["values"]])
    out["rule_groups_s"] = dict(sorted(groups.items()))
    # Per round of the global evaluation interval (the shortest): a group with a longer
    # interval of its own (recording.long, 1m) counts the share of it one round carries.
    intervals = {
        _rule_group(series): float(series["value"][1])
        for series in prom.query("prometheus_rule_group_interval_seconds")
    }
    shortest = min(intervals.values(), default=1.0)
    out["rule_group_intervals_s"] = dict(sorted(intervals.items()))
    out["rule_eval_total_median_s"] = sum(
        (g["median"] or 0.0) * shortest / intervals.get(name, shortest)
        for name, g in groups.items()
    )
    out["rule_iterations_missed"] = _value(
        prom, "sum(prometheus_rule_group_iterations_missed_total)"
    )
    return out


# ---------------------------------------------------------------- the run


def run(settings: Settings, out: Path, command: str) -> dict[str, Any]:
    t0 = time.monotonic()

    def log(message: str) -> None:
        print(f"[{(time.monotonic() - t0) / 60:5.1f} min] {message}", flush=True)

    results: dict[str, Any] = {
        "stamp": stamp(command, settings.mode, None),
        "config": asdict(settings),
        "cells": [],
    }
    if settings.churn:
        log(
            f"scrape goal: {settings.scrape_names} task names, churn {list(settings.churn)}, "
            f"{settings.scrapes} scrapes a step"
        )
        try:
            results["scrape"] = run_scrape_goal(settings, log)
        except Exception as exc:  # noqa: BLE001 -- recorded in the table, the fleet goes on
            log(f"scrape goal: failed: {exc!r}")
            results["scrape"] = {"error": f"failed: {exc!r}"[:2000]}
        write(results, out, t0)
    # The time budget is the fleet's own: the scrape goal runs before it, unbudgeted.
    fleet_t0 = time.monotonic()
    # Size by size, every case at one size before any at the next: a budget that runs
    # out cuts the largest fleets, not a whole case.
    measured: dict[str, list[dict[str, Any]]] = {case: [] for case in settings.cases}
    stopped: dict[str, str] = {}
    for size in settings.sizes:
        for case in settings.cases:
            reason: str | None
            interval, slower = cell_interval(size, settings, measured[case])
            if case in stopped:
                reason = f"skipped: a smaller fleet was already {stopped[case]}"
            else:
                reason = _skip_reason(
                    size, settings, measured[case], time.monotonic() - fleet_t0, interval
                )
            if reason:
                log(f"{case} {size} workers: {reason}")
                results["cells"].append({"case": case, "workers": size, "skipped": reason})
                continue
            try:
                if slower:
                    log(f"{case} {size} workers: {slower}")
                cell = run_cell(case, size, settings, log, interval)
                cell["interval_reason"] = slower
            except Exception as exc:  # noqa: BLE001 -- recorded in the table, the run goes on
                log(f"{case} {size} workers: failed: {exc!r}")
                cell = {"case": case, "workers": size, "skipped": f"failed: {exc!r}"[:300]}
                results["cells"].append(cell)
                stopped[case] = f"failed at {size} workers"
                write(results, out, t0)
                continue
            results["cells"].append(cell)
            write(results, out, t0)
            measured[case].append(cell)
            if cell.get("stopped"):
                stopped[case] = cell["stopped"]
    write(results, out, t0)
    log(f"results in {out}")
    return results


def write(results: dict[str, Any], out: Path, t0: float) -> None:
    """results.json and results.md as they stand (after every cell, so a crash keeps them)."""
    results["stamp"]["duration_s"] = round(time.monotonic() - t0, 1)
    results["per_1000"] = per_thousand(results["cells"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(render_markdown(results))


def _cell_seconds(
    settings: Settings, size: int, measured: list[dict[str, Any]], interval: float
) -> float:
    prime = measured[-1]["prime_s"] / measured[-1]["workers"] * size if measured else 0.0
    duration = max(settings.duration, MIN_SCRAPES * interval)
    return duration + interval * 3 + 15 + prime * 2


def _skip_reason(
    size: int,
    settings: Settings,
    measured: list[dict[str, Any]],
    elapsed: float,
    interval: float,
) -> str | None:
    left = settings.budget_minutes * 60 - elapsed
    need = _cell_seconds(settings, size, measured, interval)
    if need > left:
        return (
            f"skipped: the cell would take about {need / 60:.1f} min and "
            f"{max(0.0, left) / 60:.1f} min of the {settings.budget_minutes:g}-minute time "
            "budget were left"
        )
    usable = [c for c in measured if c.get("rss_bytes") and c.get("head_series")]
    if usable:
        last = usable[-1]
        series = size * last["shape"]["per_target"]
        if len(usable) > 1:
            first = usable[0]
            per_series = (last["rss_bytes"] - first["rss_bytes"]) / max(
                1.0, last["head_series"] - first["head_series"]
            )
            basis = f"the slope between {first['workers']} and {last['workers']} workers"
        else:
            per_series = last["rss_bytes"] / last["head_series"]
            basis = f"RSS / head series at {last['workers']} workers"
        estimate = last["rss_bytes"] + per_series * (series - last["head_series"])
        if estimate > settings.rss_budget_gib * 2**30:
            return (
                f"skipped: {series:,} series at {per_series / 1024:.2f} KiB of Prometheus RSS "
                f"each ({basis}) would need about {estimate / 2**30:.1f} GiB, over the "
                f"{settings.rss_budget_gib:g} GiB budget"
            )
    return None


def _complete(cell: dict[str, Any]) -> bool:
    """Whether Prometheus held the whole fleet: a cell whose scrapes timed out (the fleet
    server could not render every target in an interval) measured part of it."""
    return bool(cell.get("fleet_series") == cell.get("expected_fleet_series"))


def per_thousand(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cost per 1,000 workers per case: measured at 1,000 when that cell ran, else scaled
    linearly from the two largest measured sizes (the slope, so Prometheus's own fixed
    cost is left out)."""
    rows = []
    for case in CASES:
        measured = sorted(
            (
                c
                for c in cells
                if c["case"] == case
                and "fleet_series" in c
                and not c.get("stopped")
                and _complete(c)
            ),
            key=lambda c: c["workers"],
        )
        if not measured:
            continue
        big = measured[-1]
        small = measured[-2] if len(measured) > 1 else None

        def slope(
            key: str, big: dict[str, Any] = big, small: dict[str, Any] | None = small
        ) -> float | None:
            if big.get(key) is None:
                return None
            if small is None or small.get(key) is None:
                return None  # one size: its fixed cost cannot be told from the per-worker one
            rise = float(big[key]) - float(small[key])
            return rise / (int(big["workers"]) - int(small["workers"])) * 1000

        rows.append(
            {
                "case": case,
                "from": (
                    f"measured at {big['workers']}"
                    if big["workers"] == 1000
                    else f"scaled from {small['workers']}->{big['workers']} workers"
                    if small
                    else f"{big['workers']} workers only: RSS and rules not scaled"
                ),
                "series_per_target": big["shape"]["per_target"],
                "series_per_task": big["shape"]["per_task"],
                "fleet_series": big["shape"]["per_target"] * 1000,
                "rss_bytes": slope("rss_bytes"),
                "scrape_median_s": big["scrape_duration_s"]["median"],
                "scrape_p99_s": big["scrape_duration_s"]["p99"],
                "rule_eval_s": slope("rule_eval_total_median_s"),
                "bytes_per_scrape": big.get("body_bytes"),
                "format": big.get("format"),
            }
        )
    return rows


# ---------------------------------------------------------------- the scrape goal

#: Milliseconds: /metrics p99, plain and gzipped, after the last churn step.
SCRAPE_GOAL_MS = 20.0


def run_scrape_goal(settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    """A real prefork worker (4 children, one task per child) with ``scrape_names`` task
    names: ``scrapes`` plain and ``scrapes`` gzipped GETs of ``/metrics`` at each churn step."""
    server = RedisServer()
    server.start()
    broker = Broker(server)
    log_dir = Path(tempfile.mkdtemp(prefix="csuite-fleet-scrape-"))
    try:
        started = time.monotonic()
        by_names, by_churn = run_names(
            broker,
            log_dir,
            [settings.scrape_names],
            settings.scrapes,
            settings.scrape_names,
            list(settings.churn),
        )
        seconds = time.monotonic() - started
    finally:
        broker.close()
        server.stop()
    errors = [r["error"] for r in by_names + by_churn if "error" in r]
    result: dict[str, Any] = {
        "names": settings.scrape_names,
        "children": 4,
        "steps": by_churn,
        "seconds": round(seconds, 1),
    }
    if errors:
        result["error"] = "; ".join(errors)[:2000]
    result["goal"] = scrape_goal(result)
    log(f"scrape goal: {result['goal']['verdict']} ({result['goal']['measured']})")
    return result


def scrape_goal(result: dict[str, Any]) -> dict[str, str]:
    """The goal row: p99 <= 20 ms plain and gzipped after the last step, and the same series
    count at every step."""
    restarts = max((r["restarts"] for r in result.get("steps", [])), default=0)
    goal = (
        f"/metrics p99 <= {SCRAPE_GOAL_MS:g} ms, plain and gzipped, with "
        f"{result['names']} task names x {result['children']} children after "
        f"{restarts:,} child restarts; the same series count at every step"
    )
    steps = [r for r in result.get("steps", []) if "latency_ms" in r]
    if "error" in result or not steps:
        return {"goal": goal, "measured": "not measured", "verdict": result.get("error", "")}
    last = steps[-1]
    plain, gz = last["latency_ms"], last["latency_gzip_ms"]
    series = [r["series"]["total"] for r in steps]
    at = ", ".join(f"{r['restarts']:,}" for r in steps)
    measured = (
        f"p99 {plain['p99']:.1f} ms plain, {gz['p99']:.1f} ms gzipped (median "
        f"{plain['median']:.1f} / {gz['median']:.1f}) after {last['restarts']:,} restarts; "
        f"series {' -> '.join(f'{n:,}' for n in series)} at restarts "
        f"{at}; {last['body_bytes'] / 2**20:.2f} MiB"
    )
    worst = max(plain["p99"], gz["p99"])
    misses = []
    if worst > SCRAPE_GOAL_MS:
        misses.append(f"p99 {worst - SCRAPE_GOAL_MS:.1f} ms over")
    if len(set(series)) != 1:
        misses.append("the series count moved with restarts")
    if last["restarts"] < 10_000:
        misses.append(f"measured up to {last['restarts']:,} restarts only")
    return {
        "goal": goal,
        "measured": measured,
        "verdict": "met" if not misses else "missed: " + "; ".join(misses),
    }


# ---------------------------------------------------------------- report


def _mib(value: Any) -> str:
    return "-" if value is None else f"{float(value) / 2**20:,.0f}"


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value) * 1000:.1f}"


def _scrape_markdown(scrape: dict[str, Any] | None) -> list[str]:
    if not scrape:
        return []
    lines = ["## Scrape goal: a real worker after child churn", ""]
    if "goal" not in scrape:
        return [*lines, f"not measured: {scrape.get('error')}", ""]
    goal = scrape["goal"]
    lines += [
        "| goal | measured | verdict |",
        "|---|---|---|",
        f"| {goal['goal']} | {goal['measured']} | {goal['verdict']} |",
        "",
        f"Default profile, text exposition, prefork with 4 children and "
        f"`--max-tasks-per-child 1`; {scrape.get('seconds', 0) / 60:.1f} min in all. "
        "Each step: the scrapes one after another, plain then gzipped (level 1, as "
        "Prometheus asks), timed by the client on loopback.",
        "",
        "| child restarts | median / p99 / max (ms) | gzip median / p99 (ms) | series "
        "| body KiB (gzip) | worker CPU ms per scrape | main RSS MiB | open fds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in scrape.get("steps", []):
        if "latency_ms" not in r:
            lines.append(f"| {r['restarts']:,} | not measured: {r.get('error')} |||||||")
            continue
        lat, gz = r["latency_ms"], r["latency_gzip_ms"]
        lines.append(
            f"| {r['restarts']:,} | {lat['median']:.1f} / {lat['p99']:.1f} / {lat['max']:.1f} | "
            f"{gz['median']:.1f} / {gz['p99']:.1f} | {r['series']['total']:,} | "
            f"{r['body_bytes'] / 1024:,.0f} ({r['body_gzip_bytes'] / 1024:,.0f}) | "
            f"{r['worker_cpu_ms_per_scrape']:.1f} | {r['main_rss_mib']:.0f} | {r['main_open_fds']} |"
        )
    return [*lines, ""]


def render_markdown(results: dict[str, Any]) -> str:
    stamp, config = results["stamp"], results["config"]
    machine = stamp["machine"]
    lines = [
        "# Fleet benchmark: a real Prometheus scraping simulated workers",
        "",
        f"- command: `{stamp['command']}` ({stamp['mode']} mode), "
        f"{stamp.get('duration_s', 0) / 60:.1f} min",
        f"- date: {stamp['date']}; git {stamp['git']}; package source digest {stamp['package_digest']}",
        f"- machine: {machine['cpu_model']}, {machine['cores']} cores ({machine['kernel']}); "
        f"Python {machine['python']}, prometheus_client {machine['prometheus_client']}; "
        f"load average at start {machine['load_average_at_start']}",
        f"- run: {config['names']} task names per worker, scrape and rule evaluation every "
        f"{config['interval']:g} s (a cell whose fleet server would need more than "
        f"{config.get('server_cores', 0.5):g} cores scrapes less often: its notes say so), "
        f"{config['duration']:g} s measured per cell (at least {MIN_SCRAPES} intervals), "
        f"{config['tasks_per_scrape']} tasks per worker between scrapes "
        f"({config['failure_ratio']:.0%} fail), Prometheus RSS budget "
        f"{config['rss_budget_gib']:g} GiB, time budget {config['budget_minutes']:g} min",
        "",
        *_scrape_markdown(results.get("scrape")),
        "## Cost per 1,000 workers",
        "",
        "Series are exact (what the renderer serves, plus Prometheus's 5 series per target); "
        "RSS and rule evaluation are the slope between the two largest sizes measured "
        "(Prometheus's own fixed cost left out) unless 1,000 workers were measured; scrape "
        "times are per target at the largest size.",
        "",
        "| case | from | series per task | series per target | series | Prometheus RSS (MiB) "
        "| scrape median / p99 (ms) | rule evaluation (ms per round) | bytes per scrape |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["per_1000"]:
        lines.append(
            f"| {row['case']} | {row['from']} | {row['series_per_task']} | "
            f"{row['series_per_target']:,} | {row['fleet_series']:,} | {_mib(row['rss_bytes'])} | "
            f"{_ms(row['scrape_median_s'])} / {_ms(row['scrape_p99_s'])} | "
            f"{_ms(row['rule_eval_s'])} | {row['bytes_per_scrape'] or 0:,} ({row['format']}) |"
        )
    lines += [
        "",
        "## Every cell",
        "",
        "| case | workers | fleet series (expected) | head series | RSS (MiB, max) "
        "| scrape median / p99 / max (ms) | samples per target | rule groups, sum of medians (ms) "
        "| bytes per scrape (gzip -1) | targets up | scrape interval (s) | fleet server cores "
        "| notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in results["cells"]:
        if "skipped" in cell:
            lines.append(
                f"| {cell['case']} | {cell['workers']:,} | - | - | - | - | - | - | - | - | - | - "
                f"| {cell['skipped']} |"
            )
            continue
        scrape = cell["scrape_duration_s"]
        fleet = cell["fleet_series"]
        notes = [cell["stopped"]] if cell.get("stopped") else []
        if cell.get("interval_reason"):
            notes.append(cell["interval_reason"])
        if cell.get("scrapes_failed"):
            notes.append(f"{cell['scrapes_failed']:.0f} failed scrapes")
        if not _complete(cell):
            notes.append(
                "incomplete: Prometheus held part of the fleet (scrapes timed out: the "
                "fleet server could not render every target in an interval); not used in the "
                "cost table"
            )
        lines.append(
            f"| {cell['case']} | {cell['workers']:,} | {fleet or 0:,.0f} ({cell['expected_fleet_series']:,}) | "
            f"{cell['head_series'] or 0:,.0f} | {_mib(cell['rss_bytes'])} ({_mib(cell['rss_max_bytes'])}) | "
            f"{_ms(scrape['median'])} / {_ms(scrape['p99'])} / {_ms(scrape['max'])} | "
            f"{cell['scrape_samples']['max'] or 0:,.0f} | {_ms(cell['rule_eval_total_median_s'])} | "
            f"{cell['body_bytes']:,} ({cell['body_gzip1_bytes']:,}) {cell['format']} | "
            f"{cell['targets_up'] or 0:.0f} | {cell.get('interval_s', config['interval']):g} | "
            f"{cell.get('server_cores', '-')} | "
            f"{'; '.join(notes)} |"
        )
    lines += [
        "",
        "## Rule groups (median / max evaluation, ms) at the largest size of each case",
        "",
    ]
    largest: dict[str, dict[str, Any]] = {}
    for cell in results["cells"]:
        if "rule_groups_s" in cell and _complete(cell):
            largest[cell["case"]] = cell
    groups = sorted({g for c in largest.values() for g in c["rule_groups_s"]})
    cases = list(largest)
    lines.append("| group | " + " | ".join(f"{c} ({largest[c]['workers']})" for c in cases) + " |")
    lines.append("|---|" + "---|" * len(cases))
    for group in groups:
        cells = []
        for c in cases:
            q = largest[c]["rule_groups_s"].get(group)
            cells.append(f"{_ms(q['median'])} / {_ms(q['max'])}" if q else "-")
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    notes = results["config"].get("extra", {}).get("notes", [])
    lines += ["", "## Notes", ""] + [f"- {n}" for n in NOTES + list(notes)]
    return "\n".join(lines) + "\n"


NOTES = [
    "A few forked Python processes serve the simulated workers (ThreadingHTTPServer each, a "
    "slice of the workers on a port of its own); the scrape duration therefore includes "
    "waiting for a shard's GIL and for one of the machine's cores, which Prometheus shares: "
    "read it as an upper bound of a real worker's.",
    "A cell scrapes less often than the run's interval when its fleet server could not "
    "render a round of scrapes in time within its share of the cores (judged from the CPU "
    "a scrape of that case cost at the previous size): head series, RSS per series and "
    "rule evaluation per round do not depend on the interval; samples ingested per second "
    "do, and scale with 1 / interval.",
    "Simulated workers serve the task metrics only (TaskExposition), not the process and "
    "worker collectors a real worker adds; text is the 0.0.4 format (no OpenMetrics, no "
    "gzip: the gzip -1 column gives the compressed size of one body).",
    "Every name runs one success and one failure (exception TimeoutError) at priming, so "
    "every series the run touches exists from the first scrape and the fleet's series count "
    "is exact: workers x (series per task x names + fixed series per target).",
    "peer: 7 zero-initialised counters and two 15-bucket histograms per name, with "
    "`_created` series (prometheus_client's text format), named celery_peer_*; the package's "
    "default classic rules are loaded and select nothing of it.",
    "Rule groups are every group write_rules() ships for MonitoringConfig() (recording, "
    "recording.long, alerts and periodic; no SLO groups, which exist only when a config "
    "declares SLOs); native loads the MonitoringConfig(histograms='native') rules. Rule "
    "evaluation per round counts a group with an interval of its own (recording.long, 1m) "
    "by the share of it one round of the global interval carries.",
]


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fleet", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="5 workers x 5 names, 1 s scrapes")
    parser.add_argument("--sizes", help="fleet sizes, e.g. 10,100,1000")
    parser.add_argument("--names", type=int, help="task names per worker")
    parser.add_argument("--cases", help=f"comma-separated of: {', '.join(CASES)}")
    parser.add_argument("--interval", type=float, help="scrape and evaluation interval, s")
    parser.add_argument("--duration", type=float, help="seconds measured per cell")
    parser.add_argument("--rss-budget-gib", type=float, help="stop a cell past this Prometheus RSS")
    parser.add_argument(
        "--server-processes", type=int, help="processes serving the fleet (default 2)"
    )
    parser.add_argument(
        "--server-cores",
        type=float,
        help="cores the fleet server may use before a cell scrapes less often (default 0.5)",
    )
    parser.add_argument("--budget-minutes", type=float, help="skip cells that would end later")
    parser.add_argument(
        "--churn", help="child restarts at which the scrape goal is measured ('' leaves it out)"
    )
    parser.add_argument("--scrape-names", type=int, help="task names of the scrape goal's worker")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "fleet")
    parser.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: rewrite results.md (and the README's table) from --out's results.json",
    )
    args = parser.parse_args(argv)
    if args.render:
        out = args.out.resolve()
        results = json.loads((out / "results.json").read_text())
        results["per_1000"] = per_thousand(results["cells"])
        (out / "results.md").write_text(render_markdown(results))
        if out == (HERE / "results" / "fleet").resolve():
            update_readme(out)
        return 0
    settings = (
        Settings(
            sizes=(5,),
            names=5,
            interval=1.0,
            duration=3.0,
            tasks_per_scrape=5,
            scrape_names=20,
            churn=(0, 8),
            scrapes=5,
            mode="quick",
        )
        if args.quick
        else Settings()
    )
    if args.sizes:
        settings.sizes = tuple(int(s) for s in args.sizes.split(","))
    if args.names:
        settings.names = args.names
    if args.cases:
        settings.cases = tuple(c.strip() for c in args.cases.split(","))
        unknown = set(settings.cases) - set(CASES)
        if unknown:
            parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    if args.churn is not None:
        settings.churn = tuple(int(c) for c in args.churn.split(",") if c.strip())
    if args.scrape_names:
        settings.scrape_names = args.scrape_names
    for name in (
        "interval",
        "duration",
        "rss_budget_gib",
        "budget_minutes",
        "server_processes",
        "server_cores",
    ):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    shown = list(argv if argv is not None else sys.argv[1:])
    command = "python -m benchmarks.fleet" + (" " + shlex.join(shown) if shown else "")
    out = args.out.resolve()
    run(settings, out, command)
    if out == (HERE / "results" / "fleet").resolve():
        update_readme(out)
    return 0


README_START, README_END = "<!-- fleet:start -->", "<!-- fleet:end -->"


def update_readme(out: Path) -> None:
    """Put the stamp and the cost table of ``out/results.md`` between the README's markers."""
    readme = HERE / "README.md"
    text = readme.read_text() if readme.exists() else ""
    if README_START not in text or README_END not in text:
        return
    table = (out / "results.md").read_text().split("\n## Every cell", 1)[0]
    table = table.replace("# Fleet benchmark: a real Prometheus scraping simulated workers\n", "")
    table = table.replace("\n## ", "\n### ")
    table += "\nEvery cell, the rule groups and the notes: [results/fleet/results.md](results/fleet/results.md)."
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{table.strip()}\n{README_END}{tail}")


if __name__ == "__main__":
    raise SystemExit(main())
