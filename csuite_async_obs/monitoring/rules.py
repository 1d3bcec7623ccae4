"""The Prometheus recording and alerting rules, generated from a :class:`MonitoringConfig`.

The default config gives the committed ``alerts/recording.rules.yml`` and
``alerts/alerts.rules.yml`` (``tests/test_monitoring_generated.py`` fails when they
differ; ``scripts/generate-rules`` rewrites them).  What a config changes:

* **Selectors.**  The worker selector goes on every raw series the workers serve
  (task, worker and ``up``).  Queue-depth series (and the instrumentation's own
  error counters) may come from workers or from standalone exporters, so they are
  read as the union ``(m{worker} or m{exporter})``: PromQL has no "either of two
  matcher sets" inside one selector, and ``or`` keeps every series of both sides
  (their ``job``/``instance`` differ).  With no exporter selector the worker
  selector alone picks them; with neither, every target does, as the shipped
  rules always did.  Recorded series (``task:...``) are read without selectors:
  they exist only for the selected targets.  The beat selector goes on every
  ``celery_beat_*`` series (celery beat is a target of its own; empty matches any
  target that serves them, and only beat does).
* **Cluster label.**  Kept in every ``by (...)`` and ``on (...)``, so that the
  aggregates, hence every alert's labels, carry it, and one cluster's workers never
  answer for another's (``on ()`` becomes ``on (cluster)``).
* **Tuning** (``alerts:``): ``threshold``, ``window``, ``for`` and ``severity`` of
  each alert (:data:`TUNABLE` says which an alert has); ``enabled: false`` drops
  it.  Windows shared by a recording rule give its name (``ratio10m``).  Two knobs
  are shared on purpose: the rare-task alert's ``threshold`` (the volume under
  which a task is "rare") and ``window`` are also the failure ratio's volume guard
  and long window, so that each task stays judged by exactly one of them; and the
  polling alert's ``threshold`` (how old a successful poll may be) is also the
  staleness under which the queue recording rules drop a poller's readings.
* ``runbook_url`` and ``group_prefix``: the ``runbook`` annotations and group names.
* ``long_window_interval``: the ``interval`` of ``<group_prefix>.recording.long``, the
  three rules over the rare-task alert's window (the costliest at fleet scale), so
  that they do not run at every global evaluation (:func:`long_window_interval`).

The alerts on celery beat and its periodic tasks are a second group in
``alerts.rules.yml``, ``<group_prefix>.periodic`` (:func:`periodic_alerts`).

The SLO groups of :mod:`.slo` (when that module and ``config.slos`` give any) are a
third file, ``slo.rules.yml``.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .config import MonitoringConfig, MonitoringConfigError
from .yamltext import Group, Rule, dump_groups

__all__ = [
    "ALERTS",
    "PERIODIC",
    "TUNABLE",
    "Defaults",
    "alert_groups",
    "all_groups",
    "periodic_alerts",
    "recording_groups",
    "rule_files",
    "slo_groups",
    "validate",
]


@dataclass(frozen=True)
class Defaults:
    """An alert's shipped settings; ``None`` where the alert has no such knob."""

    severity: str
    for_: str | None
    threshold: float | None
    window: str | None


#: Every alert, in file order, with its defaults (the tuning table of alerts/README.md).
ALERTS: Mapping[str, Defaults] = {
    "CeleryWorkersAllDown": Defaults("critical", "1m", None, "1d"),
    "CeleryWorkerDown": Defaults("warning", "5m", None, "1d"),
    "CeleryWorkerConsumerDown": Defaults("warning", "2m", None, None),
    "CeleryWorkerSaturated": Defaults("warning", "15m", 0.9, "10m"),
    "CeleryTaskFailureRatioHigh": Defaults("warning", "5m", 0.1, "10m"),
    "CeleryRareTaskFailed": Defaults("info", None, 20, "1h"),
    "CeleryTaskTimeLimitExceeded": Defaults("warning", None, 0, "10m"),
    "CeleryTaskWorkerLost": Defaults("warning", None, 0, "10m"),
    "CeleryQueueNotDraining": Defaults("critical", "5m", 0, "5m"),
    "CeleryQueueBacklogGrowing": Defaults("warning", "15m", 100, "10m"),
    "CeleryQueueOldestMessageTooOld": Defaults("warning", "5m", 300, None),
    "CeleryQueueOldestMessageAgeUnknown": Defaults("info", "15m", None, None),
    "CeleryQueueWaitHigh": Defaults("warning", "10m", 60, "5m"),
    "CeleryQueueDepthPollingFailing": Defaults("warning", "2m", 60, "5m"),
    "CeleryInstrumentationErrors": Defaults("warning", None, 0, "10m"),
    "CeleryMetricsLabelOverflow": Defaults("info", None, 0, "1h"),
    "CeleryBeatDown": Defaults("critical", "2m", 420, "1d"),
    "CeleryBeatEntryOverdue": Defaults("warning", "5m", 300, "8d"),
    "CeleryPeriodicTaskNotSucceeded": Defaults("warning", None, 600, "8d"),
}

#: The alerts of the periodic group (``<group_prefix>.periodic``): they read celery beat.
PERIODIC = ("CeleryBeatDown", "CeleryBeatEntryOverdue", "CeleryPeriodicTaskNotSucceeded")

