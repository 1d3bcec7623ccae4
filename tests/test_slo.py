"""Per-task SLOs (csuite_async_obs/monitoring/slo.py): the rules' shape, the glob, the checks,
promtool unit tests of fast and slow burns both ways, and a real Prometheus scraping a worker.

The promtool tests run the generated rules of a 28-day objective on one-minute
samples.  Every scenario also carries series that must not count: a task whose
name differs only where the glob has regex metacharacters, the same task in a
job the selector leaves out, and the non-final or not-the-task's-fault states
(retried, revoked, ignored, rejected) at high rates.  Counting any of them would
make a "not firing" scenario fire or dilute a "firing" one.

The end-to-end test uses a window of 28d / 60 = 11h12m, so that every burn-rate
window is sixty times shorter than the workbook's (the page's 1h & 5m become
1m & 5s): a worker runs ``tests.flaky`` ten times a second, first with a
failure ratio inside the budget (nothing may be pending), then failing every
call, until the page fires.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from csuite_async_obs.monitoring.config import (
    SLO,
    LatencyObjective,
    MonitoringConfig,
    MonitoringConfigError,
    Selectors,
)
from csuite_async_obs.monitoring.slo import (
    FAST,
    REMAINING,
    SLOW,
    glob_to_regex,
    slo_dashboard,
    slo_rule_groups,
    slo_windows,
    task_matcher,
)
from csuite_async_obs.servers.prometheus_server import PrometheusServer
from csuite_async_obs.task_api.app import get_celery_app

from .support import wait_for
from .test_alerts_e2e import has_finite_value
from .test_dashboards import substitute

ROOT = Path(__file__).resolve().parent.parent
TASK = "shop.checkout+v2.pay"
CONFIG = MonitoringConfig(
    selectors=Selectors(worker='job="celery"'),
    cluster_label="cluster",
    slos=(
        SLO("checkout", "shop.checkout+v2.*", success_ratio=0.99,
            latency=LatencyObjective(threshold_seconds=1.0, ratio=0.95)),
    ),
)  # fmt: skip


# --------------------------------------------------------------------------- shape


def test_no_slos_no_rules_no_dashboard() -> None:
    assert slo_rule_groups(MonitoringConfig()) == []
    assert slo_dashboard(MonitoringConfig()) is None


def test_windows_are_the_workbooks_scaled_to_the_slo_window() -> None:
    def pairs(window: str) -> list[tuple[str, float, str, str]]:
        slo = SLO("x", "t", success_ratio=0.9, window=window)
        return [(w.alert, w.factor, w.long, w.short) for w in slo_windows(slo)]

    assert pairs("28d") == [(FAST, 14.4, "1h", "5m"), (FAST, 6, "6h", "30m"),
                            (SLOW, 3, "1d", "2h"), (SLOW, 1, "3d", "6h")]  # fmt: skip
    assert pairs("4w") == pairs("28d")
    assert pairs("7d") == [(FAST, 14.4, "15m", "1m15s"), (FAST, 6, "1h30m", "7m30s"),
                           (SLOW, 3, "6h", "30m"), (SLOW, 1, "18h", "1h30m")]  # fmt: skip
    assert pairs("11h12m") == [(FAST, 14.4, "1m", "5s"), (FAST, 6, "6m", "30s"),
                               (SLOW, 3, "24m", "2m"), (SLOW, 1, "1h12m", "6m")]  # fmt: skip
    with pytest.raises(MonitoringConfigError) as caught:
        pairs("2h")
    assert caught.value.key == "slos.x.window"


GLOBS = ("shop.checkout+v2.*", "a?c", "report[0-9]", "x[!ab]y", "[]]z", "[!]]z", "odd[", "a**b",
         "p(q)|r{2}^$", "back\\slash*", "class[.+]", "uni€*")  # fmt: skip
NAMES = ("shop.checkout+v2.pay", "shopXcheckout+v2.pay", "shop.checkouttv2.pay", "abc", "a.c",
         "ac", "report7", "reportx", "xcy", "xay", "]z", "az", "odd[", "oddx", "ab", "a.x.b",
         "p(q)|r{2}^$", "pq", "back\\slashed", "backXslash", "class.", "class+", "classx",
         "uni€code", "unicode")  # fmt: skip


@pytest.mark.parametrize("glob", GLOBS)
def test_glob_regex_matches_what_fnmatch_matches(glob: str) -> None:
    # PromQL anchors =~ at both ends, as fullmatch does; RE2 and Python's re
    # agree on this subset (no lookarounds, no backreferences, escaped punctuation).
    regex = re.compile(glob_to_regex(glob))
    for name in (*NAMES, glob):
        assert bool(regex.fullmatch(name)) == fnmatch.fnmatchcase(name, glob), (glob, name)


def test_matchers() -> None:
    assert task_matcher("shop.checkout+v2.*") == r'name=~"shop\\.checkout\\+v2\\..*"'
    assert task_matcher("x[!ab]y") == 'name=~"x[^ab]y"'
    assert task_matcher("plain.task") == 'name="plain.task"'
    assert task_matcher('we"ird\\') == r'name="we\"ird\\"'


def test_rule_shape(tmp_path: Path) -> None:
    (group,) = slo_rule_groups(CONFIG)
    assert group["name"] == "csuite-async-obs.slo.checkout"
    names = [(r.get("record") or r["alert"], r["labels"]["objective"]) for r in group["rules"]]
    ratios = [f"slo:celery_task_sli_error:ratio_rate{w}" for w in
              ("5m", "30m", "1h", "2h", "6h", "1d", "3d", "28d")]  # fmt: skip
    per_objective = ["slo:celery_task_sli_errors:rate5m", "slo:celery_task_sli_events:rate5m",
                     *ratios, REMAINING]  # fmt: skip
    assert names == [(n, "success") for n in per_objective] + [
        (n, "latency") for n in per_objective
    ] + [(FAST, "success"), (SLOW, "success"), (FAST, "latency"), (SLOW, "latency")]
    rules = {(r.get("record") or r["alert"], r["labels"]["objective"]): r for r in group["rules"]}
    sel = r'job="celery", name=~"shop\\.checkout\\+v2\\..*"'
    assert rules["slo:celery_task_sli_errors:rate5m", "success"]["expr"] == (
        f'sum by (cluster) (rate(celery_task_runtime_seconds_count{{{sel}, state="failed"}}[5m]))'
    )
    assert rules["slo:celery_task_sli_events:rate5m", "success"]["expr"] == (
        f"sum by (cluster) (rate(celery_task_runtime_seconds_count{{{sel}, "
        'state=~"succeeded|failed"}[5m]))'
    )
    assert rules["slo:celery_task_sli_errors:rate5m", "latency"]["expr"] == (
        f'sum by (cluster) (rate(celery_task_runtime_seconds_count{{{sel}, state="succeeded"}}[5m]))'
        f"\n-\nsum by (cluster) (rate(celery_task_runtime_seconds_bucket{{{sel}, "
        'state="succeeded", le="1.0"}[5m]))'
    )
    on = '{slo="checkout", objective="success"}'
    assert rules[ratios[-1], "success"]["expr"] == (
        f"sum_over_time(slo:celery_task_sli_errors:rate5m{on}[28d])\n/\n"
        f"(sum_over_time(slo:celery_task_sli_events:rate5m{on}[28d]) > 0)"
    )
    assert rules[REMAINING, "success"]["expr"] == f"1 - {ratios[-1]}{on} / 0.01"
    page = rules[FAST, "success"]
    assert page["expr"] == (
        f"(\n  slo:celery_task_sli_error:ratio_rate1h{on} / 0.01 > 14.4\n  and\n"
        f"  slo:celery_task_sli_error:ratio_rate5m{on} / 0.01 > 14.4\n)\nor\n"
        f"(\n  slo:celery_task_sli_error:ratio_rate6h{on} / 0.01 > 6\n  and\n"
        f"  slo:celery_task_sli_error:ratio_rate30m{on} / 0.01 > 6\n)"
    )
    assert "for" not in page
    assert page["labels"] == {"severity": "critical", "slo": "checkout", "objective": "success"}
    assert page["annotations"]["runbook"] == "alerts/README.md#celeryslofastburn"
    assert rules[SLOW, "latency"]["labels"]["severity"] == "warning"
    for rule in group["rules"]:
        assert rule["labels"]["slo"] == "checkout"
    # promtool accepts the file.
    result = promtool_run("check", "rules", str(write_rules(tmp_path, CONFIG)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_selector_and_no_cluster_label() -> None:
    config = MonitoringConfig(slos=(SLO("r", "reports.build", success_ratio=0.995),))
    rules = slo_rule_groups(config)[0]["rules"]
    assert rules[0]["expr"] == (
        'sum (rate(celery_task_runtime_seconds_count{name="reports.build", state="failed"}[5m]))'
    )
    assert rules[-2]["expr"].count("/ 0.005 > 14.4") == 2
    assert "$labels.cluster" not in rules[-2]["annotations"]["summary"]


def test_le_is_matched_as_exposed() -> None:
    def le(threshold: float, buckets: tuple[float, ...] | None = None) -> str:
        config = MonitoringConfig(
            runtime_buckets=buckets,
            slos=(SLO("l", "t", latency=LatencyObjective(threshold, 0.9)),),
        )
        expr = slo_rule_groups(config)[0]["rules"][0]["expr"]
        found = re.search(r"le=~?\"([^\"]*)\"", expr)
        assert found is not None
        return found.group(0)

    assert le(30) == 'le="30.0"'
    assert le(0.01) == 'le="0.01"'
    assert le(0.5) == 'le="0.5"'
    # From 1e6 prometheus_client (and Prometheus 3) write Go's form, this package's
    # renderer Python's repr: both match.
    assert le(1e6, (1.0, 1e6)) == r'le=~"1000000\\.0|1e\\+06"'


def test_latency_threshold_must_be_a_bucket_boundary() -> None:
    config = MonitoringConfig(slos=(SLO("rep", "t", latency=LatencyObjective(20, 0.9)),))
    with pytest.raises(MonitoringConfigError) as caught:
        slo_rule_groups(config)
    assert caught.value.key == "slos.rep.latency.threshold_seconds"
    assert caught.value.value == 20
    assert "runtime_buckets: 0.01, 0.05," in str(caught.value)
    with pytest.raises(MonitoringConfigError):
        slo_dashboard(config)
    # The workers' own buckets, when the config gives them.
    custom = MonitoringConfig(
        runtime_buckets=(5.0, 20.0), slos=(SLO("rep", "t", latency=LatencyObjective(20, 0.9)),)
    )
    assert 'le="20.0"' in slo_rule_groups(custom)[0]["rules"][0]["expr"]
    file_form = MonitoringConfig.from_mapping(
        {"slos": [{"name": "rep", "task": "t", "latency": {"threshold_seconds": 45, "ratio": 0.9}}]}
    )
    with pytest.raises(
        MonitoringConfigError, match=re.escape("slos.rep.latency.threshold_seconds")
    ):
        slo_rule_groups(file_form)


def test_dashboard_reads_the_recorded_series() -> None:
    board = slo_dashboard(CONFIG)
    assert board is not None
    assert board["uid"] == "csuite-slo"
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource", "cluster"]
    titles = [p["title"] for p in board["panels"]]
    assert titles == [
        "checkout: success (shop.checkout+v2.*)", "Error budget left", "SLI over 28d",
        "Burn rate", "Error budget left over time",
        "checkout: latency (shop.checkout+v2.*)", "Error budget left", "SLI over 28d",
        "Burn rate", "Error budget left over time",
    ]  # fmt: skip
    recorded = {r["record"] for r in slo_rule_groups(CONFIG)[0]["rules"] if "record" in r}
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for expr in exprs:
        used = set(re.findall(r"slo:[a-z_]+:[a-z_0-9]+", expr))
        assert used and used <= recorded, expr
        assert 'cluster=~"$cluster"' in expr
    burn = board["panels"][3]
    assert [t["legendFormat"] for t in burn["targets"]] == [
        "{{cluster}} " + w for w in ("5m", "1h", "6h", "1d", "3d")
    ]
    assert [s["value"] for s in burn["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [
        None, 1, 3, 6, 14.4
    ]  # fmt: skip


def test_runbooks_and_readme() -> None:
    readme = (ROOT / "alerts" / "README.md").read_text()
    for name in (FAST, SLOW):
        section = readme.split(f"\n### {name}\n", 1)
        assert len(section) == 2, name
        body = section[1].split("\n### ", 1)[0]
        assert "**Means:**" in body and "**Check first:**" in body, name
    assert "## Task SLOs" in (ROOT / "README.md").read_text()


# --------------------------------------------------------------------------- promtool


def promtool_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=300)


def write_rules(folder: Path, config: MonitoringConfig) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "slo.rules.yml"
    path.write_text(yaml.safe_dump({"groups": slo_rule_groups(config)}, sort_keys=False))
    return path


def per_minute(*segments: tuple[int, float]) -> list[float]:
    """Increases a minute: ``(minutes, increase a minute)`` segments."""
    return [rate for minutes, rate in segments for _ in range(minutes)]


def counter(increases: list[float]) -> str:
    """A counter sampled every minute from 0, as promtool's values."""
    values, value = [0.0], 0.0
    for increase in increases:
        value += increase
        values.append(value)
    return " ".join(f"{v:.0f}" for v in values)


