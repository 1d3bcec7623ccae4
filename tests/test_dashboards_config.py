"""Dashboards of a non-default monitoring config, and of the default one without the SDK.

A config with other job selectors, a cluster label and other titles, tags and
uids: the dashboards carry them (every selector, every aggregation), and on a
real Prometheus scraping a real worker and a standalone exporter labelled that
way (``job="celery-workers"`` / ``job="celery-exporter"``, ``cluster="c1"``),
beside a decoy scrape of the same worker in another job and cluster, every panel
and variable query answers, and only with the selected targets.

Without the Grafana Foundation SDK (blocked by an import hook in a subprocess)
``render()`` gives the shipped default dashboards and refuses any other config.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from celery import Celery

from csuite_async_obs.config.celery_settings import CelerySettings
from csuite_async_obs.metrics.catalog import METRICS
from csuite_async_obs.monitoring.config import MonitoringConfig
from csuite_async_obs.monitoring.dashboards import DashboardsUnavailable, render
from csuite_async_obs.servers.processes import free_port, stop_process
from csuite_async_obs.servers.prometheus_server import PrometheusServer
from csuite_async_obs.servers.rabbitmq_server import RabbitMQServer
from csuite_async_obs.task_api.app import create_celery_app

from .support import PYTHON, Beat, wait_for
from .test_alerts_e2e import RATE_INTERVAL, STEP, Workload, grafana_regex, has_finite_value
from .test_dashboards import (
    GRAFANA_INTERVALS,
    PROMTOOL,
    ROOT,
    SHIPPED,
    committed,
    exported_series,
    label_values,
    panels,
    substitute,
    targets,
    variable_queries,
)

WORKER_JOB = "celery-workers"
EXPORTER_JOB = "celery-exporter"
DECOY_JOB = "celery-other"
CLUSTER = "c1"
BEAT_JOB = "celery-beat"
CONFIG = MonitoringConfig.from_mapping({
    "selectors": {"worker": f'job="{WORKER_JOB}"', "exporter": f'job="{EXPORTER_JOB}"',
                  "beat": f'job="{BEAT_JOB}"'},
    "cluster_label": "cluster",
    "dashboards": {"title_prefix": "Prod ", "tags": ["celery", "prod"], "uid_prefix": "prod-"},
})  # fmt: skip
WORKER_SELECTOR = f'job="{WORKER_JOB}"'
EXPORTER_SELECTOR = f'job="{EXPORTER_JOB}"'
BEAT_SELECTOR = f'job="{BEAT_JOB}"'
BEAT_SERIES = frozenset(spec.name for spec in METRICS if spec.process == "beat")
CLUSTER_FILTER = 'cluster=~"$cluster"'
QUEUE_SERIES = frozenset(n for n in exported_series() if n.startswith("celery_queue_"))
ALL = {"cluster": CLUSTER, "job": ".*", "instance": ".*", "queue_name": ".*", "task": ".*"}
SECONDS = 25.0

_SELECTION = re.compile(r"\b([a-z_:][a-z0-9_:]*)(\{[^{}]*\})?")
_GROUPING = re.compile(r"\b(by|on)\s*\(([^()]*)\)")
_AGGREGATION = re.compile(r"\b(sum|max|min|avg|count|group)\s*(by\s*\([^()]*\)\s*)?\(")


@pytest.fixture(scope="module")
def boards() -> dict[str, dict[str, Any]]:
    pytest.importorskip("grafana_foundation_sdk")
    return {name: json.loads(text) for name, text in render(CONFIG).items()}


def selections(expr: str) -> Iterator[tuple[str, str]]:
    """(metric, its matchers without braces) of every series selection in ``expr``."""
    for match in _SELECTION.finditer(expr):
        name, braces = match.group(1), match.group(2)
        if name in exported_series() or name == "up":
            yield name, (braces or "{}")[1:-1]


# --------------------------------------------------------------------------- the JSON


def test_titles_uids_tags_and_links(boards: dict[str, dict[str, Any]]) -> None:
    overview, task = boards["overview.json"], boards["task.json"]
    assert sorted(boards) == ["overview.json", "task.json"]
    assert (overview["title"], overview["uid"], overview["tags"]) == (
        "Prod Celery tasks: overview (csuite-async-obs)", "prod-async-obs-overview",
        ["celery", "prod"],
    )  # fmt: skip
    assert (task["title"], task["uid"], task["tags"]) == (
        "Prod Celery tasks: task detail (csuite-async-obs)", "prod-async-obs-task",
        ["celery", "prod"],
    )  # fmt: skip
    assert [link["url"] for link in overview["links"]] == [
        "/d/prod-async-obs-task/prod-async-obs-task"
    ]
    assert [link["url"] for link in task["links"]] == [
        "/d/prod-async-obs-overview/prod-async-obs-overview"
    ]
    urls = [
        prop["value"][0]["url"]
        for panel in panels(overview)
        for override in panel.get("fieldConfig", {}).get("overrides", [])
        for prop in override["properties"]
        if prop["id"] == "links"
    ]
    assert len(urls) == 2
    for url in urls:
        assert url.startswith("/d/prod-async-obs-task/prod-async-obs-task?"), url
        assert "${cluster:queryparam}" in url, url


def test_variables_read_the_selected_workers_of_the_cluster(
    boards: dict[str, dict[str, Any]],
) -> None:
    for name, board in boards.items():
        assert [v["name"] for v in board["templating"]["list"]] == [
            "datasource", "cluster", "job", "instance", "queue_name", "task"
        ], name  # fmt: skip
        cluster = board["templating"]["list"][1]
        assert (cluster["multi"], cluster.get("includeAll", False)) == (False, False)
        assert variable_queries(board) == {
            "cluster": 'label_values(celery_worker_up{job="celery-workers"}, cluster)',
            "job": 'label_values(celery_worker_up{job="celery-workers", cluster=~"$cluster"}, job)',
            "instance": 'label_values(celery_worker_up{job="celery-workers", cluster=~"$cluster", '
            'job=~"$job"}, instance)',
            "queue_name": 'label_values(celery_task_received_total{job="celery-workers", '
            'cluster=~"$cluster", job=~"$job"}, queue_name)',
            "task": 'label_values(celery_task_received_total{job="celery-workers", '
            'cluster=~"$cluster", job=~"$job", queue_name=~"$queue_name"}, name)',
        }, name


def test_every_query_carries_the_selectors_and_the_cluster(
    boards: dict[str, dict[str, Any]],
) -> None:
    checked = 0
    for name, board in boards.items():
        for panel, target in targets(board):
            expr, where = target["expr"], (name, panel["title"], target["expr"])
            found = list(selections(expr))
            # Every metric name in the text is one of the selections checked below.
            names = [*exported_series(), "up"]
            assert len(found) == sum(len(re.findall(rf"\b{n}\b", expr)) for n in names) > 0
            for metric, matchers in found:
                checked += 1
                assert CLUSTER_FILTER in matchers, (metric, *where)
                if metric in QUEUE_SERIES:
                    # Broker-wide: from the workers or the exporters, both alternatives given.
                    assert matchers.startswith((WORKER_SELECTOR, EXPORTER_SELECTOR)), where
                    assert WORKER_SELECTOR in expr and EXPORTER_SELECTOR in expr, where
                elif metric in BEAT_SERIES:
                    # Beat's own target: the beat selector and the cluster, no job variable.
                    assert matchers == f"{BEAT_SELECTOR}, {CLUSTER_FILTER}", (metric, *where)
                elif metric == "celery_task_sent_total":
                    # Publishers (a web app, beat) count it in jobs of their own.
                    assert "job" not in matchers, where
                else:
                    assert matchers.startswith(WORKER_SELECTOR + ", "), (metric, *where)
                    assert 'job=~"$job", instance=~"$instance"' in matchers, where
            for keyword, labels in _GROUPING.findall(expr):
                assert "cluster" in [x.strip() for x in labels.split(",")], (keyword, *where)
            for match in _AGGREGATION.finditer(expr):
                assert match.group(2), (f"{match.group(1)} without by (cluster)", *where)

    # As many as the default dashboards have (the same panels, no selection lost),
    # queue series twice (workers or exporters).
    def count(names: Iterable[str]) -> int:
        return sum(
            len(re.findall(rf"\b{n}\b", target["expr"]))
            for board in committed().values()
            for _, target in targets(board)
            for n in names
        )

    assert checked == count([*exported_series(), "up"]) + count(QUEUE_SERIES)


def test_every_query_is_valid_promql(boards: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    rules = [
        {"record": f"dashboard:query:{i}", "expr": expr}
        for i, expr in enumerate(
            [substitute(t["expr"], {**GRAFANA_INTERVALS, **ALL}) for b in boards.values()
             for _, t in targets(b)]
            + [substitute(label_values(q)[0], ALL) for b in boards.values()
               for q in variable_queries(b).values()]
        )
    ]  # fmt: skip
    path = tmp_path / "queries.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


# --------------------------------------------------------------------------- without the SDK

_NO_SDK = textwrap.dedent(
    """
    import json, sys

    class BlockSDK:
        # Stands for an install without the dashboards extra (or Python 3.10).
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "grafana_foundation_sdk":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, BlockSDK())
    from csuite_async_obs.monitoring.config import MonitoringConfig
    from csuite_async_obs.monitoring.dashboards import DashboardsUnavailable, render

    out = {"default": render(), "default_given": render(MonitoringConfig())}
    try:
        render(MonitoringConfig.from_mapping({"cluster_label": "cluster"}))
    except DashboardsUnavailable as exc:
        out["error"] = str(exc)
    out["sdk_loaded"] = any(m.startswith("grafana_foundation_sdk") for m in sys.modules)
    print(json.dumps(out))
    """
)


def test_without_the_sdk_the_default_comes_from_the_package_and_others_raise() -> None:
    result = subprocess.run([sys.executable, "-c", _NO_SDK], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    shipped = {p.name: p.read_text() for p in sorted(SHIPPED.glob("*.json"))}
    assert out["default"] == out["default_given"] == shipped
    assert sorted(shipped) == ["overview.json", "task.json"]
    assert out["error"] == (
        "dashboards for a config other than the default need the Grafana Foundation SDK, "
        "which is not installed: pip install 'csuite-async-obs[dashboards]' (Python 3.11+)"
    )
    assert out["sdk_loaded"] is False


def test_the_error_is_a_runtime_error() -> None:
    assert issubclass(DashboardsUnavailable, RuntimeError)


# --------------------------------------------------------------------------- on Prometheus


def start_exporter(env: dict[str, str], port: int, api_url: str, log: Path) -> Any:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [PYTHON, "-m", "csuite_async_obs.cli", "exporter", "--metrics-port", str(port),
             "--metrics-addr", "127.0.0.1", "--metrics-queues", "celery",
             "--metrics-queue-poll-interval", "1", "--metrics-rabbitmq-api-url", api_url],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def test_every_query_answers_on_prometheus_scraping_targets_labelled_that_way(
    boards: dict[str, dict[str, Any]],
    rabbitmq_server: RabbitMQServer,
    rabbitmq_vhost: str,
    rabbitmq_workers: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Celery's broker_url prefers CELERY_BROKER_URL from the environment (conftest
    # points it at the session's Redis) over the app's configuration.
    backend = rabbitmq_workers.env["CELERY_RESULT_BACKEND"]
    monkeypatch.setenv("CELERY_BROKER_URL", rabbitmq_vhost)
    monkeypatch.setenv("CELERY_RESULT_BACKEND", backend)
    # The worker does not poll queues: queue series come from the exporter only,
    # through the exporter selector (with the management API: unacked, consumers).
    worker = rabbitmq_workers(
        pool="prefork", concurrency=2, args=("--prefetch-multiplier", "1"),
        env={"CSUITE_QUEUE_DEPTH": "0"},
    )  # fmt: skip
    exporter_port = free_port()
    exporter = start_exporter(
        {**rabbitmq_workers.env, "CSUITE_QUEUE_POLL_TIMEOUT": "2"},
        exporter_port,
        rabbitmq_server.management_url,
        tmp_path / "exporter.log",
    )
    app: Celery = create_celery_app(
        CelerySettings(broker_url=rabbitmq_vhost, result_backend=backend)
    )
    # celery beat on the same vhost: a 1 s entry of tests.periodic (which the test
    # makes fail for a while: the table's last failure) and an every-minute crontab.
    beat = Beat({**rabbitmq_workers.env, "PERIODIC_INTERVAL": "1", "PERIODIC_TASK": "tests.periodic"},
                tmp_path).start()  # fmt: skip
    flags = redis.Redis.from_url(rabbitmq_workers.env["TEST_REDIS_URL"])
    worker_address = f"127.0.0.1:{worker.port}"
    prom = PrometheusServer(
        {WORKER_JOB: [worker_address], EXPORTER_JOB: [f"127.0.0.1:{exporter_port}"],
         DECOY_JOB: [worker_address], BEAT_JOB: [f"127.0.0.1:{beat.port}"]},
        labels={WORKER_JOB: {"cluster": CLUSTER}, EXPORTER_JOB: {"cluster": CLUSTER},
                DECOY_JOB: {"cluster": "c2"}, BEAT_JOB: {"cluster": CLUSTER}},
    )  # fmt: skip
    workload: Workload | None = None
    try:
        prom.start()
        prom.wait_for_targets(timeout=60)
        wait_for(
            lambda: prom.query(f'celery_queue_length{{job="{EXPORTER_JOB}", queue_name="celery"}}'),
            30,
            message="the exporter's queue length in Prometheus",
        )
        workload = Workload(app, fail_every=4)
        start = time.time()
        workload.start()
        time.sleep(SECONDS / 2)
        # A few runs of the periodic task fail, then it succeeds again.
        flags.set("periodic:every-5s:fail", 1)
        time.sleep(3)
        flags.delete("periodic:every-5s:fail")
        time.sleep(SECONDS / 2 - 3)
        end = time.time()
        workload.stop()
        assert workload.flaky_failed >= 1

        values = {"cluster": CLUSTER, "job": grafana_regex(WORKER_JOB), "instance": ".*",
                  "queue_name": ".*", "__rate_interval": RATE_INTERVAL,
                  "__interval": f"{STEP:.0f}s", "__range": f"{round(end - start)}s"}  # fmt: skip
        empty, checked = [], 0
        for name, board in boards.items():
            values["task"] = ".*" if name == "overview.json" else grafana_regex("tests.flaky")
            for panel, target in targets(board):
                expr = substitute(target["expr"], values)
                if target.get("instant"):
                    result = prom.query(expr, at=end)
                else:
                    result = prom.query_range(expr, start, end, STEP)
                checked += 1
                if not has_finite_value(result):
                    empty.append(f"{name} / {panel['title']} / {target['refId']}: {expr}")
                # Only cluster c1 (the decoy scrape is cluster c2, job celery-other).
                for series in result:
                    assert series["metric"].get("cluster") == CLUSTER, (expr, series["metric"])
                    job = series["metric"].get("job", WORKER_JOB)
                    assert job in (WORKER_JOB, EXPORTER_JOB, BEAT_JOB), (expr, series["metric"])
            for variable, query in variable_queries(board).items():
                selector, label = label_values(query)
                if not prom.label_values(label, substitute(selector, values)):
                    empty.append(f"{name} / variable {variable}: {query}")
                checked += 1
        assert not empty, "queries without data:\n" + "\n".join(empty)
        assert checked == sum(
            len(list(targets(b))) + len(variable_queries(b)) for b in boards.values()
        )

        # Exact values: the variables offer the selected targets only, and the
        # worker is counted once though Prometheus scrapes it twice.
        assert prom.label_values("cluster", f"celery_worker_up{{{WORKER_SELECTOR}}}") == [CLUSTER]
        assert prom.label_values(
            "job", f'celery_worker_up{{{WORKER_SELECTOR}, cluster=~"c1"}}'
        ) == [WORKER_JOB]
        up = substitute(
            next(
                t["expr"] for p, t in targets(boards["overview.json"]) if p["title"] == "Workers up"
            ),
            values,
        )
        assert [(s["metric"], s["value"][1]) for s in prom.query(up, at=end)] == [
            ({"cluster": CLUSTER}, "1")
        ]
        assert prom.value(f'sum(up{{job=~"{WORKER_JOB}|{DECOY_JOB}"}})') == 2
        length = substitute(
            next(
                t["expr"]
                for p, t in targets(boards["overview.json"])
                if p["title"] == "Queue length"
            ),
            values,
        )
        assert [s["metric"] for s in prom.query(length, at=end)] == [
            {"cluster": CLUSTER, "queue_name": "celery"}
        ]
    finally:
        if workload is not None and workload.is_alive():
            workload.stop()
        prom.stop()
        stop_process(exporter)
        beat.stop()
        flags.close()
        app.close()
