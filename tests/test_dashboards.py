"""The committed dashboards are exactly what the generator makes for the default config
(csuite_async_obs/monitoring/boards.py, written by dashboards/generate.py), the package's
shipped copies too, and they are sound.

Also the home of the PromQL helpers the rule and end-to-end tests share:
metric names used by an expression, Grafana variable substitution, and the
list of every series name the package exports.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from csuite_async_obs.metrics.catalog import METRICS

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "dashboards"
GENERATOR = DASHBOARDS / "generate.py"
SHIPPED = ROOT / "csuite_async_obs" / "monitoring" / "default_dashboards"
# Today's uids: the default config's output keeps them.
OVERVIEW_UID = "csuite-async-obs-overview"
TASK_UID = "csuite-async-obs-task"
PROMTOOL = "promtool"

# Series that dashboards and rules may read besides the package's own: `up` is
# written by Prometheus for every target, and only it can tell a dead worker.
PROMETHEUS_SERIES = frozenset({"up"})
VARIABLES = ("datasource", "job", "instance", "queue_name", "task")

# --------------------------------------------------------------------------- shared helpers


def exported_series() -> frozenset[str]:
    """Every series name the package exposes (histograms as _bucket/_sum/_count)."""
    names: set[str] = set()
    for spec in METRICS:
        if spec.type == "histogram":
            names |= {spec.name + "_bucket", spec.name + "_sum", spec.name + "_count"}
        else:
            names.add(spec.name)
    return frozenset(names)


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_TOKEN = re.compile(r"\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[a-z]*|([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan", "Inf", "NaN",
})  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names an expression (variables already substituted) selects.

    Strips strings, label matchers, ranges and grouping clauses, then keeps the
    identifiers that are not functions, aggregations or keywords.
    """
    text = _STRING.sub('""', expr)
    text = _BRACES.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _TOKEN.finditer(text):
        name, call = match.group(1), match.group(2)
        if name and not call and name not in _KEYWORDS:
            names.add(name)
    return names


GRAFANA_INTERVALS = {"__rate_interval": "1m", "__range": "1h", "__interval": "30s"}
ALL = {"job": ".*", "instance": ".*", "queue_name": ".*", "task": ".*"}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace ``$name`` and ``${name}`` as Grafana would; an unknown variable raises KeyError."""

    def one(match: re.Match[str]) -> str:
        return values[match.group(1) or match.group(2)]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


def load_generator() -> ModuleType:
    # The Grafana Foundation SDK needs Python 3.11+; the committed JSON is checked without it.
    pytest.importorskip("grafana_foundation_sdk")
    spec = importlib.util.spec_from_file_location("csuite_dashboards_generate", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def committed() -> dict[str, dict[str, Any]]:
    """File name -> parsed JSON of every committed dashboard."""
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(board: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def targets(board: Mapping[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every query of the dashboard."""
    for panel in panels(board):
        for target in panel.get("targets", []):
            yield panel, target


def variable_queries(board: Mapping[str, Any]) -> dict[str, str]:
    return {
        v["name"]: v["query"]
        for v in board["templating"]["list"]
        if v["type"] == "query"
    }  # fmt: skip


_LABEL_VALUES = re.compile(r"^label_values\((.+), (\w+)\)$")


def label_values(query: str) -> tuple[str, str]:
    """(series selector, label) of a Grafana ``label_values(selector, label)`` query."""
    match = _LABEL_VALUES.match(query)
    assert match, f"not a label_values() query: {query}"
    return match.group(1), match.group(2)


# --------------------------------------------------------------------------- tests


@pytest.mark.generator
def test_committed_json_is_what_the_generator_makes() -> None:
    rendered = load_generator().render()
    on_disk = {p.name: p.read_text() for p in sorted(DASHBOARDS.glob("*.json"))}
    assert sorted(on_disk) == sorted(rendered) == ["overview.json", "task.json"]
    for name, text in rendered.items():
        assert on_disk[name] == text, (
            f"dashboards/{name} is stale: run python dashboards/generate.py"
        )