def series(suffix: str, state: str, values: str, *, name: str = TASK, job: str = "celery",
           le: str | None = None) -> dict[str, str]:  # fmt: skip
    labels = f'job="{job}", cluster="eu", instance="w1:9808", queue_name="q", name="{name}", '
    labels += f'state="{state}"' + (f', le="{le}"' if le else "")
    return {"series": f"celery_task_runtime_seconds_{suffix}{{{labels}}}", "values": values}


def executions(ok_fast: list[tuple[int, float]], ok_slow: list[tuple[int, float]],
               failed: list[tuple[int, float]]) -> list[dict[str, str]]:  # fmt: skip
    """The task's runtime series: successful runs under 1 s and over it, failures (all
    fast); and every series that must not count."""
    fast, slow, bad = per_minute(*ok_fast), per_minute(*ok_slow), per_minute(*failed)
    assert len(fast) == len(slow) == len(bad)
    ok = [f + s for f, s in zip(fast, slow, strict=True)]
    out = [
        series("count", "succeeded", counter(ok)),
        series("bucket", "succeeded", counter(fast), le="1.0"),
        series("bucket", "succeeded", counter(ok), le="2.5"),
        series("bucket", "succeeded", counter(ok), le="+Inf"),
        series("count", "failed", counter(bad)),
        series("bucket", "failed", counter(bad), le="1.0"),
    ]
    minutes = len(ok)
    busy = counter(per_minute((minutes, 300)))
    for state in ("retried", "revoked", "ignored", "rejected"):
        out += [series("count", state, busy), series("bucket", state, busy, le="1.0")]
    # Failing and slow, and must not be selected: "." and "+" of the glob are literal,
    # and the selector keeps job="celery" only.
    for extra in ({"name": "shopXcheckout+v2.pay"}, {"job": "other"}):
        out += [
            series("count", "failed", busy, **extra),
            series("count", "succeeded", busy, **extra),
            series("bucket", "succeeded", counter(per_minute((minutes, 0))), le="1.0", **extra),
        ]
    return out


