"""``csuite-async-obs doctor`` against a real Prometheus scraping real workers.

Prometheus (Debian's binary, scraping and evaluating every second) loads the
shipped rule files.  A healthy setup passes every check and exits 0; then each
broken setup fails exactly the checks meant for it, names what is broken and
exits 1: a publisher whose clock is ahead of the worker's, the broker stopped
(stale poll), Prometheus without the rule files, a target on a dead port and one
that is up without our metrics, a worker without queue depth (the queue alerts'
series absent), and the age series dropped by the scrape (one alert blind, the
alert that looks for that absence not).  Unreachable Prometheus and a bad selector
exit 2 with one line.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from kombu import Connection

from csuite_async_obs.monitoring import doctor
from csuite_async_obs.monitoring.config import MonitoringConfig
from csuite_async_obs.monitoring.doctor import (
    Check,
    DoctorLimits,
    PrometheusAPI,
    run_checks,
)
from csuite_async_obs.protocol import PUBLISHED_AT_HEADER
from csuite_async_obs.servers.processes import free_port
from csuite_async_obs.servers.prometheus_server import PrometheusServer
from csuite_async_obs.servers.redis_server import RedisServer
from csuite_async_obs.task_api.app import get_celery_app

from .support import PYTHON, ROOT, Worker, base_env, wait_for
from .test_alerts_e2e import publish_raw

RULE_FILES = (ROOT / "alerts" / "recording.rules.yml", ROOT / "alerts" / "alerts.rules.yml")
CHECKS = [
    "targets",
    "queue-depth poll",
    "rules",
    "alert series",
    "label overflow",
    "instrumentation errors",
    "clocks",
    "series per worker",
]
# Workers poll every second here, so 5 s is the short form of the 60 s default.
MAX_POLL_AGE = 5.0
LIMITS = DoctorLimits(max_poll_age=MAX_POLL_AGE)
# Publishes tests.ok with a publish time 30 s ahead (CELERY_BROKER_URL would win over
# Celery(broker=...): the connection is given).
SKEWED_PUBLISHER = """
import sys, time
from celery import Celery
from kombu import Connection
with Connection(sys.argv[1]) as connection:
    Celery().send_task(
        "tests.ok", connection=connection, headers={"csuite_published_at": time.time() + 30}
    )
"""
BEAT_ALERTS = ("CeleryBeatDown", "CeleryBeatEntryOverdue", "CeleryPeriodicTaskNotSucceeded")
NO_BEAT = "no selectors.beat, and no target served celery_beat_up in the last day"
QUEUE_ALERTS = {
    "CeleryQueueNotDraining",
    "CeleryQueueBacklogGrowing",
    "CeleryQueueOldestMessageTooOld",
    "CeleryQueueOldestMessageAgeUnknown",
    "CeleryQueueDepthPollingFailing",
}


def _rules() -> tuple[int, set[str]]:
    """(number of rules, alert names) of the shipped files."""
    count, alerts = 0, set()
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            count += len(group["rules"])
            alerts |= {r["alert"] for r in group["rules"] if "alert" in r}
    return count, alerts


def _loaded_groups() -> list[dict[str, Any]]:
    """The shipped groups as Prometheus's /api/v1/rules lists them."""
    return [
        {
            "name": group["name"],
            "rules": [
                {"type": "alerting" if "alert" in r else "recording",
                 "name": r.get("alert") or r["record"], "query": r["expr"]}
                for r in group["rules"]
            ],
        }
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
    ]  # fmt: skip


class FakeAPI(PrometheusAPI):
    """Answers ``count(...)`` queries: a sample when ``has`` accepts the query's text."""

    def __init__(self, has: Callable[[str], bool]) -> None:
        super().__init__(doctor.Connection("http://unused"))
        self.has = has
        self.asked: list[str] = []

    def query(self, expr: str) -> list[dict[str, Any]]:
        self.asked.append(expr)
        return [{"metric": {}, "value": [0, "1"]}] if self.has(expr) else []


