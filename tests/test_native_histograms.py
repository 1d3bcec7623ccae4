"""Native histograms and the series budget, on real Prometheus servers scraping a real worker.

Two Prometheus servers scrape the same worker: one started with
``--enable-feature=native-histograms`` (it asks for the protobuf exposition and
gets native histograms), one without (the text format, classic buckets).  Ground
truth: the tasks published, and the runtimes Celery itself logs ("succeeded in
Xs"), which are the values the runtime histogram observes.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from csuite_async_obs.config.options import DEFAULT_QUEUE_WAIT_BUCKETS, DEFAULT_RUNTIME_BUCKETS
from csuite_async_obs.metrics.catalog import OUTCOME_STATES, TIME_LIMIT_KINDS, ZERO_STATES
from csuite_async_obs.servers.prometheus_server import PrometheusServer
from csuite_async_obs.task_api.app import get_celery_app

from . import worker_tasks as t
from .support import Worker, wait_for

Q = "celery"
#: Schema 3: a native bucket is 2**(1/8) wide, so a quantile read from it is off by
#: less than that factor (histogram_quantile interpolates inside the bucket).
SCHEMA_ERROR = 2 ** (1 / 8) - 1
# Counters zero-initialised per task and queue: the peer's seven, redelivered,
# worker lost, the two time-limit kinds, queue wait unmeasured and clamped.
ZERO_COUNTERS = 11 + len(TIME_LIMIT_KINDS)
LAST_OUTCOME_GAUGES = 2  # per task name: last success, last failure


def classic_budget(runtime_states: int, runtime_bounds: int, wait_bounds: int) -> int:
    """Series per task and queue in the text format: each histogram has its bounds,
    +Inf, _count and _sum."""
    return (
        ZERO_COUNTERS
        + runtime_states * (runtime_bounds + 3)
        + (wait_bounds + 3)
        + LAST_OUTCOME_GAUGES
    )


def native_budget(runtime_states: int) -> int:
    return ZERO_COUNTERS + runtime_states + 1 + LAST_OUTCOME_GAUGES


@pytest.fixture()
def two_prometheus(request: pytest.FixtureRequest) -> Iterator[Any]:
    started: list[PrometheusServer] = []

    def start(worker: Worker) -> tuple[PrometheusServer, PrometheusServer]:
        target = [f"127.0.0.1:{worker.port}"]
        native = PrometheusServer({"native": target}, features=["native-histograms"]).start()
        started.append(native)
        classic = PrometheusServer({"classic": target}).start()
        started.append(classic)
        native.wait_for_targets(timeout=30)
        classic.wait_for_targets(timeout=30)
        return native, classic

    yield start
    for server in started:
        server.stop()


def _scraped_after(prom: PrometheusServer, moment: float) -> None:
    """Wait until every target was scraped after ``moment`` (Unix time)."""

    def fresh() -> bool:
        targets = prom.targets()
        return bool(targets) and all(
            t.get("health") == "up" and _parse_time(t.get("lastScrape", "")) > moment + 0.05
            for t in targets
        )

    wait_for(fresh, 20, interval=0.2, message="a scrape after the workload")


def _parse_time(text: str) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")[:26] + "+00:00").timestamp()
    except ValueError:
        return 0.0


def _count(prom: PrometheusServer, selector: str) -> int:
    return int(prom.value(f"count({{{selector}}})") or 0)


def test_series_per_task_on_real_scrapes(workers: Any, two_prometheus: Any) -> None:
    """The default profile: at most 50 series per task and queue in the text format,
    at most 20 with native histograms; the full profile, today's; both from start."""
    default = workers(pool="solo")
    native, classic = two_prometheus(default)
    # Every series of the task (it has one queue; the last-outcome gauges are per name).
    name = 'name="tests.never_run"'
    runtime, wait = len(DEFAULT_RUNTIME_BUCKETS), len(DEFAULT_QUEUE_WAIT_BUCKETS)
    expected_classic = classic_budget(len(ZERO_STATES), runtime, wait)
    expected_native = native_budget(len(ZERO_STATES))
    assert expected_classic <= 50 and expected_native <= 20
    wait_for(lambda: _count(classic, name) == expected_classic, 20,
             message=f"{expected_classic} classic series of a task never run")  # fmt: skip
    wait_for(lambda: _count(native, name) == expected_native, 20,
             message=f"{expected_native} native series of a task never run")  # fmt: skip
    # The native Prometheus holds no bucket series of the runtime or queue-wait histograms.
    assert (
        _count(native, '__name__=~"celery_task_(runtime|queue_wait)_seconds_(bucket|count|sum)"')
        == 0
    )
    # Once a task failed, its failed_total{exception} series is one more: still within.
    boom = 'name="tests.boom"'
    t.boom.delay()
    wait_for(lambda: _count(classic, boom) == expected_classic + 1, 20,
             message=f"{expected_classic + 1} classic series of a task failed once")  # fmt: skip
    wait_for(lambda: _count(native, boom) == expected_native + 1, 20,
             message=f"{expected_native + 1} native series of a task failed once")  # fmt: skip
    assert expected_classic + 1 <= 50 and expected_native + 1 <= 20
    # The full profile: every outcome's runtime from start, sixteen bounds.
    full = workers(pool="solo", env={"CSUITE_METRICS_PROFILE": "full"})
    s = full.scrape()
    ours = [x for x in s if x.labels.get("name") == "tests.never_run"]
    assert len(ours) == classic_budget(len(OUTCOME_STATES), 16, 16)


