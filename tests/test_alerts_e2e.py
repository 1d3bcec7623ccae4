"""Dashboards and alerts against a real Prometheus scraping real workers on Redis and RabbitMQ.

One Prometheus session (scrape and rule evaluation every second) watches two
prefork workers on a private redis-server while the test publishes a scripted
workload, and two workers on a RabbitMQ vhost (queue depth from the management
API), each in a job of its own: one for the queue incidents, one with a cap of
three task names:

1. a clean mixed workload (successes, a 2.5% background failure rate on a busy
   task, retries, a rare task that succeeds): no alert may even be pending;
   :func:`test_a_clean_workload_of_30_minutes_fires_nothing` runs the same for
   30 minutes (marker ``slow``);
2. every panel query of every dashboard, variables substituted, returns data,
   every variable query returns values, and every rule expression evaluates;
3. incidents, each followed until the alerts meant for it fire: a failure burst
   in the busy task, one failure of the rare task, a pool child SIGKILLed, a
   task hitting its hard time limit, a message whose publish-time header no
   float can hold (these five at once, they concern different tasks and
   series), every pool slot held by a long task while the workload queues
   behind, the consumers cancelled while the queue grows and then restored,
   the broker stopped, every worker SIGKILLed;
   and, beside them, a real ``celery beat`` (a 5 s interval entry and an
   every-minute crontab, on the session's Redis with a worker of their queue):
   its task failing on every run while beat is healthy (with the five), the
   queue's only worker stopped while beat keeps sending (with the cancelled
   consumers: the backlog equals beat's sends), beat SIGKILLed (with every
   worker), then beat restarted on the same schedule file (its alerts resolve
   and nothing is overdue, even pending); beat's metrics are checked against
   the schedule and the worker's runs after the clean workload;
4. on RabbitMQ: the consumers cancelled while the queue grows (backlog growing,
   not draining, oldest message too old) and then restored, task names past
   the small-cap worker's cap meanwhile, then a standalone exporter whose
   management API is unreachable (passive declares: no ages).

Every alert of the rule files has at least one incident.  The rules are a copy
with shortened windows and ``for`` (see :func:`short_rules`); thresholds are the
real ones but three that are durations: the oldest message's 300 s (15 s), the
queue wait's 60 s (5 s), and the saturation's averaging window (5 s).  The
table of incident, alert and time to fire is checked against alerts/README.md,
and written into it when ``CSUITE_UPDATE_DOCS=1``; every alert that fires
besides an incident's own must have its reason in :data:`ECHOES`.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from celery import Celery
from kombu import Connection, Producer

from csuite_async_obs.config.celery_settings import CelerySettings
from csuite_async_obs.instrumentation.instrument import instrumentation_for
from csuite_async_obs.monitoring.config import AlertTuning, MonitoringConfig, Selectors
from csuite_async_obs.monitoring.export import write_rules
from csuite_async_obs.monitoring.rules import ALERTS
from csuite_async_obs.protocol import PUBLISHED_AT_HEADER
from csuite_async_obs.servers.processes import free_port, stop_process
from csuite_async_obs.servers.prometheus_server import PrometheusServer
from csuite_async_obs.servers.rabbitmq_server import RabbitMQServer
from csuite_async_obs.servers.redis_server import RedisServer
from csuite_async_obs.task_api.app import create_celery_app

from .support import PYTHON, Beat, Worker, base_env, wait_for
from .test_dashboards import label_values, substitute, targets, variable_queries

ROOT = Path(__file__).resolve().parent.parent
RULE_FILES = (ROOT / "alerts" / "recording.rules.yml", ROOT / "alerts" / "alerts.rules.yml")
README = ROOT / "alerts" / "README.md"
#: Set to 1 to rewrite alerts/README.md's incident table with this run's times.
UPDATE_DOCS = "CSUITE_UPDATE_DOCS"
BEGIN, END = "<!-- incident-table:begin -->", "<!-- incident-table:end -->"

JOB = "celery-workers"
QUEUE = "celery"
# The RabbitMQ worker: a job and a queue name of its own (the queue rules take
# max by (queue_name) across jobs: one broker's queue must not hide another's).
RABBIT_JOB = "celery-rabbitmq"
RABBIT_QUEUE = "e2e.rabbitmq"
EXPORTER_JOB = "celery-queue-exporter"
# A RabbitMQ worker whose task-name cap its registered tasks already exceed.
SMALL_CAP_JOB = "celery-small-cap"
SMALL_CAP_QUEUE = "e2e.small-cap"
MAX_TASK_NAMES = 3
# celery beat (5 s interval entry and an every-minute crontab) and the worker of
# its queue, on the session's Redis (the broker incident must not reach them).
BEAT_JOB = "celery-beat"
PERIODIC_JOB = "celery-periodic"
PERIODIC_QUEUE = "e2e.periodic"
PERIODIC_TASK = "tests.periodic"
PERIODIC_ENTRY = "every-5s"
PERIODIC_KEY = "periodic:every-5s"
PERIODIC_DB = 5
PERIODIC_GRACE = 5.0
# The Redis workers: every slot of their pools is what saturation counts.
WORKERS, CONCURRENCY = 2, 2
SLOTS = WORKERS * CONCURRENCY
# How long tests.hold keeps every slot busy: long enough for the saturation
# alert (5 s window + 3 s `for`), short enough that no task of the queue goes
# 15 s without starting (CeleryQueueNotDraining) or waits past the 15 s of the
# oldest-message threshold.
HOLD_SECONDS = 13.0
SCRAPE = 1.0
CLEAN_SECONDS = 60.0  # the clean workload; no incident may need longer to fire
SOAK_SECONDS = 30 * 60.0  # the same workload, opt-in (marker slow)
INCIDENT_DEADLINE = CLEAN_SECONDS
# The rules are generated from a monitoring config that is not the default: job
# selectors, a cluster label on every target, and every window, `for` and
# duration-like threshold shortened -- the incidents then prove a non-default config
# works on real workers labelled that way.  Windows scale by SHORT_WINDOWS, every
# `for` is 3s, and three thresholds that are durations are cut: the queue readings'
# staleness (and the poll-failing threshold, the same setting) 60 s -> 5 s (workers
# poll every second here), the oldest message's age 300 s -> 15 s, the queue wait
# 60 s -> 5 s; saturation is averaged over 5 s (enough to tell a full pool from a
# busy one, with tasks of 13 s).
SHORT_WINDOWS = {"5m": "15s", "10m": "30s", "1h": "60s", "1d": "10m", "8d": "10m"}
SHORT_FOR = "3s"
LONG_WINDOW_INTERVAL = "5s"
CLUSTER = "e2e"
SHORT_TUNING = {
    "CeleryQueueDepthPollingFailing": {"threshold": 5.0},
    "CeleryQueueOldestMessageTooOld": {"threshold": 15.0},
    "CeleryQueueWaitHigh": {"threshold": 5.0},
    "CeleryWorkerSaturated": {"window": "5s"},
    # One send of the 5 s entry late, or not succeeded, by 5 s.
    "CeleryBeatEntryOverdue": {"threshold": PERIODIC_GRACE},
    "CeleryPeriodicTaskNotSucceeded": {"threshold": PERIODIC_GRACE},
}


def e2e_config() -> MonitoringConfig:
    """The test's monitoring config (see above)."""
    alerts = {}
    for name, defaults in ALERTS.items():
        tuning = AlertTuning(
            for_=SHORT_FOR if defaults.for_ else None,
            window=SHORT_WINDOWS[defaults.window] if defaults.window else None,
        )
        alerts[name] = replace(tuning, **SHORT_TUNING.get(name, {}))  # type: ignore[arg-type]
    return MonitoringConfig(
        selectors=Selectors(
            worker=f'job=~"{JOB}|{RABBIT_JOB}|{SMALL_CAP_JOB}|{PERIODIC_JOB}"',
            exporter=f'job="{EXPORTER_JOB}"',
            beat=f'job="{BEAT_JOB}"',
        ),
        cluster_label="cluster",
        alerts=alerts,
        # Not the global 1 s: the long-window group's own cadence is exercised (auto
        # would give 15 s, a quarter of the 60 s window).
        long_window_interval=LONG_WINDOW_INTERVAL,
    )