@pytest.mark.generator
def test_shipped_copies_are_what_the_generator_makes() -> None:
    """The wheel's default dashboards (for installs without the SDK) cannot drift."""
    from csuite_async_obs.monitoring.dashboards import shipped_defaults

    rendered = load_generator().render()
    assert sorted(p.name for p in SHIPPED.glob("*.json")) == sorted(rendered)
    assert shipped_defaults() == rendered


@pytest.mark.generator
def test_generator_check_mode_passes_on_the_committed_files() -> None:
    result = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.generator
def test_generator_check_mode_fails_on_a_stale_file(tmp_path: Path) -> None:
    generator = load_generator()
    generator.__dict__["HERE"] = tmp_path  # where main() reads and writes
    (tmp_path / "overview.json").write_text("{}\n")
    assert generator.main(["--check"]) == 1
    assert generator.main([]) == 0
    assert generator.main(["--check"]) == 0
    assert (tmp_path / "overview.json").read_text() == (DASHBOARDS / "overview.json").read_text()


def test_variables() -> None:
    for name, board in committed().items():
        found = [v["name"] for v in board["templating"]["list"]]
        assert found == list(VARIABLES), name
        ds = board["templating"]["list"][0]
        assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
        queries = variable_queries(board)
        assert queries == {
            "job": "label_values(celery_worker_up, job)",
            "instance": 'label_values(celery_worker_up{job=~"$job"}, instance)',
            "queue_name": 'label_values(celery_task_received_total{job=~"$job"}, queue_name)',
            "task": 'label_values(celery_task_received_total{job=~"$job", queue_name=~"$queue_name"}, name)',
        }, name
    overview, task = committed()["overview.json"], committed()["task.json"]
    assert [v.get("multi") for v in overview["templating"]["list"][1:]] == [True] * 4
    # The task dashboard shows one task at a time.
    assert task["templating"]["list"][4]["multi"] is False


def test_every_panel_queries_prometheus_through_the_datasource_variable() -> None:
    for name, board in committed().items():
        for panel in panels(board):
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (
                name,
                panel["title"],
            )
            assert panel["targets"], (name, panel["title"])
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert ref_ids == [chr(ord("A") + i) for i in range(len(ref_ids))], (
                name,
                panel["title"],
            )


def test_panel_ids_are_unique_and_panels_fit_the_grid() -> None:
    for name, board in committed().items():
        ids = [p["id"] for p in panels(board)]
        assert ids == list(range(1, len(ids) + 1)), name
        for panel in panels(board):
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, (name, panel["title"])


def test_metric_name_extraction() -> None:
    assert metric_names(
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{x=~"by (y)"}[5m])))'
    ) == {"a_bucket"}
    assert metric_names("up == 0 and on (job) group by (job) (last_over_time(j:b:c[1d]))") == {
        "up", "j:b:c"
    }  # fmt: skip
    assert metric_names("time() - x > 60 unless y offset 5m") == {"x", "y"}
    assert metric_names('sum(rate(z{state="failed"}[1m])) / sum(rate(z[1m])) > bool 1e3') == {"z"}


def test_dashboards_use_exported_metrics_and_every_exported_metric() -> None:
    exported = exported_series()
    used: set[str] = set()
    for name, board in committed().items():
        for panel, target in targets(board):
            expr = substitute(target["expr"], {**GRAFANA_INTERVALS, **ALL})
            names = metric_names(expr)
            assert names, (name, panel["title"], expr)
            unknown = names - exported - PROMETHEUS_SERIES
            assert not unknown, (
                f"{name} / {panel['title']} reads series the package does not export: {unknown}"
            )
            used |= names
        for query in variable_queries(board).values():
            selector, _ = label_values(query)
            names = metric_names(substitute(selector, ALL))
            assert names <= exported, (name, query)
    assert exported - used == set(), f"exported but on no panel: {sorted(exported - used)}"
    assert used - exported == {"up"}