def alert(rule: dict[str, Any], value: float) -> dict[str, Any]:
    """The alert ``rule`` fires with: labels, annotations with ``$value`` humanized."""
    text = {
        k: v.replace("{{ $value | humanize }}", f"{value:.4g}").replace(
            "{{ $labels.cluster }}", "eu"
        )
        for k, v in rule["annotations"].items()
    }
    return {"exp_labels": {**rule["labels"], "cluster": "eu"}, "exp_annotations": text}


def test_promtool_fast_and_slow_burns_fire_and_within_budget_does_not(tmp_path: Path) -> None:
    rules_path = write_rules(tmp_path, CONFIG)
    rules = {(r["alert"], r["labels"]["objective"]): r
             for r in slo_rule_groups(CONFIG)[0]["rules"] if "alert" in r}  # fmt: skip

    def expect(at: str, name: str, *fired: tuple[str, float]) -> dict[str, Any]:
        return {"eval_time": at, "alertname": name,
                "exp_alerts": [alert(rules[name, objective], v) for objective, v in fired]}  # fmt: skip

    tests = [
        # Success, fast: 100 a minute, clean for 2h, then half of them failing.  The
        # 1h ratio passes 14.4 x 1% after ~17 minutes (and the 6h one 6 x 1%); the
        # short history makes the 1d ratio (all of it) pass 3% already at 2h10m.
        {
            "series": executions([(120, 100), (60, 50)], [(180, 0)], [(120, 0), (60, 50)]),
            "alerts": [
                expect("2h10m", FAST),
                expect("2h10m", SLOW, ("success", 500 / 13000 / 0.01)),
                expect("2h25m", FAST, ("success", 1250 / 6000 / 0.01)),
                expect("2h25m", SLOW, ("success", 1250 / 14500 / 0.01)),
            ],
        },
        # Success, slow: 2% failing (2x): the 3d & 6h pair tickets, nothing pages.
        {
            "series": executions([(240, 98)], [(240, 0)], [(240, 2)]),
            "alerts": [
                expect("30m", FAST),
                expect("4h", FAST),
                expect("30m", SLOW, ("success", 2)),
                expect("4h", SLOW, ("success", 2)),
            ],
        },
        # Success, within budget: 0.5% failing (0.5x): nothing, ever; half the budget left.
        {
            "series": executions([(240, 199)], [(240, 0)], [(240, 1)]),
            "alerts": [expect(t, a) for t in ("10m", "1h", "4h") for a in (FAST, SLOW)],
            "values": [("4h", REMAINING, "success", 0.5)],
        },
        # Latency, fast (95% under 1 s, budget 5%): clean for 2h, then every run slow.
        # 14.4 x 5% over 1h after ~43 minutes, 6 x 5% over 6h after ~51.
        {
            "series": executions([(120, 100), (60, 0)], [(120, 0), (60, 100)], [(180, 0)]),
            "alerts": [
                expect("2h30m", FAST),
                expect("2h30m", SLOW, ("latency", 3000 / 15000 / 0.05)),
                expect("2h50m", FAST, ("latency", 5000 / 6000 / 0.05)),
                expect("2h50m", SLOW, ("latency", 5000 / 17000 / 0.05)),
            ],
        },
        # Latency, slow: 10% slow (2x): ticket only.  Failures (fast ones) do not count.
        {
            "series": executions([(240, 90)], [(240, 10)], [(240, 50)]),
            "alerts": [
                expect("1h", FAST, ("success", 50 / 150 / 0.01)),
                expect("1h", SLOW, ("success", 50 / 150 / 0.01), ("latency", 2)),
            ],
        },
        # Latency, within budget: 2% slow (0.4x): nothing; 60% of the budget left.
        {
            "series": executions([(240, 98)], [(240, 2)], [(240, 0)]),
            "alerts": [expect(t, a) for t in ("10m", "1h", "4h") for a in (FAST, SLOW)],
            "values": [("4h", REMAINING, "latency", 0.6)],
        },
        # Registered, never ran: no ratio at all (no NaN), no budget figure, no alert.
        {
            "series": executions([(60, 0)], [(60, 0)], [(60, 0)]),
            "alerts": [expect("1h", FAST), expect("1h", SLOW)],
            "empty": ["slo:celery_task_sli_error:ratio_rate5m", REMAINING],
        },
    ]
    document: dict[str, Any] = {"rule_files": [rules_path.name], "evaluation_interval": "1m",
                                "tests": []}  # fmt: skip
    for test in tests:
        item: dict[str, Any] = {"interval": "1m", "input_series": test["series"],
                                "alert_rule_test": test["alerts"]}  # fmt: skip
        exprs = []
        for at, metric, objective, value in test.get("values", []):
            # To a thousandth: the sum of 240 recorded rates is not exactly 0.6.
            exprs.append({
                "expr": f'round({metric}{{objective="{objective}"}}, 0.001)', "eval_time": at,
                "exp_samples": [{"labels": f'{{cluster="eu", slo="checkout", '
                                           f'objective="{objective}"}}', "value": value}],
            })  # fmt: skip
        for metric in test.get("empty", []):
            exprs.append({"expr": metric, "eval_time": "1h", "exp_samples": []})
        if exprs:
            item["promql_expr_test"] = exprs
        document["tests"].append(item)
    unit = tmp_path / "slo.test.yml"
    unit.write_text(yaml.safe_dump(document, sort_keys=False))
    result = promtool_run("test", "rules", str(unit))
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    assert "SUCCESS" in result.stdout


