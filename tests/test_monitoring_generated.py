"""The rules generated from a monitoring config: the committed alerts/ are the default's output,
and a config's selectors, cluster label and tuning really reach the expressions (promtool checks
and unit-tests them)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from csuite_async_obs.metrics.catalog import METRICS
from csuite_async_obs.monitoring.config import (
    AlertTuning,
    MonitoringConfig,
    MonitoringConfigError,
    Selectors,
    load_config,
)
from csuite_async_obs.monitoring.export import (
    GRAFANA_DASHBOARDS_PATH,
    ExportOptions,
    example_config,
    export,
    grafana_provisioning,
    prometheus_rule,
)
from csuite_async_obs.monitoring.rules import ALERTS, rule_files

from .test_dashboards import PROMETHEUS_SERIES, exported_series, metric_names

ROOT = Path(__file__).resolve().parent.parent
ALERTS_DIR = ROOT / "alerts"

CUSTOM = """\
selectors:
  worker: 'job="prod-workers"'
  exporter: 'job=~"prod-queue-.*"'
  beat: 'job="prod-beat"'
cluster_label: cluster
runbook_url: https://wiki.example.com/celery#
group_prefix: prod
alerts:
  CeleryQueueBacklogGrowing: {threshold: 500, for: 30m, window: 20m, severity: critical}
  CeleryTaskFailureRatioHigh: {threshold: 0.25, window: 15m}
  CeleryQueueOldestMessageTooOld: {threshold: 900}
  CeleryWorkerSaturated: {enabled: false}