#: What ``threshold`` and ``window`` mean for each alert that has them.
TUNABLE: Mapping[str, Mapping[str, str]] = {
    "CeleryWorkersAllDown": {"window": "how long a job is remembered as having had workers"},
    "CeleryWorkerDown": {"window": "how long a job is remembered as having had workers"},
    "CeleryWorkerSaturated": {
        "threshold": "busy share of the pool, a ratio 0..1",
        "window": "the average's range",
    },
    "CeleryTaskFailureRatioHigh": {
        "threshold": "failed share of executions, a ratio 0..1",
        "window": "the short window (the long one is CeleryRareTaskFailed's)",
    },
    "CeleryRareTaskFailed": {
        "threshold": "executions in the window under which a task is rare",
        "window": "the window (also the failure ratio's long window)",
    },
    "CeleryTaskTimeLimitExceeded": {
        "threshold": "limits hit in the window",
        "window": "the range of the increase",
    },
    "CeleryTaskWorkerLost": {
        "threshold": "lost executions in the window",
        "window": "the range of the increase",
    },
    "CeleryQueueNotDraining": {
        "threshold": "messages the queue holds at every reading",
        "window": "the range of the readings and of 'nothing started'",
    },
    "CeleryQueueBacklogGrowing": {"threshold": "messages waiting", "window": "deriv's range"},
    "CeleryQueueOldestMessageTooOld": {"threshold": "age in seconds"},
    "CeleryQueueWaitHigh": {"threshold": "p95 wait in seconds", "window": "the rate's range"},
    "CeleryQueueDepthPollingFailing": {
        "threshold": "seconds since the last successful poll (also the queue rules' staleness)",
        "window": "range of the poll errors' increase",
    },
    "CeleryInstrumentationErrors": {
        "threshold": "errors in the window",
        "window": "the range of the increase",
    },
    "CeleryMetricsLabelOverflow": {
        "threshold": "overflows in the window",
        "window": "the range of the increase",
    },
    "CeleryBeatDown": {
        "threshold": "seconds since its last tick under which a running beat counts as alive",
        "window": "how long a job is remembered as having had a beat",
    },
    "CeleryBeatEntryOverdue": {
        "threshold": "grace in seconds past the entry's next due time",
        "window": "how long the entries of a beat that is gone are judged from their last values",
    },
    "CeleryPeriodicTaskNotSucceeded": {
        "threshold": "grace in seconds a sent task has to succeed (the offset of the send)",
        "window": "how long a task's last success is remembered (the recording rule's range)",
    },
}

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_RATIOS = ("CeleryWorkerSaturated", "CeleryTaskFailureRatioHigh")


def seconds(duration: str) -> float:
    """Seconds in a Prometheus duration (``1h30m`` is 5400)."""
    return sum(float(n) * _UNITS[u] for n, u in re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)", duration))