# What Grafana would put in for a 1 s scrape interval: $__rate_interval is
# max(4 x scrape interval, $__interval + scrape interval).
RATE_INTERVAL = "4s"
STEP = 2.0


def short_rules(folder: Path) -> list[Path]:
    """The rule files of :func:`e2e_config`, written into ``folder``; checked to hold no
    window longer than the short ones (a window the config cannot set would show here)."""
    paths = write_rules(e2e_config(), folder)
    allowed = set(SHORT_WINDOWS.values()) | {"5s"}
    for path in paths:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                windows = set(re.findall(r"\[(\w+)\]", rule["expr"]))
                assert windows <= allowed, (rule.get("alert") or rule.get("record"), windows)
                if "for" in rule:
                    assert rule["for"] == SHORT_FOR, rule
                assert CLUSTER not in rule["expr"]  # the label is kept, never hard-coded
    return paths


# --------------------------------------------------------------------------- workload


class Workload(threading.Thread):
    """Publishes a steady mix: flaky 2/s, ok 1/s, sleep(0.2) every 2 s, retry_once every
    10 s, rare every 20 s.  ``fail_every`` makes every n-th flaky call fail (0: none)."""

    TICK = 0.25

    def __init__(self, app: Any, fail_every: int) -> None:
        super().__init__(name="e2e-workload", daemon=True)
        self.app = app
        self.fail_every = fail_every
        self.flaky_sent = 0
        self.flaky_failed = 0
        self._stop_event = threading.Event()
        self.error: BaseException | None = None

    def send(self, name: str, *args: Any) -> None:
        self.app.send_task(name, args=args, queue=QUEUE)

    def run(self) -> None:
        start = time.monotonic()
        tick = 0
        try:
            while not self._stop_event.is_set():
                if tick % 2 == 0:
                    self.flaky_sent += 1
                    fail = self.fail_every > 0 and self.flaky_sent % self.fail_every == 0
                    self.flaky_failed += fail
                    self.send("tests.flaky", fail)
                if tick % 4 == 1:
                    self.send("tests.ok", tick)
                if tick % 8 == 3:
                    self.send("tests.sleep", 0.2)
                if tick % 40 == 5:
                    self.send("tests.retry_once", 0.05)
                if tick % 80 == 7:
                    self.send("tests.rare", False)
                tick += 1
                self._stop_event.wait(max(0.0, start + tick * self.TICK - time.monotonic()))
        except BaseException as exc:  # noqa: BLE001 -- reported by stop()
            self.error = exc

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)
        assert self.error is None, f"the workload failed: {self.error!r}"


# --------------------------------------------------------------------------- alerts


def key(alert: Mapping[str, Any]) -> tuple[str, tuple[tuple[str, str], ...]]:
    labels = alert["labels"]
    return labels["alertname"], tuple(sorted((k, v) for k, v in labels.items() if k != "alertname"))


def matches(alert: Mapping[str, Any], name: str, labels: Mapping[str, str]) -> bool:
    got = alert["labels"]
    return got.get("alertname") == name and all(got.get(k) == v for k, v in labels.items())


@dataclass
class Expectation:
    incident: str
    alert: str
    labels: dict[str, str]
    broker: str = "Redis"
    started: float = 0.0  # time.monotonic() of the incident's trigger
    fired_after: float | None = None


@dataclass
class Report:
    rows: list[Expectation] = field(default_factory=list)
    also: list[tuple[str, list[str]]] = field(default_factory=list)


#: Alerts that fire during an incident besides the ones meant for it, as
#: :func:`wait_until_fired` names them, and why.  Any other fails the test.
ECHOES = {
    "CeleryRareTaskFailed (tests.hard_limit)":
        "its one failure (`TimeLimitExceeded`) is a failure of a task run fewer than 20 times",
    "CeleryRareTaskFailed (tests.victim)":
        "its one failure (`WorkerLostError`) is a failure of a task run fewer than 20 times",
    "CeleryTaskTimeLimitExceeded (tests.hard_limit, soft)":
        "the task ignores its soft limit, which it hits half a second before the hard one",
    # The minimum-volume guard switches a task to the 1h branch ([60s] here) as
    # soon as it has run fewer than 20 times in 10m ([30s]): a busy task that
    # stops running (its consumers cancelled, the workload stopped for the
    # broker outage, its workers killed) is judged again on a window that may
    # still hold the burst's failures.
    "CeleryTaskFailureRatioHigh (tests.flaky)":
        "the burst's failures are still in the 60 s window when `tests.flaky` has run fewer "
        "than 20 times in the last 30 s (it stops running), and the rule then judges it on "
        "the 60 s window again",
    "CeleryRareTaskFailed (tests.flaky)":
        "`tests.flaky` has stopped running: with fewer than 20 runs left in the 60 s window, "
        "a failure still in it is a rare task's failure",
    # The every-minute crontab entry shares the periodic queue and beat.
    "CeleryPeriodicTaskNotSucceeded (tests.incr)":
        "a minute boundary fell while the periodic worker was stopped: the every-minute "
        "entry's `tests.incr` waits in the same queue",
    "CeleryBeatEntryOverdue (every-minute)":
        "a minute boundary fell while beat was down: the every-minute entry is overdue too",
    "CeleryRareTaskFailed (tests.periodic)":
        "`tests.periodic` runs every 5 s, fewer than 20 times in the 30 s window: its "
        "scripted failures are a rare task's failures",
    "CeleryQueueOldestMessageTooOld (e2e.periodic)":
        "the periodic worker, started again, polls its backlog (as old as the stop) once "
        "before it drains it",
}  # fmt: skip