def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query (variables substituted) as a recording rule's expression."""
    rules: list[dict[str, str]] = []
    for board in committed().values():
        for _, target in targets(board):
            expr = substitute(target["expr"], {**GRAFANA_INTERVALS, **ALL})
            rules.append({"record": f"dashboard:query:{len(rules)}", "expr": expr})
        for query in variable_queries(board).values():
            selector, _ = label_values(query)
            rules.append(
                {"record": f"dashboard:query:{len(rules)}", "expr": substitute(selector, ALL)}
            )
    path = tmp_path / "queries.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_overview_tables_link_to_the_task_dashboard() -> None:
    overview = committed()["overview.json"]
    task = committed()["task.json"]
    assert task["uid"] == TASK_UID
    linked = {}
    for panel in panels(overview):
        for override in panel.get("fieldConfig", {}).get("overrides", []):
            for prop in override["properties"]:
                if prop["id"] == "links":
                    linked[panel["title"]] = (override["matcher"], prop["value"])
    assert sorted(linked) == ["Top exceptions", "Top failing tasks"]
    for title, (matcher, links) in linked.items():
        assert matcher == {"id": "byName", "options": "name"}
        [link] = links
        url = link["url"]
        assert url.startswith(f"/d/{TASK_UID}/"), url
        assert "var-task=${__data.fields.name}" in url
        assert "var-queue_name=${__data.fields.queue_name}" in url
        assert "${__url_time_range}" in url and "${datasource:queryparam}" in url
        # The columns the link reads are grouping labels of every query of the table.
        panel = next(p for p in panels(overview) if p["title"] == title)
        for target in panel["targets"]:
            assert target["instant"] is True and target["format"] == "table"
            for grouping in re.findall(r"by \(([^)]*)\)", target["expr"]):
                assert {"name", "queue_name"} <= {g.strip() for g in grouping.split(",")}, target[
                    "expr"
                ]
    # And back.
    assert [link["url"] for link in task["links"]] == [
        f"/d/{OVERVIEW_UID}/csuite-async-obs-overview"
    ]
    assert [link["url"] for link in overview["links"]] == [f"/d/{TASK_UID}/csuite-async-obs-task"]


REQUIRED_OVERVIEW_PANELS = (
    "Throughput by outcome", "Failure ratio by task", "Runtime p50 / p95 / p99",
    "Queue wait p50 / p95 / p99", "Queue length", "Oldest message age", "Saturation by worker",
    "Saturation", "Workers up", "Retries by task", "Time-limit kills", "Lost pool children",
    "Top failing tasks", "Top exceptions",
    "Schedule entries", "Beat up and entries", "Since beat's last tick",
)  # fmt: skip


@pytest.mark.parametrize("title", REQUIRED_OVERVIEW_PANELS)
def test_overview_has_the_panels_the_issue_asks_for(title: str) -> None:
    titles = [p.get("title") for p in panels(committed()["overview.json"])]
    assert titles.count(title) == 1, title


def test_quantile_panels_show_p50_p95_p99() -> None:
    overview = committed()["overview.json"]
    for title, metric in (("Runtime p50 / p95 / p99", "celery_task_runtime_seconds_bucket"),
                          ("Queue wait p50 / p95 / p99", "celery_task_queue_wait_seconds_bucket")):  # fmt: skip
        panel = next(p for p in panels(overview) if p.get("title") == title)
        exprs = [t["expr"] for t in panel["targets"]]
        assert [re.match(r"histogram_quantile\(([\d.]+),", e).group(1) for e in exprs] == [  # type: ignore[union-attr]
            "0.5", "0.95", "0.99"
        ]  # fmt: skip
        assert all(
            metric_names(substitute(e, {**GRAFANA_INTERVALS, **ALL})) == {metric} for e in exprs
        )
        assert [t["legendFormat"] for t in panel["targets"]] == ["p50", "p95", "p99"]
