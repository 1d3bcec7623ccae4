"""The rule files: promtool accepts them, their unit tests pass and cover every alert both ways,
every alert is documented, and they read only series the package exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .test_dashboards import PROMETHEUS_SERIES, exported_series, metric_names

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "alerts"
RULE_FILES = (ALERTS / "recording.rules.yml", ALERTS / "alerts.rules.yml")
UNIT_TESTS = tuple(sorted((ALERTS / "tests").glob("*.test.yml")))
README = ALERTS / "README.md"
SEVERITIES = ("critical", "warning", "info")

EXPECTED_ALERTS = (
    "CeleryWorkersAllDown", "CeleryWorkerDown", "CeleryWorkerConsumerDown", "CeleryWorkerSaturated",
    "CeleryTaskFailureRatioHigh", "CeleryRareTaskFailed", "CeleryTaskTimeLimitExceeded",
    "CeleryTaskWorkerLost", "CeleryQueueNotDraining", "CeleryQueueBacklogGrowing",
    "CeleryQueueOldestMessageTooOld", "CeleryQueueOldestMessageAgeUnknown", "CeleryQueueWaitHigh",
    "CeleryQueueDepthPollingFailing",
    "CeleryInstrumentationErrors", "CeleryMetricsLabelOverflow",
    "CeleryBeatDown", "CeleryBeatEntryOverdue", "CeleryPeriodicTaskNotSucceeded",
)  # fmt: skip
GROUPS = (
    "csuite-async-obs.recording",
    "csuite-async-obs.recording.long",
    "csuite-async-obs.alerts",
    "csuite-async-obs.periodic",
)


def rules(kind: str) -> list[dict[str, Any]]:
    """Every rule of that kind ("record" or "alert") in the rule files, in order."""
    found = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            found += [rule for rule in group["rules"] if kind in rule]
    return found


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == (
        f"Checking {RULE_FILES[0]}\n  SUCCESS: 14 rules found\n\n"
        f"Checking {RULE_FILES[1]}\n  SUCCESS: 19 rules found\n\n"
    )
    assert result.stderr == ""


def test_promtool_unit_tests_pass() -> None:
    assert [p.name for p in UNIT_TESTS] == [
        "instrumentation.test.yml", "periodic.test.yml", "periodic_memory.test.yml",
        "queues.test.yml", "tasks.test.yml", "workers.test.yml",
    ]  # fmt: skip
    result = promtool("test", "rules", *map(str, UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("  SUCCESS\n") == len(UNIT_TESTS), result.stdout
    assert "FAILED" not in result.stdout + result.stderr


def test_the_alert_set() -> None:
    assert tuple(rule["alert"] for rule in rules("alert")) == EXPECTED_ALERTS


def test_unit_tests_cover_every_alert_firing_and_not_firing() -> None:
    firing: dict[str, int] = {}
    silent: dict[str, int] = {}
    for path in UNIT_TESTS:
        document = yaml.safe_load(path.read_text())
        assert document["rule_files"] == ["../recording.rules.yml", "../alerts.rules.yml"], path
        # Every group named: promtool evaluates the groups it is not given in any order.
        assert document["group_eval_order"] == list(GROUPS), path
        for case in document["tests"]:
            for check in case.get("alert_rule_test", []):
                name = check["alertname"]
                if check["exp_alerts"]:
                    firing[name] = firing.get(name, 0) + 1
                    for alert in check["exp_alerts"]:
                        # Exact annotations: the templates are rendered and checked too.
                        assert set(alert["exp_annotations"]) == {
                            "summary",
                            "description",
                            "runbook",
                        }
                else:
                    silent[name] = silent.get(name, 0) + 1
    assert sorted(firing) == sorted(EXPECTED_ALERTS), set(EXPECTED_ALERTS) ^ set(firing)
    assert sorted(silent) == sorted(EXPECTED_ALERTS), set(EXPECTED_ALERTS) ^ set(silent)


def test_minimum_volume_guard_is_unit_tested() -> None:
    """A task failing 100% of a handful of runs: not the ratio alert, but the rare-task alert."""
    document = yaml.safe_load((ALERTS / "tests" / "tasks.test.yml").read_text())
    case = document["tests"][0]
    series = {s["series"]: s["values"] for s in case["input_series"]}
    rare = [k for k in series if 'name="app.rare"' in k]
    assert len(rare) == 2
    checks = case["alert_rule_test"]
    ratio_names = [
        {a["exp_labels"]["name"] for a in c["exp_alerts"]}
        for c in checks if c["alertname"] == "CeleryTaskFailureRatioHigh"
    ]  # fmt: skip
    assert ratio_names == [{"app.busy"}, {"app.busy"}]
    rare_names = [
        [a["exp_labels"]["name"] for a in c["exp_alerts"]]
        for c in checks if c["alertname"] == "CeleryRareTaskFailed"
    ]  # fmt: skip
    assert rare_names == [[], ["app.rare"], ["app.rare"], []]


@pytest.mark.parametrize("rule", rules("alert"), ids=lambda r: r["alert"])
def test_alert_is_documented(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook"}
    assert annotations["summary"].strip() and annotations["description"].strip()
    assert annotations["runbook"] == f"alerts/README.md#{name.lower()}"
    readme = README.read_text()
    # A runbook section with what it means and what to check first.
    section = readme.split(f"\n### {name}\n", 1)
    assert len(section) == 2, f"no runbook section for {name}"
    body = section[1].split("\n### ", 1)[0]
    assert "**Means:**" in body and "**Check first:**" in body, name
    # And a row in the tuning table naming its severity and `for`.
    rows = [
        line for line in readme.splitlines() if line.startswith(f"| [{name}](#{name.lower()}) |")
    ]
    assert len(rows) == 1, name
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1] == rule["labels"]["severity"], name
    assert cells[2] == f"`{rule.get('for', '0m')}`", name


def test_rules_read_only_exported_series() -> None:
    exported = exported_series()
    recorded = [rule["record"] for rule in rules("record")]
    assert len(recorded) == len(set(recorded))
    used: set[str] = set()
    for rule in rules("record") + rules("alert"):
        names = metric_names(rule["expr"])
        assert names, rule
        unknown = names - exported - PROMETHEUS_SERIES - set(recorded)
        assert not unknown, (
            f"{rule.get('record') or rule.get('alert')} reads unknown series {unknown}"
        )
        used |= names
    # No recording rule is dead weight.
    assert set(recorded) - used == set()
    for name in recorded:
        assert re.fullmatch(r"[a-z_]+:[a-z_0-9]+:[a-z_0-9]+", name), name


def test_alerts_about_failures_never_read_the_failed_counter() -> None:
    """celery_task_failed_total appears at a task's first failure, which increase() cannot see."""
    for rule in rules("record") + rules("alert"):
        assert "celery_task_failed_total" not in metric_names(rule["expr"]), rule


def test_worker_down_is_never_detected_from_the_worker_up_value() -> None:
    """celery_worker_up vanishes with the process; it is never 0."""
    for rule in rules("record") + rules("alert"):
        assert not re.search(r"celery_worker_up\s*(==|<|!=)\s*0", rule["expr"]), rule


def test_readme_has_the_incident_table_markers() -> None:
    text = README.read_text()
    assert text.count("<!-- incident-table:begin -->") == 1
    assert text.count("<!-- incident-table:end -->") == 1


def test_example_prometheus_config_is_valid_and_loads_both_rule_files() -> None:
    result = promtool("check", "config", "examples/prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rule files found" in result.stdout
    config = yaml.safe_load((ROOT / "examples" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["../alerts/recording.rules.yml", "../alerts/alerts.rules.yml"]
    assert [job["job_name"] for job in config["scrape_configs"]] == [
        "celery-workers",
        "celery-queue-exporter",
        "celery-publishers",
    ]


def test_example_pod_monitor_scrapes_the_metrics_port() -> None:
    monitor = yaml.safe_load((ROOT / "examples" / "podmonitor.yaml").read_text())
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