def control_every(app: Celery, command: str, queue: str, hostnames: list[str]) -> None:
    """``add_consumer`` or ``cancel_consumer`` on every worker, asked again of those whose
    reply missed the 5 s window (a loaded machine can be that slow); both are idempotent."""
    missing = set(hostnames)
    for _ in range(3):
        replies = getattr(app.control, command)(
            queue, destination=sorted(missing), reply=True, timeout=5
        )
        missing -= {next(iter(r)) for r in replies}
        if not missing:
            return
    raise AssertionError(f"{command}({queue!r}) unanswered by {sorted(missing)}")


def wait_until_fired(prom: PrometheusServer, expected: list[Expectation], *,
                     forbidden: Callable[[Mapping[str, Any]], bool] = lambda a: False,
                     deadline: float = INCIDENT_DEADLINE) -> set[str]:  # fmt: skip
    """Poll /api/v1/alerts until every expectation is firing; return what else fired meanwhile."""
    end = max(e.started for e in expected) + deadline
    before = {key(a) for a in prom.firing()}
    others: set[str] = set()
    while True:
        now = time.monotonic()
        for alert in prom.firing():
            assert not forbidden(alert), f"an alert that must not fire fired: {alert['labels']}"
            # The config's cluster label is kept through every aggregation.
            assert alert["labels"].get("cluster") == CLUSTER, alert["labels"]
            hit = False
            for e in expected:
                if e.fired_after is None and matches(alert, e.alert, e.labels):
                    e.fired_after = now - e.started
                if matches(alert, e.alert, e.labels):
                    hit = True
            if not hit and key(alert) not in before:
                labels = alert["labels"]
                detail = [labels[k] for k in ("name", "kind", "entry") if k in labels] or [
                    labels.get("queue_name") or labels.get("job", "")
                ]
                others.add(f"{labels['alertname']} ({', '.join(detail)})")
        if all(e.fired_after is not None for e in expected):
            return others
        if now > end:
            missing = [(e.alert, e.labels) for e in expected if e.fired_after is None]
            raise AssertionError(
                f"not fired within {deadline}s: {missing}; active: {prom.alerts()}"
            )
        time.sleep(0.5)


def write_table(report: Report, workers: Mapping[str, str]) -> str:
    """Check (or write) alerts/README.md's incident table; ``workers`` names the instances."""
    lines = [
        BEGIN,
        "| broker | incident | alert | labels | time to fire |",
        "| --- | --- | --- | --- | --- |",
        f"| Redis | clean mixed workload, {CLEAN_SECONDS:.0f} s (the RabbitMQ workers idle) | none "
        "| | no alert pending or firing |",
    ]
    for row in report.rows:
        labels = ", ".join(f"`{k}={workers.get(v, v)}`" for k, v in row.labels.items())
        assert row.fired_after is not None
        lines.append(
            f"| {row.broker} | {row.incident} | {row.alert} | {labels} | {row.fired_after:.1f} s |"
        )
    lines.append("")
    for phase, others in report.also:
        why = "; ".join(f"{o}: {ECHOES.get(o, 'UNEXPLAINED')}" for o in others)
        lines.append(f"Also firing during {phase}: {why or 'nothing else'}.")
        lines.append("")
    lines.append(END)
    text = README.read_text()
    head, rest = text.split(BEGIN, 1)
    committed_table, tail = rest.split(END, 1)
    if os.environ.get(UPDATE_DOCS) == "1":
        README.write_text(head + "\n".join(lines) + tail)
    else:
        # A test run leaves the checkout as it found it; the committed table
        # must still list exactly the incidents, alerts and labels that fired.
        assert _table_keys(committed_table) == _table_keys("\n".join(lines)), (
            f"alerts/README.md's incident table is stale: run with {UPDATE_DOCS}=1"
        )
    return "\n".join(lines)


def _table_keys(text: str) -> list[str]:
    """The table's rows without their time column (it varies from run to run)."""
    return [
        "|".join(line.split("|")[:-2])
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith("| ---")
    ]


# --------------------------------------------------------------------------- queries


def has_finite_value(result: list[dict[str, Any]]) -> bool:
    """Whether any sample is a finite float, or a native histogram (heatmaps of native
    histograms answer with histograms)."""
    for series in result:
        if series.get("histograms") or series.get("histogram"):
            return True
        values = series.get("values") or [series["value"]]
        if any(math.isfinite(float(v)) for _, v in values):
            return True
    return False


def grafana_regex(value: str) -> str:
    """A variable value as Grafana puts it into a PromQL regex matcher: regex
    metacharacters escaped, with the backslash doubled for the PromQL string."""
    return re.sub(r"[\\^$*+?.()|\[\]{}]", lambda m: "\\\\" + m.group(0), value)


#: Dashboard queries with nothing to show until an incident has happened, and why:
#: the clean workload's check lets them be empty, the end of the test checks them
#: over the whole run.
AFTER_INCIDENTS = {
    ("overview.json", "Schedule entries", "G"):
        "the periodic task's seconds since its last failure: it does not fail in the clean "
        "workload",
}  # fmt: skip


def e2e_boards() -> dict[str, dict[str, Any]]:
    """The dashboards of :func:`e2e_config` (its selectors and cluster variable), as the
    export command writes them for this deployment."""
    from csuite_async_obs.monitoring.dashboards import render

    return {name: json.loads(text) for name, text in render(e2e_config()).items()}