def checks(prometheus: PrometheusServer) -> list[Check]:
    return run_checks(PrometheusAPI(doctor.Connection(prometheus.url)), MonitoringConfig(), LIMITS)


def failing(result: Sequence[Check]) -> set[str]:
    return {c.name for c in result if not c.ok}


def settle(
    prometheus: PrometheusServer,
    expected: set[str],
    timeout: float = 150.0,
    until: Callable[[dict[str, Check]], bool] = lambda checks: True,
) -> list[Check]:
    """Wait until exactly the ``expected`` checks fail (and ``until`` holds of the checks
    by name, the first of each); the checks then.

    The default timeout covers a minute of waiting for the rules to be evaluating:
    Prometheus first evaluates a group at its next interval boundary (offset by a hash
    of the group), a minute away for the 1m long-window group."""
    last: list[list[Check]] = [[]]

    def reached() -> bool:
        last[0] = checks(prometheus)
        assert [c.name for c in last[0] if c.name != "alert series"] == [
            n for n in CHECKS if n != "alert series"
        ]
        first = {c.name: c for c in reversed(last[0])}
        return failing(last[0]) == expected and until(first)

    try:
        wait_for(reached, timeout, message=f"failing checks {sorted(expected)}", interval=0.5)
    except TimeoutError as exc:
        lines = "\n".join(c.line() for c in last[0])
        raise AssertionError(f"{exc}\n{lines}\n--- prometheus ---\n{prometheus.log()}") from None
    return last[0]


def doctor_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [PYTHON, "-m", "csuite_async_obs.cli", "doctor", "--prometheus", url, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def doctor_json(url: str, failed: Sequence[str]) -> tuple[int, dict[str, Any]]:
    """The command's exit status and report once exactly ``failed`` fail, in that order.

    Retried with a deadline: on two shared cores a 1 s scrape can time out once, which
    fails the targets check for a second.
    """
    last: list[Any] = [None]

    def reached() -> bool:
        done = doctor_cli(url, "--json", "--max-poll-age", str(MAX_POLL_AGE))
        assert done.stderr == ""
        last[0] = (done.returncode, json.loads(done.stdout))
        return [c["name"] for c in last[0][1]["checks"] if not c["ok"]] == list(failed)

    try:
        wait_for(reached, 30, message=f"doctor failing {failed}", interval=0.5)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}: {last[0]}") from None
    return tuple(last[0])  # type: ignore[return-value]


def doctor_text(url: str, failed: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """The command's text run once exactly ``failed`` fail (see :func:`doctor_json`)."""
    last: list[Any] = [None]

    def reached() -> bool:
        last[0] = doctor_cli(url, "--max-poll-age", str(MAX_POLL_AGE))
        lines = last[0].stdout.splitlines()
        return [line.split(":")[0][6:] for line in lines if line.startswith("FAIL")] == list(failed)

    try:
        wait_for(reached, 30, message=f"doctor failing {failed}", interval=0.5)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}: {last[0]}") from None
    return last[0]  # type: ignore[no-any-return]


def _env(broker: str, **extra: str) -> dict[str, str]:
    return base_env(
        f"{broker}/0",
        f"{broker}/1",
        CSUITE_QUEUE_POLL_INTERVAL="1",
        CSUITE_QUEUE_POLL_TIMEOUT="1",
        **extra,
    )


@pytest.fixture()
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def _address(worker: Worker) -> str:
    return f"127.0.0.1:{worker.port}"