def test_native_counts_are_exact_and_quantiles_agree_with_classic(
    workers: Any, two_prometheus: Any
) -> None:
    # Classic buckets on the native schema's boundaries (2**(k/8), 1 ms to 1 s), so that
    # the two kinds answer the same question with the same resolution.
    bounds = [2 ** (k / 8) for k in range(-80, 1)]
    worker = workers(pool="solo", env={"CSUITE_RUNTIME_BUCKETS": ",".join(repr(b) for b in bounds)})
    native, classic = two_prometheus(worker)
    n_ok, n_failed = 300, 20
    for i in range(n_ok):
        t.sleep.delay(0.0005 * (i % 40))
    for _ in range(n_failed):
        t.boom.delay()
    labels = {"name": "tests.sleep", "queue_name": Q}
    wait_for(lambda: worker.scrape().value("celery_task_succeeded_total", **labels) == n_ok, 60,
             message=f"{n_ok} tasks succeeded")  # fmt: skip
    wait_for(lambda: worker.scrape().sum("celery_task_failed_total", name="tests.boom") == n_failed,
             30, message=f"{n_failed} tasks failed")  # fmt: skip
    done = time.time()
    _scraped_after(native, done)
    _scraped_after(classic, done)

    sel = f'name="tests.sleep", queue_name="{Q}", state="succeeded"'
    # Exact counts, native and classic: the tasks published.
    assert native.value(f"histogram_count(celery_task_runtime_seconds{{{sel}}})") == n_ok
    assert classic.value(f"celery_task_runtime_seconds_count{{{sel}}}") == n_ok
    boom = 'name="tests.boom", state="failed"'
    assert native.value(f"sum(histogram_count(celery_task_runtime_seconds{{{boom}}}))") == n_failed
    waits = 'name=~"tests.sleep|tests.boom"'
    assert native.value(
        f"sum(histogram_count(celery_task_queue_wait_seconds{{{waits}}}))"
    ) == n_ok + n_failed  # fmt: skip
    # The sums agree too (one float each way).
    native_sum = native.value(f"histogram_sum(celery_task_runtime_seconds{{{sel}}})")
    classic_sum = classic.value(f"celery_task_runtime_seconds_sum{{{sel}}}")
    assert native_sum == pytest.approx(classic_sum, rel=1e-9)

    # Ground truth: Celery's own runtimes, from its log.
    runtimes = sorted(
        float(x)
        for x in re.findall(
            r"Task tests\.sleep\[[0-9a-f-]+\] succeeded in ([0-9.e-]+)s", worker.log()
        )
    )
    assert len(runtimes) == n_ok
    assert native_sum == pytest.approx(sum(runtimes), rel=1e-6, abs=1e-6 * n_ok)
    for q in (0.5, 0.9, 0.99):
        truth = runtimes[min(n_ok - 1, math.ceil(q * n_ok) - 1)]
        got_native = native.value(f"histogram_quantile({q}, celery_task_runtime_seconds{{{sel}}})")
        got_classic = classic.value(
            f"histogram_quantile({q}, celery_task_runtime_seconds_bucket{{{sel}}})"
        )
        assert got_native is not None and got_classic is not None
        report = f"q={q}: truth {truth:.6f}, native {got_native:.6f}, classic {got_classic:.6f}"
        print(report)
        # Both kinds place the quantile in the bucket that holds it: within one bucket's
        # width of the truth, and of each other.
        assert abs(got_native / truth - 1) <= SCHEMA_ERROR, report
        assert abs(got_native / got_classic - 1) <= SCHEMA_ERROR, report