# --------------------------------------------------------------------------- end to end

JOB = "celery-slo"
E2E_SLO = SLO("flaky", "tests.fla*y", success_ratio=0.99, window="11h12m")  # 28d / 60
PER_SECOND = 10
WITHIN_BUDGET_SECONDS = 40.0
FAIL_EVERY = 200  # 0.5% failing: half the 1% budget, burn rate 0.5


class Publisher(threading.Thread):
    """Sends ``tests.flaky`` PER_SECOND times a second; every FAIL_EVERY-th call fails,
    or every call once :attr:`burst` is set."""

    def __init__(self) -> None:
        super().__init__(name="slo-publisher", daemon=True)
        self.app = get_celery_app()
        self.sent = self.failing = 0
        self.burst = threading.Event()
        self.paused = threading.Event()
        self.stopped = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        next_at = time.monotonic()
        try:
            while not self.stopped.is_set():
                if self.paused.is_set():
                    next_at = time.monotonic() + 0.05
                    self.stopped.wait(0.05)
                    continue
                fail = self.burst.is_set() or (self.sent + 1) % FAIL_EVERY == 0
                self.app.send_task("tests.flaky", args=(fail,), ignore_result=True)
                self.sent += 1
                self.failing += fail
                next_at += 1 / PER_SECOND
                self.stopped.wait(max(0.0, next_at - time.monotonic()))
        except BaseException as exc:  # noqa: BLE001 -- reported by stop()
            self.error = exc

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)
        assert self.error is None, f"publishing failed: {self.error!r}"