def _span(secs: float) -> str:
    """Words for a length of time: ``5 minutes``, ``an hour``, ``90 seconds``."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if secs >= size and secs % size == 0:
            count = int(secs // size)
            if count == 1:
                return f"an {unit}" if unit == "hour" else f"a {unit}"
            return f"{count} {unit}s"
    return f"{secs:g} seconds"


def _last(secs: float) -> str:
    """``the last ...``: ``hour`` for an hour, else the span (``10 minutes``)."""
    span = _span(secs)
    return span.split(" ", 1)[1] if span.startswith(("a ", "an ")) else span


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _duration(secs: float) -> str:
    """A Prometheus duration for a number of seconds: ``10m`` for 600, ``90s``, ``1500ms``."""
    if not float(secs).is_integer():
        return f"{round(secs * 1000)}ms"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size and secs % size == 0:
            return f"{int(secs // size)}{unit}"
    return f"{int(secs)}s"


def _percent(value: float) -> str:
    return f"{value * 100:g}%"


#: The longest ``long_window_interval``: the alerts read the group's series through
#: Prometheus's lookback (``--query.lookback-delta``, 5 m by default), and one missed
#: evaluation doubles the gap between samples: 2 x 2 m stays under it.
LONG_INTERVAL_MAX = 120.0
#: ``long_window_interval: auto``: this, or a quarter of the window when that is shorter.
LONG_INTERVAL_AUTO = 60.0


def long_window_interval(config: MonitoringConfig) -> str | None:
    """The long-window group's ``interval`` in ``config`` (``None``: the global one)."""
    interval = config.long_window_interval
    if interval != "auto":
        return interval
    window = seconds(str(_setting(config, "CeleryRareTaskFailed", "window")))
    return _duration(min(LONG_INTERVAL_AUTO, max(1.0, window // 4)))


def validate(config: MonitoringConfig) -> None:
    """Check the tuning against the alerts; raises :class:`MonitoringConfigError`.

    Every ``alerts:`` key must name an alert, ``threshold`` and ``window`` only
    where the alert has them, ratios within 0..1, and the failure ratio's short
    window shorter than its long one (the rare-task alert's window).
    """
    for name, tuning in config.alerts.items():
        key = f"alerts.{name}"
        if name not in ALERTS:
            raise MonitoringConfigError(key, name, "the name of an alert: " + ", ".join(ALERTS))
        knobs = TUNABLE.get(name, {})
        for knob in ("threshold", "window"):
            value = getattr(tuning, knob)
            if value is not None and knob not in knobs:
                raise MonitoringConfigError(
                    f"{key}.{knob}", value, f"nothing: {name} has no {knob}"
                )
        if name in _RATIOS and tuning.threshold is not None and not 0 < tuning.threshold < 1:
            raise MonitoringConfigError(
                f"{key}.threshold", tuning.threshold, "a ratio strictly between 0 and 1"
            )
    short = _setting(config, "CeleryTaskFailureRatioHigh", "window")
    long = _setting(config, "CeleryRareTaskFailed", "window")
    if seconds(str(short)) >= seconds(str(long)):
        raise MonitoringConfigError(
            "alerts.CeleryTaskFailureRatioHigh.window",
            short,
            f"a window shorter than CeleryRareTaskFailed's ({long}), the failure ratio's long window",
        )
    interval = config.long_window_interval
    # An interval as long as the window would let a failure come and go unseen, and
    # the alerts read the recorded series through Prometheus's lookback: an interval
    # near it would leave them gaps with no value.
    every = None if interval in (None, "auto") else seconds(str(interval))
    if every is not None and not (
        0 < every * 4 <= seconds(str(long)) and every <= LONG_INTERVAL_MAX
    ):
        raise MonitoringConfigError(
            "long_window_interval",
            interval,
            f"auto, null (the global evaluation_interval), or an interval above 0 of at most "
            f"{_duration(LONG_INTERVAL_MAX)} (the alerts read these series through the 5m "
            f"lookback) and a quarter of CeleryRareTaskFailed's window ({long})",
        )


def _setting(config: MonitoringConfig, alert: str, knob: str) -> Any:
    value = getattr(config.tuning(alert), "for_" if knob == "for" else knob)
    if value is not None:
        return value
    return getattr(ALERTS[alert], "for_" if knob == "for" else knob)


def _knobs(
    config: MonitoringConfig,
) -> tuple[Callable[[str], float], Callable[[str], str], Callable[[str], float]]:
    """An alert's threshold, window and ``for`` (in seconds, 0 without) in ``config``."""

    def threshold(alert: str) -> float:
        return float(_setting(config, alert, "threshold"))

    def window(alert: str) -> str:
        return str(_setting(config, alert, "window"))

    def for_seconds(alert: str) -> float:
        value = _setting(config, alert, "for")
        return seconds(value) if value else 0.0

    return threshold, window, for_seconds


class _PromQL:
    """Selectors and grouping clauses of one config."""

    def __init__(self, config: MonitoringConfig) -> None:
        self.worker_matchers = config.selectors.worker
        self.exporter_matchers = config.selectors.exporter
        self.beat_matchers = config.selectors.beat
        self.cluster = config.cluster_label
        self.native = config.native

    def observations(self, histogram: str, window: str, *extra: str) -> str:
        """``increase`` of a histogram's observation count over ``window``, per series, of
        either kind (``_count`` of a classic one, ``histogram_count`` of a native one)."""
        if self.native:
            return f"histogram_count(increase({self.worker(histogram, *extra)}[{window}]))"
        return f"increase({self.worker(histogram + '_count', *extra)}[{window}])"

    def worker(self, metric: str, *extra: str) -> str:
        """A series the workers serve, with the worker selector."""
        matchers = [m for m in (self.worker_matchers, *extra) if m]
        return f"{metric}{{{', '.join(matchers)}}}" if matchers else metric

    def beat(self, metric: str) -> str:
        """A series celery beat serves, with the beat selector."""
        return f"{metric}{{{self.beat_matchers}}}" if self.beat_matchers else metric

    def queue(self, metric: str) -> str:
        """A series workers or standalone exporters serve: the union of both selectors."""
        if not self.exporter_matchers or self.exporter_matchers == self.worker_matchers:
            return self.worker(metric)
        return f"({self.worker(metric)} or {metric}{{{self.exporter_matchers}}})"

    def queue_range(self, function: str, metric: str, window: str) -> str:
        """``function(metric[window])`` over :meth:`queue`'s union (a range needs a selector)."""
        worker = f"{function}({self.worker(metric)}[{window}])"
        if not self.exporter_matchers or self.exporter_matchers == self.worker_matchers:
            return worker
        return f"({worker} or {function}({metric}{{{self.exporter_matchers}}}[{window}]))"

    def package_range(self, function: str, metric: str, window: str) -> str:
        """``function(metric[window])`` over every process the package runs in: the
        workers, the standalone exporters and celery beat (each selector that is set)."""
        selectors = [self.worker_matchers]
        for matchers in (self.exporter_matchers, self.beat_matchers):
            if matchers and matchers not in selectors:
                selectors.append(matchers)
        terms = [
            f"{function}({metric}{{{m}}}[{window}])" if m else f"{function}({metric}[{window}])"
            for m in selectors
        ]
        return terms[0] if len(terms) == 1 else "(" + " or ".join(terms) + ")"

    def labels(self, *names: str) -> str:
        kept = [self.cluster, *names] if self.cluster else list(names)
        return ", ".join(kept)

    def by(self, *names: str) -> str:
        return f"by ({self.labels(*names)})"

    def on(self, *names: str) -> str:
        return f"on ({self.labels(*names)})"

    def count(self, expr: str) -> str:
        """``count(expr)``, per cluster when there is a cluster label."""
        return f"count {self.by()} ({expr})" if self.cluster else f"count({expr})"


def _windows(config: MonitoringConfig) -> dict[str, str]:
    return {
        "ratio": _setting(config, "CeleryTaskFailureRatioHigh", "window"),
        "rare": _setting(config, "CeleryRareTaskFailed", "window"),
        "draining": _setting(config, "CeleryQueueNotDraining", "window"),
        "wait": _setting(config, "CeleryQueueWaitHigh", "window"),
        "success": _setting(config, "CeleryPeriodicTaskNotSucceeded", "window"),
    }


def _records(config: MonitoringConfig) -> dict[str, str]:
    """Names of the recorded series the alerts read (windows in the names)."""
    w = _windows(config)
    return {
        "executions_short": f"task:celery_task_executions:increase{w['ratio']}",
        "failures_short": f"task:celery_task_failures:increase{w['ratio']}",
        "ratio_short": f"task:celery_task_failures:ratio{w['ratio']}",
        "executions_long": f"task:celery_task_executions:increase{w['rare']}",
        "failures_long": f"task:celery_task_failures:increase{w['rare']}",
        "ratio_long": f"task:celery_task_failures:ratio{w['rare']}",
        "queue_length": "queue:celery_queue_length:max",
        "queue_age": "queue:celery_queue_oldest_message_age_seconds:max",
        "started": f"queue:celery_task_started:increase{w['draining']}",
        "wait_buckets": f"job_queue_le:celery_task_queue_wait_seconds_bucket:rate{w['wait']}",
        "wait_p95": f"job_queue:celery_task_queue_wait_seconds:p95_{w['wait']}",
        "saturation": "job:celery_worker_saturation:ratio",
        "workers": "job:celery_worker_up:count",
        "last_success": f"name:celery_task_last_success_timestamp_seconds:max{w['success']}",
    }


#: How far back the last-success rule looks for its own last value: the longest
#: Prometheus outage (or gap in rule evaluation) it carries its memory across.
LAST_SUCCESS_CARRY = "1d"


def _last_success(q: _PromQL, record: str, window: str) -> Rule:
    """The last success of each task on any worker within ``window``, kept by the rule
    itself: the workers' gauges now, or the rule's own last value while it is younger than
    the window.  A ``max_over_time`` of the workers' gauges over the window would read
    every sample of every worker's series at each evaluation (8 days of them, per task
    and worker); this reads one sample per worker and task, and one day of one series
    per task."""
    carry = min(seconds(window), seconds(LAST_SUCCESS_CARRY))
    gauge = q.worker("celery_task_last_success_timestamp_seconds")
    return Rule(
        record=record,
        expr=f"max {q.by('name')} (\n"
        f'  label_replace(max {q.by("name")} ({gauge}), "source", "workers", "", "")\n'
        "  or\n"
        f"  label_replace(max_over_time({record}[{_duration(carry)}]) > time() - "
        f'{_num(seconds(window))}, "source", "kept", "", "")\n'
        ")",
        section="--- periodic tasks ------------------------------------------------------",
        comment=f"The last success of each task on any worker in the last {_last(seconds(window))},\n"
        "so that a restarted worker (its gauge back at 0 for every task) does not\n"
        "forget it: the workers' gauges now, or this rule's own last value while it\n"
        f"is younger than that (carried across a gap of up to {_span(carry)} in evaluation).\n"
        "A max_over_time of every worker's gauge over the window would read all of its\n"
        "samples at each evaluation.  Read by CeleryPeriodicTaskNotSucceeded.",
    )


def _fresh(q: _PromQL, config: MonitoringConfig, compare: str = "<") -> str:
    staleness = _num(_setting(config, "CeleryQueueDepthPollingFailing", "threshold"))
    last = q.queue("celery_queue_length_last_success_timestamp_seconds")
    return f"(time() - {last} {compare} {staleness})"


RECORDING_HEADER = """\
Recording rules of csuite-async-obs: the aggregates the alerts are built on.
Generated by `csuite-async-obs monitoring export` from a monitoring config
(the committed alerts/ from the default one); change the config, not this file.

Naming follows Prometheus' level:metric:operations convention, where the
level names the labels kept:
  task      = job, queue_name, name     queue = queue_name
  job_queue = job, queue_name            job   = job
  name      = name
  a trailing _le keeps the histogram bucket label le
  (and every level the config's cluster label, when it has one)
The windows in the names are tuning points; see alerts/README.md.
The dashboards do not read these series (they query the raw metrics so that
the instance filter works and they need no rules loaded)."""

ALERTS_HEADER = """\
Alerting rules of csuite-async-obs.  They read the recording rules in
recording.rules.yml: load both files.
Generated by `csuite-async-obs monitoring export` from a monitoring config
(the committed alerts/ from the default one); change the config, not this file.

Every threshold, window and `for` below is a tuning point (the config's
`alerts:` section); alerts/README.md lists them with their defaults and has the
runbook section of each alert (the `runbook` annotation names it).  Severities:
critical = page, warning = look today, info = ticket / chat, never a page."""


def _wait_p95(q: _PromQL, r: Mapping[str, str], window: str) -> list[Rule]:
    """The p95 queue wait per job and queue: through the recorded buckets of a classic
    histogram, directly from a native one (its buckets are in each sample)."""
    wait = "celery_task_queue_wait_seconds"
    if q.native:
        return [
            Rule(
                record=r["wait_p95"],
                expr=f"histogram_quantile(0.95, sum {q.by('job', 'queue_name')} "
                f"(rate({q.worker(wait)}[{window}])))",
            )
        ]
    return [
        Rule(
            record=r["wait_buckets"],
            expr=f"sum {q.by('job', 'queue_name', 'le')} "
            f"(rate({q.worker(wait + '_bucket')}[{window}]))",
        ),
        Rule(record=r["wait_p95"], expr=f"histogram_quantile(0.95, {r['wait_buckets']})"),
    ]


def recording_groups(config: MonitoringConfig) -> list[Group]:
    """The recording rule groups: ``<group_prefix>.recording``, and
    ``<group_prefix>.recording.long`` (the long-window failure rules, evaluated every
    ``long_window_interval``)."""
    q = _PromQL(config)
    r = _records(config)
    w = _windows(config)
    task_by = q.by("job", "queue_name", "name")
    runtime = "celery_task_runtime_seconds"
    failed = 'state="failed"'
    staleness = _num(_setting(config, "CeleryQueueDepthPollingFailing", "threshold"))
    rules: list[Rule] = []
    headings = {
        "short": (
            "--- failure ratio with a minimum volume -------------------------------",
            "Every execution ends in exactly one state of the runtime histogram; the\n"
            "succeeded and failed series exist at 0 from worker start, so a task's first\n"
            "failure is an increase from 0 to 1 that increase() sees\n"
            "(celery_task_failed_total would appear at 1 and be missed).  The other\n"
            "states' series appear at their first run (default profile), which\n"
            "increase() misses: at most one execution per state, task and worker.",
        ),
        "long": (
            "--- failure ratio over the long window ---------------------------------",
            "The same over CeleryRareTaskFailed's window, in a group of its own with a\n"
            "longer interval (the config's long_window_interval): these read every\n"
            "sample of the window per task, queue and worker, the costliest rules at\n"
            "fleet scale, for alerts that a minute's delay does not change.",
        ),
    }
    failure_rules: dict[str, list[Rule]] = {}
    for window, kind in ((w["ratio"], "short"), (w["rare"], "long")):
        section, comment = headings[kind]
        failure_rules[kind] = [
            Rule(
                record=r[f"executions_{kind}"],
                expr=f"sum {task_by} ({q.observations(runtime, window)})",
                section=section,
                comment=comment,
            ),
            Rule(
                record=r[f"failures_{kind}"],
                expr=f"sum {task_by} ({q.observations(runtime, window, failed)})",
            ),
            Rule(
                record=r[f"ratio_{kind}"],
                expr=f"{r[f'failures_{kind}']} / {r[f'executions_{kind}']}",
            ),
        ]
    rules += failure_rules["short"]
    fresh = _fresh(q, config)
    on_target = q.on("job", "instance")
    for key, metric in (
        ("queue_length", "celery_queue_length"),
        ("queue_age", "celery_queue_oldest_message_age_seconds"),
    ):
        rules.append(
            Rule(
                record=r[key],
                expr=f"max {q.by('queue_name')} (\n"
                f"  {q.queue(metric)}\n"
                f"  and {on_target} {fresh}\n"
                ")\n",
                section="--- queues --------------------------------------------------------------"
                if key == "queue_length"
                else "",
                comment="Every process that polls queue depth (each worker, or one standalone\n"
                "exporter) reports the same broker: take the max per queue, and only\n"
                f"readings from pollers whose last successful poll is under {staleness} s old, so\n"
                "that a dead broker's frozen numbers do not drive the backlog alerts\n"
                "(CeleryQueueDepthPollingFailing covers that case)."
                if key == "queue_length"
                else "",
            )
        )
    rules += [
        Rule(
            record=r["started"],
            expr=f"sum {q.by('queue_name')} "
            f"(increase({q.worker('celery_task_started_total')}[{w['draining']}]))",
        ),
        *_wait_p95(q, r, w["wait"]),
        Rule(
            record=r["saturation"],
            expr=f"sum {q.by('job')} ({q.worker('celery_worker_tasks_active')}) / "
            f"sum {q.by('job')} ({q.worker('celery_worker_pool_size')})",
            section="--- workers -------------------------------------------------------------",
        ),
        Rule(
            record=r["workers"],
            expr=f"count {q.by('job')} ({q.worker('celery_worker_up')})",
            comment="One series per job while at least one of its workers is scraped: the\n"
            'cheap memory behind "this job had workers" in the worker-down alerts.',
        ),
        _last_success(q, r["last_success"], w["success"]),
    ]
    return [
        Group(f"{config.group_prefix}.recording", rules),
        Group(
            f"{config.group_prefix}.recording.long",
            failure_rules["long"],
            long_window_interval(config),
        ),
    ]


def _alert(
    config: MonitoringConfig,
    name: str,
    expr: str,
    summary: str,
    description: str,
    section: str = "",
    comment: str = "",
) -> Rule:
    return Rule(
        alert=name,
        expr=expr,
        for_=_setting(config, name, "for"),
        labels={"severity": _setting(config, name, "severity")},
        annotations={
            "summary": summary,
            "description": description,
            "runbook": config.runbook(name),
        },
        section=section,
        comment=comment,
    )


def alert_groups(config: MonitoringConfig) -> list[Group]:
    """The alerting rule groups, without disabled alerts: ``<group_prefix>.alerts`` and
    ``<group_prefix>.periodic`` (the latter left out when all of its alerts are disabled)."""
    validate(config)
    q = _PromQL(config)
    r = _records(config)
    t, win, for_secs = _knobs(config)

    job_on = q.on("job")
    task_on = q.on("job", "queue_name", "name")
    workers_up = f"and {q.on()} {q.count(q.worker('celery_worker_up'))} > 0"
    remembered = "group {by} (last_over_time({rec}[{window}]))"
    rare = _num(t("CeleryRareTaskFailed"))
    rare_window = win("CeleryRareTaskFailed")
    ratio = t("CeleryTaskFailureRatioHigh")
    alerts = [
        _alert(
            config,
            "CeleryWorkersAllDown",
            remembered.format(by=q.by("job"), rec=r["workers"], window=win("CeleryWorkersAllDown"))
            + f"\nunless {job_on}\n(sum {q.by('job')} ({q.worker('up')}) > 0)\n",
            "No Celery worker of job {{ $labels.job }} is up",
            "Every scrape target of job {{ $labels.job }} is down or gone, although it had "
            f"Celery workers in the last {_last(seconds(win('CeleryWorkersAllDown')))}. "
            "Nothing is consuming its queues.",
            section="------------------------------------------------------------ workers",
            comment="A job that had Celery workers in the last "
            f"{_last(seconds(win('CeleryWorkersAllDown')))} (the recorded count\n"
            "remembers it) and has no target up now: every worker killed, or every\n"
            "target gone from service discovery.  celery_worker_up vanishes with\n"
            "the process, so only `up` and absence can tell; it is never 0.",
        ),
        _alert(
            config,
            "CeleryWorkerDown",
            f"{q.worker('up')} == 0\nand {job_on} "
            + remembered.format(by=q.by("job"), rec=r["workers"], window=win("CeleryWorkerDown"))
            + "\n",
            "Celery worker {{ $labels.instance }} of job {{ $labels.job }} cannot be scraped",
            "Prometheus has failed to scrape {{ $labels.instance }} for "
            f"{_span(for_secs('CeleryWorkerDown'))}: the worker process is dead, hung or "
            "unreachable. Other workers of the job are unaffected unless CeleryWorkersAllDown "
            "fires too.",
        ),
        _alert(
            config,
            "CeleryWorkerConsumerDown",
            f"{q.worker('celery_worker_consumer_up')} == 0",
            "Worker {{ $labels.instance }} is running but not consuming",
            "The worker process answers scrapes, but its consumer has been disconnected from "
            f"the broker for {_span(for_secs('CeleryWorkerConsumerDown'))}: it takes no new "
            "tasks.",
        ),
        _alert(
            config,
            "CeleryWorkerSaturated",
            f"avg_over_time({r['saturation']}[{win('CeleryWorkerSaturated')}]) > "
            f"{_num(t('CeleryWorkerSaturated'))}",
            "Workers of job {{ $labels.job }} are {{ $value | humanizePercentage }} busy",
            f"On average over {_span(seconds(win('CeleryWorkerSaturated')))}, for "
            f"{_span(for_secs('CeleryWorkerSaturated'))}, more than "
            f"{_percent(t('CeleryWorkerSaturated'))} of the pool processes of job "
            "{{ $labels.job }} have been executing tasks. Any more load waits in the queue.",
        ),
        _alert(
            config,
            "CeleryTaskFailureRatioHigh",
            "(\n"
            f"  {r['ratio_short']} > {_num(ratio)}\n"
            f"  and {task_on} {r['executions_short']} >= {rare}\n"
            ")\n"
            "or\n"
            "(\n"
            f"  {r['ratio_long']} > {_num(ratio)}\n"
            f"  and {task_on} {r['executions_long']} >= {rare}\n"
            f"  unless {task_on} {r['executions_short']} >= {rare}\n"
            ")\n",
            "Task {{ $labels.name }} fails {{ $value | humanizePercentage }} of its executions",
            f"More than {_percent(ratio)} of the executions of {{{{ $labels.name }}}} (queue "
            "{{ $labels.queue_name }}, job {{ $labels.job }}) failed, over at least "
            f"{rare} executions, for {_span(for_secs('CeleryTaskFailureRatioHigh'))}.",
            section="------------------------------------------------------------ task outcomes",
            comment=f"Judged on {_span(seconds(win('CeleryTaskFailureRatioHigh')))} when the task "
            f"ran at least {rare} times in them, else\n"
            f"on the last {_last(seconds(rare_window))} when it ran at least {rare} times in it; "
            "a task below that\n"
            'is "rare" and CeleryRareTaskFailed reports any failure instead. Each\n'
            "task is judged by exactly one of the three (within a long_window_interval\n"
            "of a change: the long-window series are that much older).",
        ),
        _alert(
            config,
            "CeleryRareTaskFailed",
            f"{r['failures_long']} > 0\nunless {task_on} {r['executions_long']} >= {rare}\n",
            f"Rarely run task {{{{ $labels.name }}}} failed in the last "
            f"{_last(seconds(rare_window))}",
            "{{ $labels.name }} (queue {{ $labels.queue_name }}, job {{ $labels.job }}) ran "
            f"fewer than {rare} times in the last {_last(seconds(rare_window))}, too few for a "
            "failure ratio, and failed about {{ $value | humanize }} time(s). The alert stays "
            f"for {_span(seconds(rare_window))} after the last failure.",
        ),
        _alert(
            config,
            "CeleryTaskTimeLimitExceeded",
            f"sum {q.by('job', 'queue_name', 'name', 'kind')} (\n"
            f"  increase({q.worker('celery_task_time_limit_exceeded_total')}"
            f"[{win('CeleryTaskTimeLimitExceeded')}])\n"
            f") > {_num(t('CeleryTaskTimeLimitExceeded'))}\n",
            "Task {{ $labels.name }} hit its {{ $labels.kind }} time limit",
            "{{ $labels.name }} (queue {{ $labels.queue_name }}) exceeded its "
            "{{ $labels.kind }} time limit about {{ $value | humanize }} time(s) in the last "
            f"{_last(seconds(win('CeleryTaskTimeLimitExceeded')))}. A hard limit kills the "
            "pool process running it.",
        ),
        _alert(
            config,
            "CeleryTaskWorkerLost",
            f"sum {q.by('job', 'instance', 'queue_name', 'name')} (\n"
            f"  increase({q.worker('celery_task_worker_lost_total')}"
            f"[{win('CeleryTaskWorkerLost')}])\n"
            f") > {_num(t('CeleryTaskWorkerLost'))}\n",
            "A pool process died under task {{ $labels.name }} on {{ $labels.instance }}",
            "About {{ $value | humanize }} execution(s) of {{ $labels.name }} on "
            "{{ $labels.instance }} ended with WorkerLostError in the last "
            f"{_last(seconds(win('CeleryTaskWorkerLost')))}: the pool process was killed "
            "(SIGKILL, OOM killer) or crashed.",
        ),
        _alert(
            config,
            "CeleryQueueNotDraining",
            "(\n"
            f"  min_over_time({r['queue_length']}[{win('CeleryQueueNotDraining')}]) > "
            f"{_num(t('CeleryQueueNotDraining'))}\n"
            f"  unless {q.on('queue_name')} {r['started']} > 0\n"
            ")\n"
            f"{workers_up}\n",
            "Queue {{ $labels.queue_name }} has a backlog and nothing is taking from it",
            "Queue {{ $labels.queue_name }} has held at least {{ $value }} message(s) at every "
            "reading for "
            + _span(seconds(win("CeleryQueueNotDraining")) + for_secs("CeleryQueueNotDraining"))
            + " and no task of it has started, although workers are up: its consumers are "
            "stuck, cancelled or not subscribed to it.",
            section="------------------------------------------------------------ queues",
            comment=f"Backlog at every reading of the last {_last(seconds(win('CeleryQueueNotDraining')))}, "
            "and not one task of the\n"
            "queue started in them, while some worker is up (all down is\n"
            "CeleryWorkersAllDown).",
        ),
        _alert(
            config,
            "CeleryQueueBacklogGrowing",
            "(\n"
            f"  {r['queue_length']} > {_num(t('CeleryQueueBacklogGrowing'))}\n"
            f"  and deriv({r['queue_length']}[{win('CeleryQueueBacklogGrowing')}]) > 0\n"
            ")\n"
            f"{workers_up}\n",
            "Queue {{ $labels.queue_name }} keeps growing ({{ $value }} waiting)",
            "Queue {{ $labels.queue_name }} holds more than "
            f"{_num(t('CeleryQueueBacklogGrowing'))} messages and has kept growing for "
            f"{_span(for_secs('CeleryQueueBacklogGrowing'))} while workers are up: tasks "
            "arrive faster than they are consumed.",
        ),
        _alert(
            config,
            "CeleryQueueOldestMessageTooOld",
            f"{r['queue_age']} > {_num(t('CeleryQueueOldestMessageTooOld'))}",
            "Oldest message in queue {{ $labels.queue_name }} is "
            "{{ $value | humanizeDuration }} old",
            "The oldest waiting message of queue {{ $labels.queue_name }} has been older than "
            f"{_span(t('CeleryQueueOldestMessageTooOld'))} for "
            f"{_span(for_secs('CeleryQueueOldestMessageTooOld'))}.",
        ),
        _alert(
            config,
            "CeleryQueueOldestMessageAgeUnknown",
            f"count {q.by('job', 'instance')} (\n"
            f"  {q.queue('celery_queue_length')}\n"
            f"  unless {q.on('job', 'instance', 'queue_name')} "
            f"{q.queue('celery_queue_oldest_message_age_seconds')}\n"
            ")\n"
            f"and {q.on('job', 'instance')} {_fresh(q, config)}\n",
            "{{ $labels.instance }} reports {{ $value }} queue(s) without their oldest "
            "message's age",
            "{{ $labels.instance }} (job {{ $labels.job }}) has reported the length of "
            "{{ $value }} queue(s) for "
            f"{_span(for_secs('CeleryQueueOldestMessageAgeUnknown'))} without the age of "
            "their oldest message, so CeleryQueueOldestMessageTooOld cannot fire for them: on "
            "RabbitMQ the management API is unreachable (passive declares tell no ages), or "
            "the messages at the head were published without csuite-async-obs.",
            comment="CeleryQueueOldestMessageTooOld reads the age series; a poller that\n"
            "reports a queue's length without it makes that alert blind for the\n"
            "queue: passive declares on RabbitMQ (the management API unreachable),\n"
            "or a head message published without csuite-async-obs (no publish\n"
            "time).  An empty queue has age 0, never no age, on a reader that\n"
            "tells ages.  Only pollers whose last poll succeeded recently count.",
        ),
        _alert(
            config,
            "CeleryQueueWaitHigh",
            f"{r['wait_p95']} > {_num(t('CeleryQueueWaitHigh'))}",
            "Tasks of queue {{ $labels.queue_name }} wait {{ $value | humanizeDuration }} "
            "(p95) before they start",
            "The 95th percentile of the time from publish to start of tasks of queue "
            "{{ $labels.queue_name }} (job {{ $labels.job }}) has been above "
            f"{_num(t('CeleryQueueWaitHigh'))} seconds for {_span(for_secs('CeleryQueueWaitHigh'))}.",
        ),
        _alert(
            config,
            "CeleryQueueDepthPollingFailing",
            f"{_fresh(q, config, '>')}\n"
            f"and {q.on('job', 'instance')} "
            + q.queue_range(
                "increase",
                "celery_queue_length_poll_errors_total",
                win("CeleryQueueDepthPollingFailing"),
            )
            + " > 0\n",
            "{{ $labels.instance }} cannot read queue depth from the broker",
            "The last successful queue-depth poll of {{ $labels.instance }} is "
            "{{ $value | humanizeDuration }} old and its polls keep failing: the broker is "
            "down, unreachable or too slow. Queue-length readings are frozen.",
        ),
        _alert(
            config,
            "CeleryInstrumentationErrors",
            f"sum {q.by('job', 'instance', 'hook')} (\n"
            f"  {q.package_range('increase', 'csuite_async_obs_instrumentation_errors_total', win('CeleryInstrumentationErrors'))}\n"
            f") > {_num(t('CeleryInstrumentationErrors'))}\n",
            "csuite-async-obs caught errors in its {{ $labels.hook }} hook on "
            "{{ $labels.instance }}",
            "The instrumentation caught about {{ $value | humanize }} error(s) in hook "
            f"{{{{ $labels.hook }}}} in {_span(seconds(win('CeleryInstrumentationErrors')))}. "
            "Tasks are unaffected, but some metrics of {{ $labels.instance }} may be "
            "incomplete.",
            section="------------------------------------------------------------ the instrumentation",
        ),
        _alert(
            config,
            "CeleryMetricsLabelOverflow",
            f"sum {q.by('job', 'instance', 'label')} (\n"
            f"  {q.package_range('increase', 'csuite_async_obs_label_overflow_total', win('CeleryMetricsLabelOverflow'))}\n"
            f") > {_num(t('CeleryMetricsLabelOverflow'))}\n",
            "Label {{ $labels.label }} reached its cardinality cap on {{ $labels.instance }}",
            'New values of label {{ $labels.label }} are being reported as "other": more '
            "distinct values than the configured cap arrived in the last "
            f"{_last(seconds(win('CeleryMetricsLabelOverflow')))}.",
        ),
    ]
    groups = [Group(f"{config.group_prefix}.alerts", _enabled(config, alerts))]
    periodic = _enabled(config, periodic_alerts(config))
    if periodic:
        groups.append(Group(f"{config.group_prefix}.periodic", periodic))
    return groups


def periodic_alerts(config: MonitoringConfig) -> list[Rule]:
    """The alerts on celery beat and its periodic tasks (the ``.periodic`` group), all of them.

    Beat is a scrape target of its own (``selectors.beat``).  Entries are keyed by
    ``(job, entry, task)``, never by ``instance``: a beat restarted on another host
    is the same schedule.  Beat's ``task`` label is the workers' ``name`` label; it is
    copied with ``label_join`` (``label_replace`` would need ``$1``, which Grafana's
    templating eats where the same text goes into a dashboard).
    """
    q = _PromQL(config)
    r = _records(config)
    t, win, for_secs = _knobs(config)

    tick = t("CeleryBeatDown")
    grace_due = t("CeleryBeatEntryOverdue")
    grace_run = t("CeleryPeriodicTaskNotSucceeded")
    live_beat = q.beat("celery_beat_up")
    sent = (
        "label_join(\n"
        f"    max {q.by('job', 'task')} "
        f"({q.beat('celery_beat_entry_last_sent_timestamp_seconds')} "
        f"offset {_duration(grace_run)}) > 0,\n"
        '    "name", "", "task"\n'
        "  )"
    )
    next_due = q.beat("celery_beat_entry_next_due_timestamp_seconds")
    return [
        _alert(
            config,
            "CeleryBeatDown",
            f"group {q.by('job')} (last_over_time({live_beat}[{win('CeleryBeatDown')}]))\n"
            f"unless {q.on('job')}\n"
            "(\n"
            f"  {live_beat} == 1\n"
            f"  and {q.on('job', 'instance')} "
            f"(time() - {q.beat('celery_beat_last_tick_timestamp_seconds')} < {_num(tick)})\n"
            ")\n",
            "No celery beat of job {{ $labels.job }} is running",
            "No process of job {{ $labels.job }} serves celery_beat_up with a scheduler tick "
            f"in the last {_last(tick)}, although celery beat ran in it in the last "
            f"{_last(seconds(win('CeleryBeatDown')))}: beat was killed, hangs, or its target "
            "is gone. No periodic task is being sent.",
            section="------------------------------------------------------------ periodic tasks",
            comment="A job that ran celery beat in the last "
            f"{_last(seconds(win('CeleryBeatDown')))} and has no beat now that is\n"
            f"up and ticked within {_num(tick)} s.  celery_beat_up vanishes with the process\n"
            "(SIGKILL, target down or gone; it is never 0); a hung scheduler stops\n"
            "ticking (beat ticks at least every beat_max_loop_interval, 300 s by default).",
        ),
        _alert(
            config,
            "CeleryBeatEntryOverdue",
            f"time() - max {q.by('job', 'entry', 'task')} (\n"
            f"  {next_due}\n"
            "  or\n"
            "  (\n"
            f"    last_over_time({next_due}[{win('CeleryBeatEntryOverdue')}])\n"
            f"    unless {q.on('job')} {live_beat}\n"
            "  )\n"
            f") > {_num(grace_due)}\n",
            "Periodic entry {{ $labels.entry }} ({{ $labels.task }}) is "
            "{{ $value | humanizeDuration }} past its due time",
            "Beat entry {{ $labels.entry }} of job {{ $labels.job }} has been more than "
            f"{_span(grace_due)} past its due time, unsent, for "
            f"{_span(for_secs('CeleryBeatEntryOverdue'))}: task {{{{ $labels.task }}}} is not "
            "sent on its schedule. While no beat of the job runs, its entries are judged "
            "from their last values.",
            comment="A running beat's entries are read as they are now (an entry removed\n"
            "from its schedule is gone at once); while the job has no beat running\n"
            "(SIGKILL: the series vanish), from their last values in the last\n"
            f"{_last(seconds(win('CeleryBeatEntryOverdue')))}, so that its entries still fall due.  Keyed by job, not instance: a beat\n"
            "restarted elsewhere is the same schedule.",
        ),
        _alert(
            config,
            "CeleryPeriodicTaskNotSucceeded",
            "(\n"
            f"  {sent}\n"
            f"  > {q.on('name')} group_left ()\n"
            f"  {r['last_success']}\n"
            ")\n"
            "or\n"
            "(\n"
            f"  {sent}\n"
            f"  unless {q.on('name')}\n"
            f"  {r['last_success']}\n"
            ")\n",
            "Periodic task {{ $labels.name }} has not succeeded since beat last sent it",
            "Beat (job {{ $labels.job }}) last sent {{ $labels.name }} at "
            f"{{{{ $value | humanizeTimestamp }}}}, more than {_span(grace_run)} ago, and no "
            "worker has seen it succeed since: it failed, is still waiting or running, or was "
            "lost. A task that no worker registered counts as never succeeded.",
            comment=f"Beat's last send of the task as of {_span(grace_run)} ago (offset), later "
            "than its\n"
            "last success on any worker (the recorded max over "
            f"{_span(seconds(win('CeleryPeriodicTaskNotSucceeded')))}), or a task\n"
            "no worker has a success series of.  Entries never sent (0) never fire.",
        ),
    ]


def _enabled(config: MonitoringConfig, alerts: Sequence[Rule]) -> list[Rule]:
    """The enabled alerts; a disabled alert's section heading moves to the next one kept."""
    out: list[Rule] = []
    heading = ""
    for rule in alerts:
        heading = rule.section or heading
        if config.tuning(str(rule.alert)).enabled:
            out.append(replace(rule, section=heading))
            heading = ""
    return out


def slo_groups(config: MonitoringConfig) -> list[dict[str, Any]]:
    """The SLO rule groups of :mod:`.slo` (none without that module or without ``slos``)."""
    if importlib.util.find_spec(f"{__package__}.slo") is None:
        return []
    module = importlib.import_module(f"{__package__}.slo")
    groups: list[dict[str, Any]] = module.slo_rule_groups(config)
    return groups


def all_groups(config: MonitoringConfig) -> list[Group | dict[str, Any]]:
    """Every rule group of the config: recording, alerts, then the SLO groups."""
    return [*recording_groups(config), *alert_groups(config), *slo_groups(config)]


def rule_files(config: MonitoringConfig) -> dict[str, str]:
    """File name -> YAML text of the plain Prometheus rule files, in loading order.

    ``recording.rules.yml`` and ``alerts.rules.yml`` always; ``slo.rules.yml`` when
    the config has SLO groups.

    Raises:
        MonitoringConfigError: the tuning names an unknown alert or a knob it lacks.
    """
    validate(config)
    files = {
        "recording.rules.yml": dump_groups(recording_groups(config), RECORDING_HEADER),
        "alerts.rules.yml": dump_groups(alert_groups(config), ALERTS_HEADER),
    }
    slo: Sequence[Mapping[str, Any]] = slo_groups(config)
    if slo:
        files["slo.rules.yml"] = dump_groups(
            slo,
            "Service-level objectives of csuite-async-obs, generated from the monitoring\n"
            "config's `slos:`.  They read only raw series: load this file alone or with the others.",
        )
    return files