def check_dashboards(prom: PrometheusServer, start: float, end: float,
                     only: Collection[tuple[str, str, str]] | None = None) -> int:  # fmt: skip
    """Every query of every dashboard (or the ``only`` ones) returns a finite value over
    [start, end], but those of :data:`AFTER_INCIDENTS` when all are checked; the count."""
    span = f"{round(end - start)}s"
    empty = []
    checked = 0
    # Grafana's form of a multi-value variable: the Redis workers and the periodic one.
    jobs = f"({grafana_regex(JOB)}|{grafana_regex(PERIODIC_JOB)})"
    for name, board in e2e_boards().items():
        task = ".*" if name == "overview.json" else grafana_regex("tests.flaky")
        values = {"job": jobs, "instance": ".*", "queue_name": ".*", "task": task, "cluster": CLUSTER,
                  "__rate_interval": RATE_INTERVAL, "__interval": f"{STEP:.0f}s", "__range": span}  # fmt: skip
        for panel, target in targets(board):
            where = (name, panel["title"], target["refId"])
            if only is not None and where not in only:
                continue
            expr = substitute(target["expr"], values)
            if target.get("instant"):
                result = prom.query(expr, at=end)
            else:
                result = prom.query_range(expr, start, end, STEP)
            checked += 1
            if not has_finite_value(result) and (only is not None or where not in AFTER_INCIDENTS):
                empty.append(f"{name} / {panel['title']} / {target['refId']}: {expr}")
        if only is not None:
            continue
        for variable, query in variable_queries(board).items():
            selector, label = label_values(query)
            found = prom.label_values(label, substitute(selector, values))
            checked += 1
            if not found:
                empty.append(f"{name} / variable {variable}: {query}")
    assert not empty, "queries without data:\n" + "\n".join(empty)
    return checked


def check_rules_evaluate(prom: PrometheusServer) -> int:
    """Every expression of the loaded rule files evaluates; every loaded rule is healthy."""
    count = 0
    for source in prom.rule_files:
        for group in yaml.safe_load(source.read_text())["groups"]:
            for rule in group["rules"]:
                prom.query(rule["expr"])  # raises PrometheusError on an error
                count += 1
    unhealthy = [
        (rule["name"], rule.get("lastError"))
        for group in prom.rules() for rule in group["rules"]
        if rule["health"] != "ok" or rule.get("lastError")
    ]  # fmt: skip
    assert unhealthy == []
    return count


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process ``pid`` listens on, read from /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        with open(f"/proc/net/{table}") as f:
            next(f)
            for line in f:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state != "0A" or inode not in inodes:  # 0A: LISTEN
                    continue
                address, port = local.split(":")
                raw = bytes.fromhex(address)
                if width == 8:
                    host = ".".join(str(b) for b in reversed(raw))
                else:
                    host = ":".join(raw[i : i + 4][::-1].hex() for i in range(0, 16, 4))
                found.add((host, int(port, 16)))
    return found


# --------------------------------------------------------------------------- the test


@pytest.fixture()
def broker() -> Iterator[RedisServer]:
    """A Redis of the test's own: the broker incident stops it."""
    server = RedisServer().start()
    yield server
    server.stop()


def wait_for_targets(prom: PrometheusServer, jobs: tuple[str, ...], timeout: float) -> None:
    """Wait until every target of ``jobs`` has been scraped successfully."""
    expected = sum(len(prom.jobs[job]) for job in jobs)

    def up() -> bool:
        healthy = [t for t in prom.targets() if t.get("health") == "up"]
        return sum(t["labels"]["job"] in jobs for t in healthy) == expected

    wait_for(up, timeout, message=f"targets of {jobs} up")


def start_exporter(
    env: Mapping[str, str], port: int, api_url: str, log: Path
) -> subprocess.Popen[bytes]:
    """``csuite-async-obs exporter`` on ``port``, polling every second, the API at ``api_url``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [PYTHON, "-m", "csuite_async_obs.cli", "exporter", "--metrics-port", str(port),
             "--metrics-addr", "127.0.0.1", "--metrics-queues", RABBIT_QUEUE,
             "--metrics-queue-exclude", QUEUE, "--metrics-queue-poll-interval", "1",
             "--metrics-rabbitmq-api-url", api_url],
            env=dict(env), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def publish_raw(app: Celery, url: str, name: str, queue: str, headers: Mapping[str, Any]) -> None:
    """One message of task ``name`` as Celery's protocol 2 encodes it, ``headers`` added,
    published to ``queue`` with a plain kombu producer: no Celery publish signal runs, so
    the package's own publish stamp does not replace a header given here."""
    message = app.amqp.as_task_v2(str(uuid.uuid4()), name, args=())
    with Connection(url) as connection:
        Producer(connection).publish(
            message.body, routing_key=queue, headers={**message.headers, **headers},
            serializer="json", **message.properties,
        )  # fmt: skip


@dataclass
class Deployment:
    """What the tests of this module watch and drive, set up by :func:`deployment`."""

    prom: PrometheusServer
    started: list[Worker]  # the Redis workers, job JOB
    rabbit: Worker  # RABBIT_JOB
    small_cap: Worker  # SMALL_CAP_JOB
    beat: Beat  # BEAT_JOB
    periodic: Worker  # PERIODIC_JOB
    periodic_client: redis.Redis  # their Redis
    app: Celery
    rabbit_app: Celery
    client: redis.Redis
    exporter_port: int
    exporter_env: dict[str, str]
    workload: Workload | None = None
    exporter: subprocess.Popen[bytes] | None = None