def slo_alerts(prom: PrometheusServer) -> list[dict[str, Any]]:
    """Active SLO alerts, pending or firing."""
    return [a for a in prom.alerts() if a["labels"]["alertname"] in (FAST, SLOW)]


@pytest.mark.parametrize("histograms", ["classic", "native"])
def test_failure_burst_pages_and_errors_within_budget_do_not(
    histograms: str, workers: Any, tmp_path: Path
) -> None:
    """On classic histograms (the text format), and on native ones: Prometheus with
    native histograms scrapes the protobuf exposition, the rules read histogram_count."""
    worker = workers(pool="solo")
    config = MonitoringConfig(
        selectors=Selectors(worker=f'job="{JOB}"'), slos=(E2E_SLO,), histograms=histograms
    )
    native = histograms == "native"
    windows = slo_windows(E2E_SLO)
    assert [(w.long, w.short) for w in windows] == [("1m", "5s"), ("6m", "30s"),
                                                    ("24m", "2m"), ("1h12m", "6m")]  # fmt: skip
    prom = PrometheusServer({JOB: [f"127.0.0.1:{worker.port}"]}, [write_rules(tmp_path, config)],
                            scrape_interval=1.0, evaluation_interval=1.0,
                            features=["native-histograms"] if native else [])  # fmt: skip
    publisher = Publisher()
    try:
        prom.start()
        prom.wait_for_targets()
        unhealthy = [r["name"] for g in prom.rules() for r in g["rules"] if r["health"] == "err"]
        assert unhealthy == []
        # 1. Within budget: nothing may even be pending, at any evaluation.
        publisher.start()
        end = time.monotonic() + WITHIN_BUDGET_SECONDS
        while time.monotonic() < end:
            assert slo_alerts(prom) == [], f"sent {publisher.sent}, {publisher.failing} failing"
            time.sleep(0.5)
        publisher.paused.set()
        sent, failing = publisher.sent, publisher.failing
        assert failing == sent // FAIL_EVERY
        # Every execution scraped, and past the 5 s window: each failure then
        # weighs as much as each other execution in the whole-window ratio.
        executed = (
            'sum(histogram_count(celery_task_runtime_seconds{name="tests.flaky"}))'
            if native
            else 'sum(celery_task_runtime_seconds_count{name="tests.flaky"})'
        )
        wait_for(lambda: prom.value(executed) == sent, 40, message="all executed and scraped")
        time.sleep(7.0)  # the 5 s rate window and a scrape: a duration, not a condition
        remaining = prom.value(f'{REMAINING}{{slo="flaky"}}')
        expected = 1 - failing / sent / 0.01
        # The sum of recorded 5 s rates is the traffic-weighted ratio up to the
        # edges of the series: within a tenth of the budget.
        assert remaining is not None and abs(remaining - expected) < 0.1, (remaining, expected)
        assert slo_alerts(prom) == []
        publisher.paused.clear()

        # 2. Every call fails: the page fires.
        publisher.burst.set()
        burst_at = time.monotonic()

        def paged() -> bool:
            return any(
                a["state"] == "firing" and a["labels"]["alertname"] == FAST
                for a in slo_alerts(prom)
            )

        wait_for(paged, 30, interval=0.25, message=f"{FAST} fires")
        fired_after = time.monotonic() - burst_at
        (page,) = [a for a in slo_alerts(prom) if a["labels"]["alertname"] == FAST]
        assert page["labels"] == {"alertname": FAST, "severity": "critical", "slo": "flaky",
                                  "objective": "success"}  # fmt: skip
        assert float(page["value"]) > 6  # the burn rate of the pair's long window
        also = sorted({a["labels"]["alertname"] for a in slo_alerts(prom)} - {FAST})
        # The SLO dashboard answers on what the rules recorded: every query, as Grafana
        # sends it (variables substituted), has a finite value now.
        board = slo_dashboard(config)
        assert board is not None
        values = {"cluster": ".*", "__rate_interval": "5s", "__interval": "1s", "__range": "5m"}
        queries = [
            substitute(t["expr"], values) for p in board["panels"] for t in p.get("targets", [])
        ]
        assert len(queries) == 8  # budget left, SLI, five burn rates, budget over time
        empty = [q for q in queries if not has_finite_value(prom.query(q))]
        assert empty == [], empty
        print(f"within budget: {sent} sent, {failing} failing, budget left {remaining:.3f} "
              f"(exactly {expected:.3f}); "
              f"burst: {FAST} fired after {fired_after:.1f} s (value {float(page['value']):.1f}); "
              f"also active: {also}")  # fmt: skip
    finally:
        publisher.stop() if publisher.is_alive() else None
        prom.stop()