class DroppingPrometheus(PrometheusServer):
    """A Prometheus whose scrape drops some metrics, as a broker that lacks them would."""

    def __init__(self, drop: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.drop = drop

    def config(self, rule_paths: Sequence[Path]) -> dict[str, Any]:
        config = super().config(rule_paths)
        for scrape in config["scrape_configs"]:
            scrape["metric_relabel_configs"] = [
                {"source_labels": ["__name__"], "regex": self.drop, "action": "drop"}
            ]
        return config


def test_healthy_then_clock_skew_then_stale_poll(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    worker = Worker(_env(private_redis.url), tmp_path, pool="solo")
    prometheus = PrometheusServer({"celery-workers": [_address(worker)]}, RULE_FILES)
    try:
        worker.start()
        prometheus.start()

        # Healthy: every check passes, in process and through the command (and every
        # group has run: right after the start the 1m one is pending, which passes too).
        result = settle(prometheus, set(), until=lambda c: "not evaluated" not in c["rules"].detail)
        by_name = {c.name: c for c in result}
        rules, alerts = _rules()
        assert by_name["targets"].detail == "1 worker target(s) up and serving our metrics"
        groups = len(_loaded_groups())
        assert (
            by_name["rules"].detail == f"{groups} group(s), {rules} rules, healthy and evaluating"
        )
        # No celery beat here: its alerts are not applicable, not "can never fire".
        assert by_name["alert series"].detail == (
            f"all {len(alerts) - 3} alerts that apply have the series they read; not "
            f"applicable without a celery beat target ({NO_BEAT}): " + ", ".join(BEAT_ALERTS)
        )
        ours = [s for s in worker.scrape() if s.name.startswith(("celery_", "csuite_"))]
        assert by_name["series per worker"].detail == (
            f"{_address(worker)} (job celery-workers) {len(ours)} (bound 10000)"
        )
        code, report = doctor_json(prometheus.url, [])
        assert code == 0, report
        assert report["ok"] is True
        assert [c["name"] for c in report["checks"]] == CHECKS
        text = doctor_text(prometheus.url, [])
        assert text.returncode == 0
        lines = text.stdout.splitlines()
        assert len(lines) == len(CHECKS)
        assert all(line.startswith("ok    ") for line in lines), lines

        # A publisher 30 s ahead of the worker: its message's wait is clamped at 0 and counted.
        # A publisher of its own, without csuite-async-obs: in this process an instrumented
        # app's before_task_publish handler (Celery's signals are global) would restamp it.
        subprocess.run([PYTHON, "-c", SKEWED_PUBLISHER, f"{private_redis.url}/0"], check=True,
                       timeout=60)  # fmt: skip
        wait_for(
            lambda: worker.scrape().sum("celery_task_succeeded_total") == 1,
            30,
            message="the skewed task done",
        )
        scraped = worker.scrape()
        assert (
            scraped.value(
                "celery_task_queue_wait_clamped_total", name="tests.ok", queue_name="celery"
            )
            == 1
        )
        assert scraped.sum("celery_task_queue_wait_clamped_total") == 1
        # Recorded as a wait of 0: in the first bucket.
        assert (
            scraped.value(
                "celery_task_queue_wait_seconds_sum", name="tests.ok", queue_name="celery"
            )
            == 0
        )
        assert (
            scraped.value(
                "celery_task_queue_wait_seconds_count", name="tests.ok", queue_name="celery"
            )
            == 1
        )
        result = settle(prometheus, {"clocks"})
        clocks = next(c for c in result if c.name == "clocks")
        assert clocks.detail == (
            "queue waits clamped at 0 (a publisher's clock ahead of the worker's) in 1h: "
            f"{_address(worker)} (job celery-workers): 1"
        )
        assert "NTP" in clocks.fix
        code, report = doctor_json(prometheus.url, ["clocks"])
        assert code == 1 and report["ok"] is False

        # The broker stopped: the poll goes stale, the rest is unchanged.
        private_redis.stop()
        result = settle(prometheus, {"clocks", "queue-depth poll"}, timeout=60)
        poll = next(c for c in result if c.name == "queue-depth poll")
        assert poll.detail.startswith(
            f"1 of 1 stale (bound 5s): {_address(worker)} (job celery-workers) last success "
        )
        assert "broker" in poll.fix
        text = doctor_text(prometheus.url, ["queue-depth poll", "clocks"])
        assert text.returncode == 1
    finally:
        worker.stop()
        prometheus.stop()


def test_broken_setups_are_named(redis_server: RedisServer, tmp_path: Path) -> None:
    worker = Worker(_env(redis_server.url), tmp_path, pool="solo")
    try:
        worker.start()

        # Prometheus without the rule files.
        with PrometheusServer({"celery-workers": [_address(worker)]}) as prometheus:
            result = settle(prometheus, {"rules", "alert series"})
            rules = next(c for c in result if c.name == "rules")
            assert rules.detail == (
                "rule group(s) csuite-async-obs.recording, csuite-async-obs.recording.long, "
                "csuite-async-obs.alerts not loaded"
            )
            assert "rule_files" in rules.fix
            code, _ = doctor_json(prometheus.url, ["rules", "alert series"])
            assert code == 1

        # A target on a dead port, and one up without our metrics (Prometheus's own).
        ports = {worker.port}
        while len(ports) < 3:  # two free ports may come out equal
            ports.add(free_port())
        port, dead = sorted(ports - {worker.port})
        targets = [_address(worker), f"127.0.0.1:{dead}", f"127.0.0.1:{port}"]
        with PrometheusServer({"celery-workers": targets}, RULE_FILES, port=port) as prometheus:
            # Prometheus's first scrape of itself may come before it listens.
            result = settle(
                prometheus,
                {"targets"},
                until=lambda checks: checks["targets"].detail.startswith("2 of 3 failing: "),
            )
            check = next(c for c in result if c.name == "targets")
            assert check.detail.startswith("2 of 3 failing: ")
            assert f"127.0.0.1:{dead} (job celery-workers): " in check.detail
            assert "connection refused" in check.detail
            assert (
                f"127.0.0.1:{port} (job celery-workers) up without celery_worker_up, "
                "csuite_async_obs_instrumentation_errors_total"
            ) in check.detail
            assert "start the worker" in check.fix and "instrument" in check.fix
            code, _ = doctor_json(prometheus.url, ["targets"])
            assert code == 1

        # The scrape drops the oldest message's age, as RabbitMQ without its management
        # API lacks it: the alert on it can never fire; the alert that looks for its
        # absence (an `unless`) can, and is not reported.
        with DroppingPrometheus(
            "celery_queue_oldest_message_age_seconds",
            {"celery-workers": [_address(worker)]},
            RULE_FILES,
        ) as prometheus:
            result = settle(prometheus, {"alert series"})
            blind = [c for c in result if c.name == "alert series"]
            assert [c.detail for c in blind] == [
                "CeleryQueueOldestMessageTooOld can never fire: no series of "
                "celery_queue_oldest_message_age_seconds"
            ]
            assert "RabbitMQ management API" in blind[0].fix
            assert "enabled: false" in blind[0].fix
            code, _ = doctor_json(prometheus.url, ["alert series"])
            assert code == 1
    finally:
        worker.stop()


def test_overflow_errors_series_bound_and_a_failing_rule_are_named(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    """What the counters checks and the rules check are for, on a real Prometheus: task
    names past the worker's cap, an error caught in a hook, more series than the bound,
    and one of our rules failing at every evaluation."""
    # Its registered tasks fill the cap of 1 as it starts, before any scrape: that first
    # value is not an increase, and the checks pass until something overflows later.
    worker = Worker(_env(private_redis.url, CSUITE_MAX_TASK_NAMES="1"), tmp_path, pool="solo")
    # Our recording group with one rule more that fails at each evaluation: two input
    # series whose labels differ only in their name collide once it is replaced.
    recording = yaml.safe_load(RULE_FILES[0].read_text())
    recording["groups"][0]["rules"].append(
        {"record": "doctor:collides", "expr": '{__name__=~"up|scrape_samples_scraped"}'}
    )
    broken = tmp_path / "recording.rules.yml"
    broken.write_text(yaml.safe_dump(recording, sort_keys=False))
    prometheus = PrometheusServer({"celery-workers": [_address(worker)]}, (broken, RULE_FILES[1]))
    try:
        worker.start()
        prometheus.start()
        failing_rule = "doctor:collides: vector contains metrics with the same labelset"
        result = settle(prometheus, {"rules"},
                        until=lambda c: c["rules"].detail.count(failing_rule) == 1)  # fmt: skip
        rules = next(c for c in result if c.name == "rules")
        assert "same labelset" in rules.detail, rules.detail
        ours = len([x for x in worker.scrape() if x.name.startswith(("celery_", "csuite_"))])
        bounded = run_checks(
            PrometheusAPI(doctor.Connection(prometheus.url)),
            MonitoringConfig(),
            DoctorLimits(max_poll_age=MAX_POLL_AGE, max_series=ours - 1),
        )
        series = next(c for c in bounded if c.name == "series per worker")
        assert not series.ok
        assert series.detail == (
            f"1 over {ours - 1}: {_address(worker)} (job celery-workers) {ours}"
        ), series.detail

        # After the scrapes began: a task name past the cap, and a publish time no float
        # holds (the started hook catches the OverflowError and counts it).
        app = get_celery_app()
        with Connection(f"{private_redis.url}/0") as connection:
            app.send_task("tests.boom", connection=connection)
        publish_raw(app, f"{private_redis.url}/0", "tests.ok", "celery",
                    {PUBLISHED_AT_HEADER: 10**400})  # fmt: skip
        wait_for(lambda: worker.scrape().sum("celery_task_started_total") == 2, 30,
                 message="both tasks started")  # fmt: skip
        scraped = worker.scrape()
        assert scraped.value("csuite_async_obs_instrumentation_errors_total", hook="started") == 1
        assert scraped.value("csuite_async_obs_label_overflow_total", label="name") >= 1
        expected = {"rules", "label overflow", "instrumentation errors"}
        result = settle(
            prometheus, expected, until=lambda c: c["rules"].detail.count(failing_rule) == 1
        )
        by_name = {c.name: c for c in result}
        where = f"{_address(worker)} (job celery-workers)"
        assert by_name["label overflow"].detail.startswith(
            f"label values reported as 'other' in 1h: {where} name: "
        ), by_name["label overflow"].detail
        assert "CSUITE_MAX_TASK_NAMES" in by_name["label overflow"].fix
        assert by_name["instrumentation errors"].detail.startswith(
            f"errors caught in the instrumentation in 1h: {where} started: "
        ), by_name["instrumentation errors"].detail
        code, report = doctor_json(
            prometheus.url, ["rules", "label overflow", "instrumentation errors"]
        )
        assert code == 1 and report["ok"] is False
    finally:
        worker.stop()
        prometheus.stop()


def test_alerts_without_their_series(redis_server: RedisServer, tmp_path: Path) -> None:
    """A worker without queue depth and no exporter: every queue alert is blind."""
    worker = Worker(_env(redis_server.url, CSUITE_QUEUE_DEPTH="false"), tmp_path, pool="solo")
    try:
        worker.start()
        with PrometheusServer({"celery-workers": [_address(worker)]}, RULE_FILES) as prometheus:
            result = settle(prometheus, {"queue-depth poll", "alert series"})
            blind = {c.detail.split()[0]: c.detail for c in result if c.name == "alert series"}
            assert set(blind) == QUEUE_ALERTS
            assert blind["CeleryQueueDepthPollingFailing"].endswith(
                "no series of celery_queue_length_last_success_timestamp_seconds, "
                "celery_queue_length_poll_errors_total"
            )
            poll = next(c for c in result if c.name == "queue-depth poll")
            assert poll.detail.startswith("no process reports queue depth")
            failed = ["queue-depth poll", *["alert series"] * len(QUEUE_ALERTS)]
            code, _ = doctor_json(prometheus.url, failed)
            assert code == 1
    finally:
        worker.stop()


def test_unreachable_prometheus_and_bad_selector_exit_2() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    done = doctor_cli(dead)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"csuite-async-obs doctor: cannot query Prometheus: {dead}: [Errno 111] Connection refused"
    ]
    done = doctor_cli(dead, "--selector", "job=celery")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "csuite-async-obs doctor: monitoring config: selectors.worker = 'job=celery': "
        'expected PromQL label matchers such as job="celery" or job=~"celery-.*"'
    ]


# --------------------------------------------------------------------------- beat, without a server


def _worker_metric(expr: str) -> bool:
    return "celery_beat_" not in expr and "up{" not in expr


def test_beat_alerts_are_not_applicable_without_a_beat_target() -> None:
    api = FakeAPI(_worker_metric)
    [check] = doctor.check_alert_series(api, _loaded_groups(), MonitoringConfig())
    _, alerts = _rules()
    assert check.ok, check
    assert check.detail == (
        f"all {len(alerts) - 3} alerts that apply have the series they read; not applicable "
        f"without a celery beat target ({NO_BEAT}): " + ", ".join(BEAT_ALERTS)
    )
    assert "count(last_over_time(celery_beat_up[1d]))" in api.asked
    # With a selector, a target it matches is what counts.
    config = MonitoringConfig.from_mapping({"selectors": {"beat": 'job="celery-beat"'}})
    api = FakeAPI(_worker_metric)
    [check] = doctor.check_alert_series(api, _loaded_groups(), config)
    assert check.ok and check.detail.endswith(
        '(up{job="celery-beat"}): ' + ", ".join(BEAT_ALERTS)
    ), check.detail


def test_beat_alerts_apply_with_a_beat_target() -> None:
    config = MonitoringConfig.from_mapping({"selectors": {"beat": 'job="celery-beat"'}})
    _, alerts = _rules()
    # The beat target serves its metrics (a dead beat's count for a day), and no worker
    # has a last-success series: a task never succeeded can still fire.
    api = FakeAPI(lambda e: "celery_task_last_success" not in e)
    assert doctor.check_alert_series(api, _loaded_groups(), config) == [
        Check("alert series", True, f"all {len(alerts)} alerts have the series they read")
    ]
    assert 'count(last_over_time(celery_beat_up{job="celery-beat"}[1d]))' in api.asked
    # A target the selector matches that serves none of beat's metrics: its alerts cannot fire.
    api = FakeAPI(lambda e: "celery_beat_" not in e)
    blind = doctor.check_alert_series(api, _loaded_groups(), config)
    assert [(c.ok, c.detail) for c in blind] == [
        (False, "CeleryBeatDown can never fire: no series of celery_beat_up"),
        (False, "CeleryBeatEntryOverdue can never fire: no series of "
                "celery_beat_entry_next_due_timestamp_seconds"),
        (False, "CeleryPeriodicTaskNotSucceeded can never fire: no series of "
                "celery_beat_entry_last_sent_timestamp_seconds"),
    ]  # fmt: skip
    assert all("selectors.beat" in c.fix for c in blind)


def test_a_rule_reading_its_own_value_needs_its_other_operands() -> None:
    """The last-success rule carries its own last value: that loop supplies nothing, so
    the periodic alert needs the workers' gauge (and beat's send times), no more."""
    from csuite_async_obs.monitoring.rules import alert_groups, recording_groups
    from csuite_async_obs.monitoring.yamltext import Rule

    config = MonitoringConfig()
    rules = [
        rule
        for group in (*recording_groups(config), *alert_groups(config))
        for rule in group.rules
        if isinstance(rule, Rule)
    ]
    recorded = {r.record: r.expr for r in rules if r.record}
    alert = next(r for r in rules if r.alert == "CeleryPeriodicTaskNotSucceeded")
    gauge = "celery_task_last_success_timestamp_seconds"
    sent = "celery_beat_entry_last_sent_timestamp_seconds"
    assert doctor.needed_metrics(alert.expr, lambda name: True, recorded) == set()
    assert doctor.needed_metrics(alert.expr, lambda name: name != sent, recorded) == {sent}
    # Without the gauge the alert can still fire (a task never succeeded), but the rule
    # it reads records nothing:
    record = "name:celery_task_last_success_timestamp_seconds:max8d"
    assert doctor.needed_metrics(recorded[record], lambda name: name != gauge, recorded) == {gauge}


def test_counter_checks_count_between_raw_samples_without_extrapolation() -> None:
    from csuite_async_obs.monitoring.doctor import _counted

    # One rise (0 -> 1): 1, where increase() extrapolated it up to 2 over a short span.
    assert _counted([[0, "0"], [10, "0"], [20, "1"]]) == 1
    # A restart between the second and third sample: 2 before it, 3 after.
    assert _counted([[0, "1"], [10, "3"], [20, "1"], [30, "3"]]) == 2 + 3
    assert _counted([[0, "5"]]) == 0  # one sample: nothing seen to happen
    assert _counted([]) == 0


EVALUATED = "2027-01-15T08:00:00.25Z"


def _evaluated_groups(slow: float = 0.2, long_ran: bool = True) -> list[dict[str, Any]]:
    """The shipped groups as /api/v1/rules lists them at :data:`EVALUATED`: every 10 s, the
    long one every 60 s; the recording group's last evaluation took ``slow``; the long
    group has not run yet when not ``long_ran`` (Go's zero time, rules of health unknown)."""

    def ran(group: Mapping[str, Any]) -> bool:
        return long_ran or not group["name"].endswith(".long")

    return [
        {**g, "interval": 60 if g["name"].endswith(".long") else 10,
         "lastEvaluation": EVALUATED if ran(g) else "0001-01-01T00:00:00Z",
         "evaluationTime": (slow if g["name"] == "csuite-async-obs.recording" else 0.2)
         if ran(g) else 0,
         "rules": [{**r, "health": "ok" if ran(g) else "unknown"} for r in g["rules"]]}
        for g in _loaded_groups()
    ]  # fmt: skip


def test_a_group_slower_than_its_interval_is_named() -> None:
    """A group whose evaluation outlasts its interval skips evaluations (seen in the fleet
    benchmark: the recording group took 12.7 s of a 10 s interval at 1,000 workers)."""
    last = doctor._parse_time(EVALUATED)
    assert last is not None
    now = last + 5
    healthy = doctor.check_rules(_evaluated_groups(9.5), MonitoringConfig(), now)
    assert healthy.ok, healthy.detail
    groups = len(_loaded_groups())
    assert healthy.detail == f"{groups} group(s), {_rules()[0]} rules, healthy and evaluating"
    slow = doctor.check_rules(_evaluated_groups(12.7), MonitoringConfig(), now)
    assert not slow.ok
    assert slow.detail == (
        "csuite-async-obs.recording's last evaluation took 12.7s, over its 10s interval"
    )
    assert "long_window_interval" in slow.fix


def test_a_group_not_evaluated_within_its_interval_of_a_reload_is_pending() -> None:
    """A group first runs at its next interval boundary: right after a reload the 1m
    long-window group has not run yet, and that is no failure; later it is."""
    last = doctor._parse_time(EVALUATED)
    assert last is not None
    now = last + 5
    groups = _evaluated_groups(long_ran=False)
    fresh = doctor.check_rules(groups, MonitoringConfig(), now, loaded_at=now - 30)
    assert fresh.ok, fresh.detail
    assert fresh.detail.endswith(
        "(csuite-async-obs.recording.long not evaluated yet: the configuration was loaded 30s "
        "ago, within the group's interval)"
    ), fresh.detail
    late = doctor.check_rules(groups, MonitoringConfig(), now, loaded_at=now - 71)
    assert not late.ok
    assert late.detail.startswith("csuite-async-obs.recording.long not evaluated yet"), late.detail
    # Not knowing when the configuration was loaded: as before, not evaluated is failing.
    assert not doctor.check_rules(groups, MonitoringConfig(), now).ok