@pytest.fixture()
def deployment(
    broker: RedisServer,
    workers: Any,
    rabbitmq_server: RabbitMQServer,
    rabbitmq_vhost: str,
    rabbitmq_workers: Any,
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Deployment]:
    """The workers, Prometheus loaded with :func:`short_rules` scraping them, and the apps
    that publish to them; every target scraped and every queue read once."""
    # Celery's broker_url setting prefers CELERY_BROKER_URL from the environment
    # (conftest points it at the session's Redis) over the app's configuration.
    monkeypatch.setenv("CELERY_BROKER_URL", f"{broker.url}/0")
    monkeypatch.setenv("CELERY_RESULT_BACKEND", f"{broker.url}/1")
    env = {
        "CELERY_BROKER_URL": f"{broker.url}/0",
        "CELERY_RESULT_BACKEND": f"{broker.url}/1",
        "CSUITE_QUEUE_POLL_INTERVAL": "1",
        "CSUITE_QUEUE_POLL_TIMEOUT": "0.5",
    }
    started: list[Worker] = [
        workers(
            pool="prefork",
            concurrency=CONCURRENCY,
            args=("--prefetch-multiplier", "1"),
            env=env,
            wait=False,
        )
        for _ in range(WORKERS)
    ]
    # Queue depth from RabbitMQ's management API (the test node's port is not 15672).
    # The queue is named: a worker polls the queues it consumes *now*, and
    # cancel_consumer would take it out of the readings.
    rabbit_env = {
        "CSUITE_RABBITMQ_API_URL": rabbitmq_server.management_url,
        "CSUITE_QUEUES": RABBIT_QUEUE,
        "CSUITE_QUEUE_POLL_INTERVAL": "1",
        "CSUITE_QUEUE_POLL_TIMEOUT": "2",
    }
    rabbit = rabbitmq_workers(
        pool="solo", args=("-Q", RABBIT_QUEUE, "--prefetch-multiplier", "1"), env=rabbit_env,
        wait=False,
    )  # fmt: skip
    # Its registered tasks fill the cap as it starts (the zero series), before
    # any scrape: the overflow counter's first value is not an increase.
    small_cap = rabbitmq_workers(
        pool="solo", args=("-Q", SMALL_CAP_QUEUE),
        env={**rabbit_env, "CSUITE_QUEUES": SMALL_CAP_QUEUE,
             "CSUITE_MAX_TASK_NAMES": str(MAX_TASK_NAMES)},
        wait=False,
    )  # fmt: skip
    periodic_url = f"{redis_server.url}/{PERIODIC_DB}"
    periodic_env = {"CELERY_BROKER_URL": periodic_url, "TEST_REDIS_URL": periodic_url,
                    "CELERY_RESULT_BACKEND": f"{redis_server.url}/{PERIODIC_DB + 1}",
                    "CSUITE_QUEUE_POLL_INTERVAL": "1", "CSUITE_QUEUE_POLL_TIMEOUT": "0.5"}  # fmt: skip
    periodic = workers(pool="solo", args=("-Q", PERIODIC_QUEUE), env=periodic_env, wait=False)
    beat = Beat(
        base_env(periodic_url, periodic_env["CELERY_RESULT_BACKEND"], TEST_REDIS_URL=periodic_url,
                 PERIODIC_TASK=PERIODIC_TASK, PERIODIC_QUEUE=PERIODIC_QUEUE),
        tmp_path,
    ).start(wait=False)  # fmt: skip
    for worker in (*started, rabbit, small_cap, periodic):
        worker.wait_ready()
    beat.wait_ready()
    # A standalone exporter on the same vhost whose management API is unreachable
    # (passive declares): scraped from the start, started only for its incident.
    exporter_port = free_port()
    jobs = {
        JOB: [f"127.0.0.1:{w.port}" for w in started],
        RABBIT_JOB: [f"127.0.0.1:{rabbit.port}"],
        SMALL_CAP_JOB: [f"127.0.0.1:{small_cap.port}"],
        EXPORTER_JOB: [f"127.0.0.1:{exporter_port}"],
        PERIODIC_JOB: [f"127.0.0.1:{periodic.port}"],
        BEAT_JOB: [f"127.0.0.1:{beat.port}"],
    }
    prom = PrometheusServer(jobs, short_rules(tmp_path / "rules"), scrape_interval=SCRAPE,
                            evaluation_interval=SCRAPE,
                            labels={job: {"cluster": CLUSTER} for job in jobs})  # fmt: skip
    app = create_celery_app(
        CelerySettings(broker_url=f"{broker.url}/0", result_backend=f"{broker.url}/1")
    )
    rabbit_app = create_celery_app(
        CelerySettings(
            broker_url=rabbitmq_vhost, result_backend=rabbitmq_workers.env["CELERY_RESULT_BACKEND"]
        )
    )
    d = Deployment(
        prom, started, rabbit, small_cap, beat, periodic, redis.Redis.from_url(periodic_url),
        app, rabbit_app, redis.Redis.from_url(f"{broker.url}/0"), exporter_port,
        {**rabbitmq_workers.env, "CSUITE_QUEUE_POLL_TIMEOUT": "2"},
    )  # fmt: skip
    try:
        prom.start()
        assert prom.process is not None
        assert listening_addresses(prom.process.pid) == {("127.0.0.1", prom.port)}
        wait_for_targets(prom, (JOB, RABBIT_JOB, SMALL_CAP_JOB, PERIODIC_JOB, BEAT_JOB), 30)
        # The queue-depth polls have run and Prometheus has their first readings.
        for job, queue in (
            (JOB, QUEUE),
            (RABBIT_JOB, RABBIT_QUEUE),
            (SMALL_CAP_JOB, SMALL_CAP_QUEUE),
        ):
            expr = f'celery_queue_length{{job="{job}", queue_name="{queue}"}}'
            wait_for(lambda e=expr: prom.query(e), 30, message=f"{queue} length in Prometheus")
        yield d
    finally:
        if d.workload is not None:
            d.workload._stop_event.set()
        stop_process(d.exporter)
        d.beat.stop(signal.SIGKILL)
        prom.stop()
        d.client.close()
        d.periodic_client.close()
        for celery_app in (app, rabbit_app):
            close_app(celery_app)


def run_clean_workload(d: Deployment, seconds: float) -> tuple[float, float]:
    """The clean mixed workload for ``seconds``, during which no alert may even be
    pending; its (start, end) wall-clock times.  The workload keeps running after."""
    d.workload = workload = Workload(d.app, fail_every=40)
    start = time.time()
    deadline = time.monotonic() + seconds
    workload.start()
    while True:
        alerts = d.prom.alerts()
        assert alerts == [], f"alerts during the clean workload: {[a['labels'] for a in alerts]}"
        assert workload.error is None and workload.is_alive(), workload.error
        if time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    assert workload.flaky_failed >= 1  # the exception tables need a failure in range
    return start, time.time()


def check_answers(prom: PrometheusServer, start: float, end: float) -> None:
    """Every dashboard query answers over [start, end] and every rule evaluates."""
    queries = sum(
        len(list(targets(board))) + len(variable_queries(board)) for board in e2e_boards().values()
    )
    assert check_dashboards(prom, start, end) == queries
    assert check_rules_evaluate(prom) == 33


@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + 900)  # the soak itself, plus the deployment's start
def test_a_clean_workload_of_30_minutes_fires_nothing(deployment: Deployment) -> None:
    start, end = run_clean_workload(deployment, SOAK_SECONDS)
    check_answers(deployment.prom, start, end)


