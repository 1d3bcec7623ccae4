"""From the wheel, installed in a fresh virtualenv outside the checkout: the export command
writes rule files promtool accepts and the repo's promtool unit tests pass on, and
``demo --prometheus`` shows the rule groups Prometheus's API lists.

The wheel is built from a copy of the package's sources (not the checkout, whose
``build/`` may hold stale modules) and installed once per session with its
dependencies from the package index; every command runs with no ``PYTHONPATH`` and
from a folder outside the checkout, so only the installed package can answer.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from csuite_async_obs.servers.prometheus_server import PrometheusServer, find_prometheus
from csuite_async_obs.servers.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
UNIT_TESTS = sorted((ROOT / "alerts" / "tests").glob("*.test.yml"))

pytestmark = pytest.mark.skipif(
    shutil.which("promtool") is None or find_prometheus() is None,
    reason="needs Debian's prometheus and promtool",
)


def _clean_env() -> dict[str, str]:
    """The environment without anything that points at the checkout or a broker."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith(("CELERY_", "CSUITE_"))
    }


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ folder of a fresh virtualenv with the wheel installed."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "csuite_async_obs",
        source / "csuite_async_obs",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(base / "dist"),
         str(source)],
        check=True, cwd=base, env=_clean_env(), timeout=300,
    )  # fmt: skip
    [wheel] = (base / "dist").glob("csuite_async_obs-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "csuite_async_obs/monitoring/rules.py" in names
    # The default dashboards ride along as package data, for installs without the SDK.
    assert {
        "csuite_async_obs/monitoring/default_dashboards/overview.json",
        "csuite_async_obs/monitoring/default_dashboards/task.json",
    } <= set(names)
    assert not [n for n in names if n.startswith(("alerts/", "tests/"))], names
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        check=True, cwd=base, env=_clean_env(), timeout=600,
    )  # fmt: skip
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import csuite_async_obs; print(csuite_async_obs.__file__)"],
        check=True, capture_output=True, text=True, cwd=base, env=_clean_env(),
    ).stdout.strip()  # fmt: skip
    assert Path(where).is_relative_to(venv), where
    return venv / "bin"


def test_exported_rules_from_the_wheel_pass_promtool(installed: Path, tmp_path: Path) -> None:
    out = tmp_path / "monitoring"
    result = subprocess.run(
        [str(installed / "csuite-async-obs"), "monitoring", "export", "--out", str(out),
         "--format", "rules", "--format", "operator"],
        capture_output=True, text=True, cwd=tmp_path, env=_clean_env(), timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    recording = out / "prometheus" / "recording.rules.yml"
    alerts = out / "prometheus" / "alerts.rules.yml"
    assert result.stdout.splitlines() == [
        str(recording), str(alerts), str(out / "kubernetes" / "prometheusrule.yaml")
    ]  # fmt: skip
    # The same bytes as the checkout's committed files: one generator.
    for path in (recording, alerts):
        assert path.read_text() == (ROOT / "alerts" / path.name).read_text()

    check = subprocess.run(
        ["promtool", "check", "rules", str(recording), str(alerts)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout == (
        f"Checking {recording}\n  SUCCESS: 14 rules found\n\n"
        f"Checking {alerts}\n  SUCCESS: 19 rules found\n\n"
    )

    # The repo's unit tests, pointed at the exported files.
    tests = tmp_path / "unit-tests"
    tests.mkdir()
    for source in UNIT_TESTS:
        document = yaml.safe_load(source.read_text())
        assert document["rule_files"] == ["../recording.rules.yml", "../alerts.rules.yml"]
        document["rule_files"] = [str(recording), str(alerts)]
        (tests / source.name).write_text(yaml.safe_dump(document, sort_keys=False))
    copies = sorted(str(p) for p in tests.glob("*.test.yml"))
    assert len(copies) == len(UNIT_TESTS) == 6
    unit = subprocess.run(
        ["promtool", "test", "rules", *copies], capture_output=True, text=True, timeout=300
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert unit.stdout.count("  SUCCESS\n") == len(copies), unit.stdout
    assert "FAILED" not in unit.stdout + unit.stderr


def test_export_all_from_the_wheel_writes_the_grafana_files(
    installed: Path, tmp_path: Path
) -> None:
    """Without the Grafana SDK (not a dependency of the wheel), ``--format all`` writes the
    default dashboards from package data: the committed JSON, byte for byte."""
    out = tmp_path / "monitoring"
    result = subprocess.run(
        [str(installed / "csuite-async-obs"), "monitoring", "export", "--out", str(out),
         "--format", "all", "--grafana-dashboards-path", "/srv/dash", "--grafana-folder", "Ops"],
        capture_output=True, text=True, cwd=tmp_path, env=_clean_env(), timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    boards = out / "grafana" / "dashboards"
    provisioning = out / "grafana" / "provisioning" / "dashboards" / "csuite-async-obs.yaml"
    assert result.stdout.splitlines() == [
        str(out / "prometheus" / "recording.rules.yml"),
        str(out / "prometheus" / "alerts.rules.yml"),
        str(out / "kubernetes" / "prometheusrule.yaml"),
        str(boards / "overview.json"),
        str(boards / "task.json"),
        str(provisioning),
    ]
    for name in ("overview.json", "task.json"):
        assert (boards / name).read_text() == (ROOT / "dashboards" / name).read_text()
    provider = yaml.safe_load(provisioning.read_text())
    [entry] = provider["providers"]
    assert (entry["type"], entry["folder"], entry["options"]["path"]) == (
        "file",
        "Ops",
        "/srv/dash",
    )


def test_demo_from_the_wheel_shows_the_rule_groups_prometheus_loaded(
    installed: Path, tmp_path: Path
) -> None:
    result = subprocess.run(
        [str(installed / "csuite-async-obs"), "demo", "--prometheus", "--duration", "3",
         "--metrics-port", str(free_port())],
        capture_output=True, text=True, cwd=tmp_path, env=_clean_env(), timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    [loaded] = [line for line in lines if "rule groups loaded" in line]
    assert loaded == (
        "prometheus: rule groups loaded (read from /api/v1/rules): "
        "csuite-async-obs.recording (11 rules), csuite-async-obs.recording.long (3 rules), "
        "csuite-async-obs.alerts (16 rules), "
        "csuite-async-obs.periodic (3 rules)"
    ), lines
    assert re.match(
        r"prometheus: http://127\.0\.0\.1:\d+ \(alerts at ", lines[lines.index(loaded) - 1]
    )
    assert lines[-1] == "stopped", lines


def test_the_demo_check_fails_loudly_when_prometheus_has_no_rules() -> None:
    from csuite_async_obs.demo.runner import _wait_for_rule_groups

    with PrometheusServer() as prometheus, pytest.raises(RuntimeError) as caught:
        _wait_for_rule_groups(prometheus, {"csuite-async-obs.alerts": 16}, timeout=1)
    assert str(caught.value) == (
        f"prometheus at {prometheus.url} lists rule groups none, expected "
        "{'csuite-async-obs.alerts': 16}: the rule files were not loaded (see its log)"
    )