def test_the_peers_dashboards_still_answer(workers: Any, two_prometheus: Any) -> None:
    """The counter and gauge queries of the most used event-based exporter's dashboards
    (celery-mixin: its task counters by job, queue and task, workers up and active,
    queue lengths) answer on our series, natively scraped."""
    worker = workers(pool="solo")
    native, _ = two_prometheus(worker)
    for i in range(5):
        t.ok.delay(i)
    t.boom.delay()
    wait_for(lambda: worker.scrape().sum("celery_task_succeeded_total", name="tests.ok") == 5, 30)
    # Two scrapes since: increase() needs two samples of the series the failure created.
    _scraped_after(native, time.time() + 1.5)
    peer = 'job=~".+", queue_name=~".+", queue_name!~"None"'
    expected = {
        f"sum(round(increase(celery_task_{c}_total{{{peer}}}[1h])))": None
        for c in ("sent", "received", "succeeded", "failed", "retried", "revoked", "rejected")
    }
    expected[f"sum by (name) (rate(celery_task_received_total{{{peer}}}[1h]))"] = None
    expected[f"round(sum by (job, exception) (celery_task_failed_total{{{peer}}}))"] = 1.0
    expected['count(celery_worker_up{job=~".+", queue_name!~"None"} == 1)'] = 1.0
    expected['sum(celery_worker_tasks_active{job=~".+", queue_name!~"None"})'] = 0.0
    expected[f"sum by (job, queue_name) (celery_queue_length{{{peer}}})"] = None
    empty = []
    for expr, value in expected.items():
        result = native.query(expr)
        if not result:
            empty.append(expr)
        elif value is not None:
            assert float(result[0]["value"][1]) == value, expr
    assert empty == []


def test_rules_and_dashboards_answer_on_native_histograms(workers: Any, tmp_path: Path) -> None:
    """The rules and dashboards generated with ``histograms: native`` on a Prometheus that
    stores native histograms: every rule evaluates, every panel that reads a histogram
    answers, and the failure-ratio alert fires on a failure burst."""
    from dataclasses import replace

    from csuite_async_obs.monitoring.dashboards import render
    from csuite_async_obs.monitoring.export import write_rules

    from .test_alerts_e2e import (
        CLUSTER,
        JOB,
        RATE_INTERVAL,
        STEP,
        Workload,
        check_rules_evaluate,
        e2e_config,
        grafana_regex,
        has_finite_value,
    )  # fmt: skip
    from .test_dashboards import substitute, targets

    config = replace(e2e_config(), histograms="native")
    worker = workers(pool="prefork", concurrency=2)
    prom = PrometheusServer(
        {JOB: [f"127.0.0.1:{worker.port}"]}, write_rules(config, tmp_path / "rules"),
        features=["native-histograms"], labels={JOB: {"cluster": CLUSTER}},
    )  # fmt: skip
    workload = Workload(get_celery_app(), fail_every=2)
    try:
        prom.start()
        prom.wait_for_targets(timeout=30)
        start = time.time()
        workload.start()

        def fired() -> bool:
            return any(
                a["state"] == "firing"
                and a["labels"]["alertname"] == "CeleryTaskFailureRatioHigh"
                and a["labels"].get("name") == "tests.flaky"
                for a in prom.alerts()
            )

        wait_for(fired, 60, interval=0.5, message="CeleryTaskFailureRatioHigh on native data")
        end = time.time()
        assert check_rules_evaluate(prom) == sum(
            len(group["rules"])
            for path in prom.rule_files
            for group in yaml.safe_load(path.read_text())["groups"]
        )
        values = {"cluster": CLUSTER, "job": grafana_regex(JOB), "instance": ".*",
                  "queue_name": ".*", "task": ".*", "__rate_interval": RATE_INTERVAL,
                  "__interval": f"{STEP:.0f}s", "__range": f"{round(end - start)}s"}  # fmt: skip
        checked, empty = 0, []
        for name, text in render(config).items():
            for panel, target in targets(json.loads(text)):
                expr = substitute(target["expr"], values)
                if not re.search(r"celery_task_(runtime|queue_wait)_seconds\b", expr):
                    continue
                assert not re.search(r"_seconds_(bucket|count|sum)\b", expr), expr
                result = (
                    prom.query(expr, at=end)
                    if target.get("instant")
                    else prom.query_range(expr, start, end, STEP)
                )
                checked += 1
                if not has_finite_value(result):
                    empty.append(f"{name} / {panel['title']} / {target['refId']}: {expr}")
        assert checked >= 10 and empty == [], empty
    finally:
        workload.stop()
        prom.stop()