def test_incidents_fire_their_alerts_and_dashboards_answer(
    deployment: Deployment,
    broker: RedisServer,
    rabbitmq_server: RabbitMQServer,
    rabbitmq_vhost: str,
    rabbitmq_workers: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = deployment
    prom, app, rabbit_app, client, started = d.prom, d.app, d.rabbit_app, d.client, d.started
    hostnames = [w.hostname for w in started]
    vhost = rabbitmq_vhost.rsplit("/", 1)[1]
    report = Report()
    test_start = time.time()

    # --- 1. clean mixed workload: nothing may even be pending.
    # --- 2. dashboards answer and the rules evaluate, on that data.
    check_answers(prom, *run_clean_workload(d, CLEAN_SECONDS))
    workload = d.workload
    assert workload is not None
    # Beat's metrics match its schedule, and the worker ran every send.
    check_beat_schedule(d)

    # --- 3a. five incidents at once: four tasks, and the instrumentation.
    burst = Expectation(
        "failure burst in a busy task (`tests.flaky`, 50% failing)",
        "CeleryTaskFailureRatioHigh",
        {"name": "tests.flaky", "queue_name": QUEUE},
    )
    rare = Expectation(
        "one failure of a rare task (`tests.rare`, runs every 20 s)",
        "CeleryRareTaskFailed",
        {"name": "tests.rare", "queue_name": QUEUE},
    )
    victim = Expectation(
        "a pool child SIGKILLed under `tests.victim`",
        "CeleryTaskWorkerLost",
        {"name": "tests.victim", "queue_name": QUEUE},
    )
    limit = Expectation("a task hitting its hard time limit (`tests.hard_limit`)",
                        "CeleryTaskTimeLimitExceeded",
                        {"name": "tests.hard_limit", "kind": "hard", "queue_name": QUEUE})  # fmt: skip
    # An integer header no float can hold: `time_start - header` raises
    # OverflowError inside the started hook, which counts it.  Celery's own
    # publish would have stamped the header itself: a raw kombu producer.
    caught = Expectation(
        f"a message whose `{PUBLISHED_AT_HEADER}` header is `10**400` (no float holds it), "
        "published with a raw kombu producer",
        "CeleryInstrumentationErrors",
        {"job": JOB, "hook": "started"},
    )
    burst.started = time.monotonic()
    workload.fail_every = 2
    rare.started = time.monotonic()
    app.send_task("tests.rare", args=(True,), queue=QUEUE)
    limit.started = time.monotonic()
    app.send_task("tests.hard_limit", args=(10.0,), queue=QUEUE)
    caught.started = time.monotonic()
    publish_raw(app, f"{broker.url}/0", "tests.ok", QUEUE, {PUBLISHED_AT_HEADER: 10**400})
    # The periodic task fails on every run while beat sends it on time.
    failing = Expectation(
        f"the periodic task failing on every run (`{PERIODIC_TASK}`, every 5 s; beat healthy)",
        "CeleryPeriodicTaskNotSucceeded",
        {"job": BEAT_JOB, "name": PERIODIC_TASK},
    )
    failing.started = time.monotonic()
    d.periodic_client.set(f"{PERIODIC_KEY}:fail", 1)
    app.send_task("tests.victim", args=("e2e:victim", 60.0), queue=QUEUE)
    pid = int(wait_for(lambda: client.get("e2e:victim"), 30, message="victim pid"))
    victim.started = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    # The minimum-volume guard, live: the rare task's 100% must not reach the ratio alert.
    # The periodic task's alert fires while beat is healthy.
    others = wait_until_fired(
        prom, [burst, rare, victim, limit, caught, failing],
        forbidden=lambda a: matches(a, "CeleryTaskFailureRatioHigh", {"name": "tests.rare"})
        or a["labels"]["alertname"] in ("CeleryBeatDown", "CeleryBeatEntryOverdue"),
    )  # fmt: skip
    # No background failures from here on: once tests.flaky stops running,
    # each would be reported as a rare task's failure (see ECHOES).
    workload.fail_every = 0
    d.periodic_client.delete(f"{PERIODIC_KEY}:fail")
    report.rows += [burst, rare, victim, limit, caught, failing]
    report.also.append(("the five incidents at once", sorted(others)))

    # --- 3b. every pool slot held by a long task; the workload queues behind them.
    held = f"every pool slot busy ({SLOTS} `tests.hold({HOLD_SECONDS:.0f})` tasks), the workload queued"
    saturated = Expectation(held, "CeleryWorkerSaturated", {"job": JOB})
    waiting = Expectation(held, "CeleryQueueWaitHigh", {"job": JOB, "queue_name": QUEUE})
    saturated.started = waiting.started = time.monotonic()
    for _ in range(SLOTS):
        app.send_task("tests.hold", args=(HOLD_SECONDS,), queue=QUEUE)
    others = wait_until_fired(prom, [saturated, waiting])
    report.rows += [saturated, waiting]
    report.also.append(("the full pools", sorted(others)))

    # --- 3c. consumers cancelled while the queue grows.
    control_every(app, "cancel_consumer", QUEUE, hostnames)
    stuck = Expectation(
        "consumers cancelled while the queue grows",
        "CeleryQueueNotDraining",
        {"queue_name": QUEUE},
    )
    growing = Expectation(
        "consumers cancelled while the queue grows",
        "CeleryQueueBacklogGrowing",
        {"queue_name": QUEUE},
    )
    old = Expectation(
        "consumers cancelled while the queue grows",
        "CeleryQueueOldestMessageTooOld",
        {"queue_name": QUEUE},
    )
    # Meanwhile the periodic queue's only worker stops, while beat keeps sending.
    # Its alert has resolved since the flag went (the next run succeeded).
    wait_for(lambda: not [a for a in prom.alerts() if matches(a, failing.alert, failing.labels)],
             30, message="the failing periodic task's alert resolved")  # fmt: skip
    lost = "the periodic queue's only worker stopped while beat keeps sending"
    unconsumed = [
        Expectation(lost, "CeleryPeriodicTaskNotSucceeded",
                    {"job": BEAT_JOB, "name": PERIODIC_TASK}),
        Expectation(lost, "CeleryWorkerDown", {"instance": f"127.0.0.1:{d.periodic.port}"}),
        Expectation(lost, "CeleryWorkersAllDown", {"job": PERIODIC_JOB}),
    ]  # fmt: skip
    sent_before = stop_periodic_worker(d)
    stuck.started = growing.started = old.started = time.monotonic()
    for e in unconsumed:
        e.started = stuck.started
    for i in range(120):
        app.send_task("tests.ok", args=(i,), queue=QUEUE)
    others = wait_until_fired(prom, [stuck, growing, old, *unconsumed])
    # The backlog: every send since the stop waits in the queue.
    wait_for(lambda: d.periodic_client.llen(PERIODIC_QUEUE) == beat_sends(d) - sent_before > 0,
             5, message="the periodic backlog equals beat's sends since the stop")  # fmt: skip
    d.periodic.start()
    report.rows += [stuck, growing, old, *unconsumed]
    report.also.append(("the cancelled consumers", sorted(others)))

    # --- 3d. the consumers restored: the backlog's tasks start, late.  The wait
    # alert of the full pools has resolved (its window holds no start since).
    late = Expectation(
        "the cancelled consumers restored (the backlog's tasks start 20 s late)",
        "CeleryQueueWaitHigh",
        {"job": JOB, "queue_name": QUEUE},
    )
    wait_for(lambda: not [a for a in prom.alerts() if matches(a, late.alert, late.labels)],
             60, message="the full pools' queue-wait alert resolved")  # fmt: skip
    late.started = time.monotonic()
    control_every(app, "add_consumer", QUEUE, hostnames)
    # The broker incident next needs the workers idle: stop publishing now.
    workload.stop()
    d.workload = None
    others = wait_until_fired(prom, [late])
    report.rows.append(late)
    report.also.append(("the restored consumers", sorted(others)))

    # --- 3e. the broker stopped.  Wait until nothing is in flight: kombu 5.7's
    # Redis transport can crash a prefork worker that holds unacknowledged
    # messages when the broker goes away ("Unrecoverable error: AttributeError:
    # 'NoneType' object has no attribute 'hostname'" while restoring them), and
    # then the alert is CeleryWorkerDown instead.
    # Redis cannot tell unacked messages: a worker's are its prefetched and
    # active requests (ETA ones included).
    idle = (
        f'sum(celery_worker_prefetched_tasks{{job="{JOB}"}}) == 0'
        f' and on () max(celery_queue_length{{job="{JOB}"}}) == 0'
        f' and on () sum(celery_worker_tasks_active{{job="{JOB}"}}) == 0'
    )
    wait_for(lambda: prom.query(idle), 60, interval=0.5, message="workers idle")
    down = [
        Expectation("the broker stopped", alert, {"instance": f"127.0.0.1:{w.port}"})
        for alert in ("CeleryQueueDepthPollingFailing", "CeleryWorkerConsumerDown")
        for w in started
    ]
    start = time.monotonic()
    broker.stop()
    for e in down:
        e.started = start
    others = wait_until_fired(prom, down)
    report.rows += down
    report.also.append(("the broker outage", sorted(others)))

    # --- 3f. every worker SIGKILLed, pool children included.
    killed = [Expectation("every worker SIGKILLed", "CeleryWorkersAllDown", {"job": JOB})]
    killed += [
        Expectation(
            "every worker SIGKILLed", "CeleryWorkerDown", {"instance": f"127.0.0.1:{w.port}"}
        )
        for w in started
    ]
    # Beat SIGKILLed meanwhile (no close: its schedule is as last synced).
    beat_killed = [
        Expectation("celery beat SIGKILLed", "CeleryBeatDown", {"job": BEAT_JOB}),
        Expectation("celery beat SIGKILLed", "CeleryBeatEntryOverdue",
                    {"job": BEAT_JOB, "entry": PERIODIC_ENTRY}),
    ]  # fmt: skip
    start = time.monotonic()
    for worker in started:
        os.killpg(worker.pid, signal.SIGKILL)
    d.beat.stop(signal.SIGKILL)
    for e in (*killed, *beat_killed):
        e.started = start
    others = wait_until_fired(prom, [*killed, *beat_killed])
    report.rows += [*killed, *beat_killed]
    report.also.append(("the kill of every worker and of beat", sorted(others)))

    # --- 3g. beat started again on the same schedule file: its alerts resolve, and
    # no entry is reported overdue (nor pending) for longer than grace and `for`.
    d.beat.start()
    beat_alerts = {"CeleryBeatDown", "CeleryBeatEntryOverdue", "CeleryPeriodicTaskNotSucceeded"}

    def beat_quiet() -> bool:
        return not [a for a in prom.alerts() if a["labels"]["alertname"] in beat_alerts]

    wait_for(beat_quiet, 30, interval=0.5, message="beat's alerts resolved after its restart")
    quiet_until = time.monotonic() + PERIODIC_GRACE + 3.0 + 4 * SCRAPE
    while time.monotonic() < quiet_until:
        assert beat_quiet(), f"a beat alert after the restart: {prom.alerts()}"
        time.sleep(0.5)

    # --- 4a. RabbitMQ: consumers cancelled while the queue grows and ages, and,
    # meanwhile, task names past the small-cap worker's cap.  Celery's
    # broker_url and result_backend prefer the CELERY_* variables (Redis, above,
    # now stopped); the RabbitMQ app's producer pool and backend are made at
    # their first use, from here on.
    rabbit = d.rabbit
    monkeypatch.setenv("CELERY_BROKER_URL", rabbitmq_vhost)
    monkeypatch.setenv("CELERY_RESULT_BACKEND", rabbitmq_workers.env["CELERY_RESULT_BACKEND"])
    control_every(rabbit_app, "cancel_consumer", RABBIT_QUEUE, [rabbit.hostname])
    wait_for(lambda: rabbitmq_server.list_queues(vhost)[RABBIT_QUEUE]["consumers"] == 0, 10,
             message="consumer cancelled on RabbitMQ")  # fmt: skip
    queue_incident = "consumers cancelled while the queue grows"
    rabbit_rows = [
        Expectation(queue_incident, alert, {"queue_name": RABBIT_QUEUE}, broker="RabbitMQ")
        for alert in (
            "CeleryQueueNotDraining",
            "CeleryQueueBacklogGrowing",
            "CeleryQueueOldestMessageTooOld",
        )
    ]
    past_cap = ("tests.ok", "tests.rare", "tests.sleep")
    overflow = Expectation(
        f"{len(past_cap)} task names past a worker's cap (`CSUITE_MAX_TASK_NAMES={MAX_TASK_NAMES}`)",
        "CeleryMetricsLabelOverflow",
        {"job": SMALL_CAP_JOB, "label": "name"},
        broker="RabbitMQ",
    )
    start = time.monotonic()
    for i in range(120):
        rabbit_app.send_task("tests.ok", args=(i,), queue=RABBIT_QUEUE, ignore_result=True)
    for e in rabbit_rows:
        e.started = start
    overflow.started = time.monotonic()
    for name in past_cap:
        args = (0.0,) if name == "tests.sleep" else ()
        rabbit_app.send_task(name, args=args, queue=SMALL_CAP_QUEUE, ignore_result=True)
    others = wait_until_fired(prom, [*rabbit_rows, overflow])
    report.rows += [*rabbit_rows, overflow]
    report.also.append(("the cancelled consumers on RabbitMQ", sorted(others)))
    # The management API's numbers, through the worker and Prometheus, are
    # the broker's own (rabbitmqctl counts live).
    assert rabbitmq_server.list_queues(vhost)[RABBIT_QUEUE] == {
        "messages_ready": 120, "messages_unacknowledged": 0, "consumers": 0
    }  # fmt: skip
    selector = f'{{job="{RABBIT_JOB}", queue_name="{RABBIT_QUEUE}"}}'
    for metric, value in (("celery_queue_length", 120), ("celery_queue_unacked_messages", 0),
                          ("celery_queue_consumers", 0)):  # fmt: skip
        expr = f"{metric}{selector}"
        wait_for(lambda e=expr, v=value: prom.value(e) == v, 10, message=f"{expr} == {value}")
    age = prom.value(f"celery_queue_oldest_message_age_seconds{selector}")
    assert age is not None and 15 < age < time.monotonic() - start + 2, age
    # Each of the three ran, as `other`.
    expr = f'sum(celery_task_succeeded_total{{job="{SMALL_CAP_JOB}", name="other"}})'
    wait_for(lambda: prom.value(expr) == len(past_cap), 10, message=f"{expr} == {len(past_cap)}")

    # --- 4b. the consumer restored (its backlog's tasks start late), and meanwhile
    # RabbitMQ without its management API: passive declares, no ages.
    rabbit_late = Expectation(
        "the cancelled consumer restored (the backlog's tasks start 20 s late)",
        "CeleryQueueWaitHigh",
        {"job": RABBIT_JOB, "queue_name": RABBIT_QUEUE},
        broker="RabbitMQ",
    )
    rabbit_late.started = time.monotonic()
    control_every(rabbit_app, "add_consumer", RABBIT_QUEUE, [rabbit.hostname])
    unknown = Expectation(
        "a standalone exporter without the management API (passive declares)",
        "CeleryQueueOldestMessageAgeUnknown",
        {"instance": f"127.0.0.1:{d.exporter_port}"},
        broker="RabbitMQ",
    )
    unknown.started = time.monotonic()
    nobody = f"http://127.0.0.1:{free_port()}"  # refused: the API is unreachable
    d.exporter = start_exporter(d.exporter_env, d.exporter_port, nobody, tmp_path / "exporter.log")
    others = wait_until_fired(prom, [rabbit_late, unknown])
    report.rows += [rabbit_late, unknown]
    report.also.append(
        ("the restored consumer and the exporter without the management API", sorted(others))
    )
    # Lengths and consumers by passive declare; the age and unacked series absent.
    exported = {s["metric"]["__name__"] for s in prom.query(
        f'{{job="{EXPORTER_JOB}", queue_name="{RABBIT_QUEUE}"}}'
    )}  # fmt: skip
    assert exported == {"celery_queue_length", "celery_queue_consumers"}, exported

    # What the dashboards could not show before the incidents, they show now.
    assert check_dashboards(prom, test_start, time.time(), only=AFTER_INCIDENTS) == len(
        AFTER_INCIDENTS
    )
    # The clean run was long enough to have fired any of them.
    assert max(e.fired_after or 0.0 for e in report.rows) <= CLEAN_SECONDS
    names = {f"127.0.0.1:{w.port}": f"<worker {i}>" for i, w in enumerate(started, 1)}
    names[f"127.0.0.1:{d.exporter_port}"] = "<exporter>"
    names[f"127.0.0.1:{d.periodic.port}"] = "<periodic worker>"
    table = write_table(report, names)
    print(table)
    # Every shipped alert has an incident, and whatever else fired has its reason.
    shipped = {
        rule["alert"]
        for source in RULE_FILES
        for group in yaml.safe_load(source.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert shipped - {row.alert for row in report.rows} == set()
    unexplained = {o for _, others in report.also for o in others} - set(ECHOES)
    assert unexplained == set(), f"alerts that fired without a reason in ECHOES: {unexplained}"


def beat_sends(d: Deployment) -> float:
    """Sends of both beat entries so far, from beat's own counter."""
    return d.beat.scrape().sum("celery_beat_entry_sent_total")


def quiet_moment(d: Deployment, margin: float = 2.0) -> Any:
    """Wait until no entry is due within ``margin`` seconds and the worker ran every send;
    beat's scrape then."""

    def quiet() -> Any:
        s = d.beat.scrape()
        now = time.time()
        dues = [x.value for x in s.find("celery_beat_entry_next_due_timestamp_seconds")]
        if len(dues) != 2 or min(dues) - now < margin:
            return None
        return s

    return wait_for(quiet, 70, interval=0.2, message="no beat entry due for a while")


def check_beat_schedule(d: Deployment) -> None:
    """Beat's metrics against its schedule and against the runs the worker recorded."""
    s = quiet_moment(d)
    entries = {x.labels["entry"]: x.labels["task"] for x in s.find("celery_beat_entry_sent_total")}
    assert entries == {PERIODIC_ENTRY: PERIODIC_TASK, "every-minute": "tests.incr"}
    assert s.value("celery_beat_up") == 1 and s.value("celery_beat_entries") == 2

    def of(metric: str, entry: str) -> float:
        value = s.value(metric, entry=entry, task=entries[entry])
        assert value is not None, (metric, entry)
        return value

    last = of("celery_beat_entry_last_sent_timestamp_seconds", PERIODIC_ENTRY)
    due = of("celery_beat_entry_next_due_timestamp_seconds", PERIODIC_ENTRY)
    # Celery's last run is taken as the send starts; ours, as it returns.
    assert 4.9 < due - last <= 5.0
    assert of("celery_beat_entry_period_seconds", PERIODIC_ENTRY) == 5.0
    minute = of("celery_beat_entry_next_due_timestamp_seconds", "every-minute")
    assert minute % 60 == 0 and 0 < minute - time.time() <= 60
    assert of("celery_beat_entry_period_seconds", "every-minute") == 60.0
    # Every send ran once on the worker (its Redis counters), none failed to send.
    for entry, key_ in ((PERIODIC_ENTRY, PERIODIC_KEY), ("every-minute", "periodic:every-minute")):
        sent = of("celery_beat_entry_sent_total", entry)
        wait_for(lambda k=key_, n=sent: int(d.periodic_client.get(k) or 0) == n, 3,
                 message=f"{entry}: runs == {sent:.0f} sends")  # fmt: skip
        assert of("celery_beat_entry_send_errors_total", entry) == 0
    assert s.sum("csuite_async_obs_instrumentation_errors_total") == 0


def stop_periodic_worker(d: Deployment) -> float:
    """Stop the periodic queue's worker right after it ran a send; beat's sends then."""
    quiet_moment(d, margin=3.0)
    wait_for(lambda: d.periodic_client.llen(PERIODIC_QUEUE) == 0, 2, message="periodic queue empty")
    d.periodic.stop()
    assert d.periodic_client.llen(PERIODIC_QUEUE) == 0
    return beat_sends(d)


def close_app(app: Celery) -> None:
    app.close()
    instrumentation = instrumentation_for(app)
    if instrumentation is not None:
        instrumentation.disconnect_signals()