"""


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def rules_of(files: dict[str, str]) -> list[dict[str, Any]]:
    return [
        rule
        for text in files.values()
        for group in yaml.safe_load(text)["groups"]
        for rule in group["rules"]
    ]


@pytest.fixture(scope="module")
def custom(tmp_path_factory: pytest.TempPathFactory) -> tuple[MonitoringConfig, Path]:
    folder = tmp_path_factory.mktemp("custom")
    (folder / "monitoring.yaml").write_text(CUSTOM)
    config = load_config(folder / "monitoring.yaml")
    export(config, folder / "out", ["rules", "operator"])
    return config, folder / "out"


def test_committed_rule_files_are_the_default_configs_output() -> None:
    generated = rule_files(MonitoringConfig())
    committed = {p.name: p.read_text() for p in sorted(ALERTS_DIR.glob("*.rules.yml"))}
    assert sorted(committed) == sorted(generated), "run scripts/generate-rules"
    for name, text in generated.items():
        assert committed[name] == text, f"alerts/{name} differs: run scripts/generate-rules"


def test_the_example_config_is_every_default() -> None:
    document = yaml.safe_load(example_config())
    config = MonitoringConfig.from_mapping(document)
    assert sorted(config.alerts) == sorted(ALERTS)
    assert rule_files(config) == rule_files(MonitoringConfig())


def test_custom_config_passes_promtool(custom: tuple[MonitoringConfig, Path]) -> None:
    _, out = custom
    paths = [out / "prometheus" / "recording.rules.yml", out / "prometheus" / "alerts.rules.yml"]
    result = promtool("check", "rules", *map(str, paths))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == (
        f"Checking {paths[0]}\n  SUCCESS: 14 rules found\n\n"
        f"Checking {paths[1]}\n  SUCCESS: 18 rules found\n\n"
    )


def test_custom_selectors_go_on_every_raw_series(custom: tuple[MonitoringConfig, Path]) -> None:
    config, _ = custom
    raw = exported_series() | PROMETHEUS_SERIES
    queue_series = {
        "celery_queue_length", "celery_queue_oldest_message_age_seconds",
        "celery_queue_length_last_success_timestamp_seconds",
        "celery_queue_length_poll_errors_total",
        "csuite_async_obs_instrumentation_errors_total", "csuite_async_obs_label_overflow_total",
    }  # fmt: skip
    beat_series = {spec.name for spec in METRICS if spec.process == "beat"}
    # Served by every process the package runs in, beat included.
    package_series = {
        "csuite_async_obs_instrumentation_errors_total", "csuite_async_obs_label_overflow_total",
    }  # fmt: skip
    seen: set[str] = set()
    for rule in rules_of(rule_files(config)):
        expr = rule["expr"]
        for name in metric_names(expr) & raw:
            seen.add(name)
            # Every occurrence of the series carries a selector: the worker one, and for
            # the queue series also the exporter one (a union).
            occurrences = re.findall(rf"(?<![\w:]){name}(?![\w:])(\{{[^}}]*\}})?", expr)
            assert occurrences, (name, expr)
            if name in beat_series:
                # Served by celery beat alone: the beat selector, always.
                assert occurrences == ['{job="prod-beat"}'] * len(occurrences), (name, expr)
                continue
            allowed = ('{job="prod-workers"', '{job=~"prod-queue-.*"}')
            if name in package_series:
                assert f'{name}{{job="prod-beat"}}' in expr, expr
                allowed += ('{job="prod-beat"}',)
            for matchers in occurrences:
                assert matchers.startswith(allowed), (
                    rule.get("record") or rule.get("alert"),
                    name,
                    expr,
                )
            if name in queue_series:
                assert f'{name}{{job="prod-workers"}}' in expr, expr
                assert f'{name}{{job=~"prod-queue-.*"}}' in expr, expr
            else:
                assert f'{name}{{job=~"prod-queue-.*"}}' not in expr, expr
    assert "up" in seen and "celery_queue_length" in seen
    assert beat_series <= seen | {
        "celery_beat_entries", "celery_beat_entry_period_seconds", "celery_beat_entry_sent_total",
        "celery_beat_entry_send_errors_total",
    }  # fmt: skip


def test_custom_cluster_label_kept_in_every_aggregation(
    custom: tuple[MonitoringConfig, Path],
) -> None:
    config, _ = custom
    clauses = 0
    for rule in rules_of(rule_files(config)):
        for clause in re.findall(r"\b(?:by|on)\s*\(([^()]*)\)", rule["expr"]):
            clauses += 1
            assert clause.split(", ")[0] == "cluster", rule
        # No aggregation without a grouping clause (it would drop the cluster).
        assert not re.search(r"\b(sum|max|count|group|min|avg)\s*\(", rule["expr"]), rule
    # Each clause of the default rules, plus the two `count(...)` that became `count by (cluster)`.
    default = sum(
        len(re.findall(r"\b(?:by|on)\s*\(", rule["expr"]))
        for rule in rules_of(rule_files(MonitoringConfig()))
    )
    assert clauses == default + 2


def test_custom_tuning_reaches_the_rules(custom: tuple[MonitoringConfig, Path]) -> None:
    config, _ = custom
    alerts = {r["alert"]: r for r in rules_of(rule_files(config)) if "alert" in r}
    records = {r["record"] for r in rules_of(rule_files(config)) if "record" in r}
    assert "CeleryWorkerSaturated" not in alerts and len(alerts) == len(ALERTS) - 1
    growing = alerts["CeleryQueueBacklogGrowing"]
    assert "queue:celery_queue_length:max > 500\n" in growing["expr"]
    assert "deriv(queue:celery_queue_length:max[20m]) > 0" in growing["expr"]
    assert (growing["for"], growing["labels"]) == ("30m", {"severity": "critical"})
    assert "more than 500 messages" in growing["annotations"]["description"]
    assert "for 30 minutes" in growing["annotations"]["description"]
    ratio = alerts["CeleryTaskFailureRatioHigh"]["expr"]
    assert "task:celery_task_failures:ratio15m > 0.25\n" in ratio
    assert "task:celery_task_failures:ratio1h > 0.25\n" in ratio
    assert {"task:celery_task_failures:ratio15m", "task:celery_task_executions:increase15m"} <= (
        records
    )
    assert "task:celery_task_failures:ratio10m" not in records
    old = alerts["CeleryQueueOldestMessageTooOld"]
    assert old["expr"] == "queue:celery_queue_oldest_message_age_seconds:max > 900"
    assert "older than 15 minutes" in old["annotations"]["description"]
    for name, alert in alerts.items():
        assert alert["annotations"]["runbook"] == f"https://wiki.example.com/celery#{name.lower()}"
    groups = [g["name"] for t in rule_files(config).values() for g in yaml.safe_load(t)["groups"]]
    assert groups == ["prod.recording", "prod.recording.long", "prod.alerts", "prod.periodic"]


def test_custom_cluster_and_selector_in_a_promtool_unit_test(
    custom: tuple[MonitoringConfig, Path],
) -> None:
    """Cluster a has a stuck queue and a worker; cluster b the same queue draining and its worker.

    The alert fires for cluster a alone, with the cluster label; a stuck queue of a job the
    selectors do not pick (another team's) is not read at all.
    """
    _, out = custom
    stamp = "0+60x35"
    series = []
    for cluster, started in (("a", "0+3x5 15x30"), ("b", "0+3x35")):
        labels = f'cluster="{cluster}", job="prod-queue-1", instance="e:9809"'
        series += [
            {"series": f'celery_queue_length{{{labels}, queue_name="jobs"}}', "values": "0x5 50x30"},
            {"series": f"celery_queue_length_last_success_timestamp_seconds{{{labels}}}",
             "values": stamp},
            {"series": f'celery_task_started_total{{cluster="{cluster}", job="prod-workers", '
                       f'instance="w:9808", queue_name="jobs", name="app.a"}}', "values": started},
            {"series": f'celery_worker_up{{cluster="{cluster}", job="prod-workers", '
                       f'instance="w:9808"}}', "values": "1x35"},
        ]  # fmt: skip
    # Another team's queue, in a job no selector picks: stuck, but not this config's business.
    other = 'cluster="a", job="other-team", instance="x:9808"'
    series += [
        {"series": f'celery_queue_length{{{other}, queue_name="theirs"}}', "values": "0x5 50x30"},
        {"series": f"celery_queue_length_last_success_timestamp_seconds{{{other}}}",
         "values": stamp},
    ]  # fmt: skip
    document = {
        "rule_files": ["prometheus/recording.rules.yml", "prometheus/alerts.rules.yml"],
        "evaluation_interval": "1m",
        "group_eval_order": ["prod.recording", "prod.recording.long", "prod.alerts"],
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {
                        "eval_time": "16m",
                        "alertname": "CeleryQueueNotDraining",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    "cluster": "a",
                                    "queue_name": "jobs",
                                },
                                "exp_annotations": {
                                    "summary": "Queue jobs has a backlog and nothing is taking "
                                    "from it",
                                    "description": "Queue jobs has held at least 50 message(s) "
                                    "at every reading for 10 minutes and no task of it has "
                                    "started, although workers are up: its consumers are "
                                    "stuck, cancelled or not subscribed to it.",
                                    "runbook": "https://wiki.example.com/celery#"
                                    "celeryqueuenotdraining",
                                },
                            }
                        ],
                    }
                ],
            }
        ],
    }
    (out / "cluster.test.yml").write_text(yaml.safe_dump(document, sort_keys=False))
    result = promtool("test", "rules", "cluster.test.yml", cwd=out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_operator_manifest_holds_every_group(custom: tuple[MonitoringConfig, Path]) -> None:
    config, out = custom
    manifest = yaml.safe_load((out / "kubernetes" / "prometheusrule.yaml").read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == (
        "monitoring.coreos.com/v1",
        "PrometheusRule",
    )
    assert manifest["metadata"] == {
        "name": "csuite-async-obs",
        "labels": {"app.kubernetes.io/name": "csuite-async-obs"},
    }
    files = rule_files(config)
    assert manifest["spec"]["groups"] == [
        g for t in files.values() for g in yaml.safe_load(t)["groups"]
    ]
    named = yaml.safe_load(
        prometheus_rule(
            config,
            ExportOptions(
                manifest_name="celery-rules",
                manifest_namespace="monitoring",
                manifest_labels={"release": "kube-prometheus-stack"},
            ),
        )
    )
    assert named["metadata"] == {
        "name": "celery-rules",
        "namespace": "monitoring",
        "labels": {
            "app.kubernetes.io/name": "csuite-async-obs",
            "release": "kube-prometheus-stack",
        },
    }


def test_grafana_provisioning_points_at_the_dashboards_path() -> None:
    provider = yaml.safe_load(grafana_provisioning(ExportOptions(grafana_dashboards_path="/d/x")))
    assert provider["apiVersion"] == 1
    [entry] = provider["providers"]
    assert (entry["type"], entry["folder"], entry["options"]["path"]) == ("file", "Celery", "/d/x")


@pytest.mark.parametrize(
    ("alerts", "key", "value"),
    [
        ({"CeleryQueueBackogGrowing": {"threshold": 5}}, "alerts.CeleryQueueBackogGrowing",
         "CeleryQueueBackogGrowing"),
        ({"CeleryWorkerConsumerDown": {"threshold": 1}}, "alerts.CeleryWorkerConsumerDown.threshold",
         1.0),
        ({"CeleryQueueOldestMessageTooOld": {"window": "5m"}},
         "alerts.CeleryQueueOldestMessageTooOld.window", "5m"),
        ({"CeleryWorkerSaturated": {"threshold": 90}}, "alerts.CeleryWorkerSaturated.threshold",
         90.0),
        ({"CeleryTaskFailureRatioHigh": {"window": "2h"}}, "alerts.CeleryTaskFailureRatioHigh.window",
         "2h"),
        ({"CeleryQueueWaitHigh": {"for": "ten minutes"}}, "alerts.CeleryQueueWaitHigh.for",
         "ten minutes"),
        ({"CeleryQueueWaitHigh": {"severity": "page"}}, "alerts.CeleryQueueWaitHigh.severity",
         "page"),
    ],
)  # fmt: skip
def test_config_errors_name_key_and_value(alerts: dict[str, Any], key: str, value: Any) -> None:
    with pytest.raises(MonitoringConfigError) as caught:
        rule_files(MonitoringConfig.from_mapping({"alerts": alerts}))
    assert (caught.value.key, caught.value.value) == (key, value)
    assert str(caught.value).startswith(f"monitoring config: {key} = {value!r}: expected ")


def test_typed_config_is_validated_too() -> None:
    config = MonitoringConfig(
        selectors=Selectors(worker='job="w"'), alerts={"NoSuchAlert": AlertTuning()}
    )
    with pytest.raises(MonitoringConfigError, match=r"alerts\.NoSuchAlert = 'NoSuchAlert'"):
        rule_files(config)


def test_export_command_reports_a_bad_config_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("selectors: {worker: 'job=celery'}\n")
    result = subprocess.run(
        [sys.executable, "-m", "csuite_async_obs.cli", "monitoring", "export",
         "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(
        "csuite-async-obs: monitoring config: selectors.worker = 'job=celery': expected PromQL"
    ), result.stderr
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_export_command_writes_rules_and_manifest(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "csuite_async_obs.cli", "monitoring", "export",
         "--out", str(tmp_path), "--format", "rules", "--format", "operator",
         "--manifest-label", "release=prom"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        str(tmp_path / "prometheus" / "recording.rules.yml"),
        str(tmp_path / "prometheus" / "alerts.rules.yml"),
        str(tmp_path / "kubernetes" / "prometheusrule.yaml"),
    ]
    for name, text in rule_files(MonitoringConfig()).items():
        assert (tmp_path / "prometheus" / name).read_text() == text
    manifest = yaml.safe_load((tmp_path / "kubernetes" / "prometheusrule.yaml").read_text())
    assert manifest["metadata"]["labels"]["release"] == "prom"


def test_export_command_writes_the_grafana_files(tmp_path: Path) -> None:
    pytest.importorskip("grafana_foundation_sdk")
    from csuite_async_obs.monitoring.dashboards import render

    config_file = tmp_path / "monitoring.yml"
    config_file.write_text(
        CUSTOM + "dashboards: {title_prefix: 'Team ', tags: [celery, team], uid_prefix: team-}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "csuite_async_obs.cli", "monitoring", "export",
         "--config", str(config_file), "--out", str(tmp_path), "--format", "grafana"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    boards = render(load_config(config_file))
    written = [Path(line) for line in result.stdout.splitlines()]
    assert written == [
        *(tmp_path / "grafana" / "dashboards" / name for name in boards),
        tmp_path / "grafana" / "provisioning" / "dashboards" / "csuite-async-obs.yaml",
    ]
    for name, text in boards.items():
        assert (tmp_path / "grafana" / "dashboards" / name).read_text() == text
        board = json.loads(text)
        assert board["uid"].startswith("team-") and board["title"].startswith("Team ")
        assert board["tags"] == ["celery", "team"]
    provider = yaml.safe_load(written[-1].read_text())
    assert provider["providers"][0]["options"]["path"] == GRAFANA_DASHBOARDS_PATH


TOML_CUSTOM = """\
cluster_label = "cluster"
runbook_url = "https://wiki.example.com/celery#"
group_prefix = "prod"

[selectors]
worker = 'job="prod-workers"'
exporter = 'job=~"prod-queue-.*"'
beat = 'job="prod-beat"'

[alerts.CeleryQueueBacklogGrowing]
threshold = 500
for = "30m"
window = "20m"
severity = "critical"

[alerts.CeleryTaskFailureRatioHigh]
threshold = 0.25
window = "15m"

[alerts.CeleryQueueOldestMessageTooOld]
threshold = 900

[alerts.CeleryWorkerSaturated]
enabled = false
"""


def test_toml_file_form_is_the_yaml_one(tmp_path: Path) -> None:
    """The same config as TOML and as YAML: the same config, the same rule files."""
    if sys.version_info < (3, 11):
        with pytest.raises(MonitoringConfigError, match=r"tomllib is 3\.11"):
            (tmp_path / "m.toml").write_text(TOML_CUSTOM)
            load_config(tmp_path / "m.toml")
        return
    (tmp_path / "m.toml").write_text(TOML_CUSTOM)
    (tmp_path / "m.yaml").write_text(CUSTOM)
    from_toml, from_yaml = load_config(tmp_path / "m.toml"), load_config(tmp_path / "m.yaml")
    assert from_toml == from_yaml
    assert from_toml != MonitoringConfig()
    assert rule_files(from_toml) == rule_files(from_yaml)
    (tmp_path / "bad.toml").write_text('[alerts.CeleryQueueBacklogGrowing]\nthreshold = "lots"\n')
    with pytest.raises(MonitoringConfigError, match="lots"):
        load_config(tmp_path / "bad.toml")


def test_rule_writer_spells_plain_mapping_groups_back_exactly() -> None:
    """The SLO groups come as plain mappings: any key, quoted numbers, multi-line exprs."""
    from csuite_async_obs.monitoring.yamltext import dump_groups

    groups = [
        {
            "name": "x.slo",
            "interval": "30s",
            "rules": [
                {"record": "slo:x:ratio", "expr": "sum(rate(a[5m]))", "labels": {"ratio": "0.995"}},
                {"alert": "A", "expr": "a > 1\nand b", "for": "1h",
                 "labels": {"severity": "critical", "odd": "#: {x}"},
                 "annotations": {"summary": 'say "hi"', "description": "word " * 40}},
            ],
        }
    ]  # fmt: skip
    text = dump_groups(groups)
    assert yaml.safe_load(text) == {"groups": groups}
    assert '        labels:\n          ratio: "0.995"\n' in text


def _groups(config: MonitoringConfig) -> dict[str, dict[str, Any]]:
    return {g["name"]: g for t in rule_files(config).values() for g in yaml.safe_load(t)["groups"]}


def test_long_window_rules_have_a_group_and_interval_of_their_own() -> None:
    """The rules reading every sample of the long window run every long_window_interval;
    the rest of the recording rules at the global interval, in the group the alerts read
    first."""
    groups = _groups(MonitoringConfig())
    long, short = groups["csuite-async-obs.recording.long"], groups["csuite-async-obs.recording"]
    assert long["interval"] == "1m" and "interval" not in short
    assert [r["record"] for r in long["rules"]] == [
        "task:celery_task_executions:increase1h",
        "task:celery_task_failures:increase1h",
        "task:celery_task_failures:ratio1h",
    ]
    assert not any("[1h]" in r["expr"] for r in short["rules"])
    # The window follows the alert's tuning; null leaves the interval to Prometheus.
    tuned = MonitoringConfig.from_mapping(
        {"alerts": {"CeleryRareTaskFailed": {"window": "2h"}}, "long_window_interval": "2m"}
    )
    long = _groups(tuned)["csuite-async-obs.recording.long"]
    assert long["interval"] == "2m"
    assert all("[2h]" in r["expr"] for r in long["rules"][:2])
    unset = _groups(MonitoringConfig.from_mapping({"long_window_interval": None}))
    assert "interval" not in unset["csuite-async-obs.recording.long"]
    # auto (the default): 1m, or a quarter of a window shorter than 4m, so that a
    # config with short windows stays valid without naming the interval.
    short = MonitoringConfig.from_mapping(
        {"alerts": {"CeleryRareTaskFailed": {"window": "2m"},
                    "CeleryTaskFailureRatioHigh": {"window": "1m"}}}
    )  # fmt: skip
    assert short.long_window_interval == "auto"
    assert _groups(short)["csuite-async-obs.recording.long"]["interval"] == "30s"


@pytest.mark.parametrize(
    ("data", "value", "expected"),
    [
        ({"long_window_interval": "a minute"}, "a minute", "a Prometheus duration"),
        # Past the 5 m lookback the alerts would see gaps between evaluations.
        ({"long_window_interval": "3m"}, "3m", "at most 2m"),
        ({"long_window_interval": "0s"}, "0s", "above 0"),
        # A quarter of the window at most: a failure must not come and go unseen.
        ({"long_window_interval": "2m", "alerts": {"CeleryRareTaskFailed": {"window": "6m"},
                                                 "CeleryTaskFailureRatioHigh": {"window": "5m"}}},
         "2m", "a quarter of CeleryRareTaskFailed's window (6m)"),
    ],
)  # fmt: skip
def test_long_window_interval_errors_name_it(
    data: dict[str, Any], value: str, expected: str
) -> None:
    with pytest.raises(MonitoringConfigError) as caught:
        rule_files(MonitoringConfig.from_mapping(data))
    assert (caught.value.key, caught.value.value) == ("long_window_interval", value)
    assert expected in str(caught.value)
