"""The two Grafana dashboards, one function per row, built from the monitoring config.

**overview** (every task, queue and worker of the chosen jobs) and **task** (one
task in depth), linked both ways; the overview's tables of failing tasks and
exceptions open the task dashboard on the clicked row.  Imports the Grafana
Foundation SDK (through :mod:`.panels`): :func:`.dashboards.render` imports this
module lazily.

Design of the queries (the filters themselves are in :mod:`.queries`):

* Panels read the raw metrics, not the recording rules in ``alerts/``: the
  instance filter must work on every panel, and a dashboard imported without
  the rules must still show data.
* Task panels filter on ``job``, ``instance``, ``queue_name`` and ``name``
  (variables ``job``, ``instance``, ``queue_name``, ``task``).
* Queue-depth panels are broker-wide: every process that polls (each worker, or
  one ``csuite-async-obs exporter``, often in a job of its own) reports the same
  broker, so they aggregate with ``max by (queue_name)`` and filter on
  ``queue_name`` only.
* Failure ratios divide ``celery_task_runtime_seconds_count{state="failed"}`` by
  the count over every state; those series exist at 0 from worker start, while
  ``celery_task_failed_total{exception}`` appears at a task's first failure and
  is used where the exception class matters.
* The "Periodic tasks" row reads celery beat's own target (the beat selector):
  one row per schedule entry, keyed by ``job, entry, task``, with its task's
  last success and failure on the workers joined on ``name`` (``label_join``
  copies beat's ``task`` label: no ``$1`` for Grafana to eat).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import heatmap
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from .config import MonitoringConfig
from .panels import (
    DATASOURCE,
    dashboard_url,
    graph,
    header,
    lifecycle,
    listing,
    numbered,
    per_minute,
    percentiles,
    query,
    row,
    single,
)
from .queries import RANGE, RATE, RUNTIME, Scope, series
from .rules import ALERTS

__all__ = ["OVERVIEW", "TASK", "Board", "overview", "task_dashboard"]

#: uid suffixes and titles; the config's uid prefix and title prefix come before them.
OVERVIEW = ("async-obs-overview", "Celery tasks: overview (csuite-async-obs)")
TASK = ("async-obs-task", "Celery tasks: task detail (csuite-async-obs)")


@dataclass(frozen=True)
class Board:
    """What every row of both dashboards reads: the query scope, uids, titles, tags."""

    s: Scope
    overview_uid: str
    task_uid: str
    title_prefix: str
    tags: tuple[str, ...]
    #: Seconds past its due time after which an entry is overdue (CeleryBeatEntryOverdue's).
    overdue_grace: float = 300

    @classmethod
    def from_config(cls, config: MonitoringConfig) -> Board:
        settings = config.dashboards
        grace = config.tuning("CeleryBeatEntryOverdue").threshold
        if grace is None:
            grace = ALERTS["CeleryBeatEntryOverdue"].threshold
        return cls(
            Scope.from_config(config),
            settings.uid_prefix + OVERVIEW[0],
            settings.uid_prefix + TASK[0],
            settings.title_prefix,
            settings.tags,
            float(grace or 0),
        )

    def link(self, title: str) -> tuple[str, str, Scope]:
        """A table column's link to the task dashboard (see :func:`.panels.task_link`)."""
        return (title, self.task_uid, self.s)


# --------------------------------------------------------------------------- overview


def overview(b: Board) -> dash.Dashboard:
    """Every task, queue and worker of the selected jobs."""
    d = header(
        b.s,
        b.title_prefix + OVERVIEW[1],
        b.overview_uid,
        "Throughput, failures, latency, queues and workers of Celery apps "
        "instrumented with csuite-async-obs.",
        task_multi=True,
        link_title="Task detail",
        link_url=dashboard_url(b.task_uid),
        tags=b.tags,
    )
    d = _overview_now(d, b)
    d = _overview_throughput(d, b)
    d = _overview_latency(d, b)
    d = _overview_queues(d, b)
    d = _overview_workers(d, b)
    d = _overview_periodic(d, b)
    return _overview_instrumentation(d, b)


def _overview_now(d: dash.Dashboard, b: Board) -> dash.Dashboard:
    """Row "Now": the current value of the headline numbers, red past their thresholds."""
    s = b.s
    return row(
        d,
        "Now",
        [
            single(
                "Workers up",
                "Scrape targets of the selected jobs that answer (Prometheus's `up`); "
                "a killed worker's own series vanish, so only `up` shows it.",
                [query(s.agg("sum", tight=True) + f"up{{{s.worker}}})", "up")],
                width=3,
            ),
            single(
                "Saturation",
                "Pool processes executing a task, over all pool processes.",
                [
                    query(
                        s.agg("sum", tight=True)
                        + f"celery_worker_tasks_active{{{s.worker}}})"
                        + " / "
                        + s.agg("sum", tight=True)
                        + f"celery_worker_pool_size{{{s.worker}}})"
                    )
                ],
                unit="percentunit",
                width=3,
                red_above=0.9,
            ),
            single(
                "Throughput",
                "Executions finished per second, every outcome.",
                [query(s.observations("rate", RUNTIME, s.task))],
                unit="ops",
                width=3,
            ),
            single(
                "Failure ratio",
                "Failed executions over all executions, over the rate interval.",
                [query(s.failure_ratio(s.task))],
                unit="percentunit",
                width=3,
                red_above=0.1,
            ),
            single(
                "Backlog",
                "Messages waiting in the selected queues (max over the processes that poll them).",
                [
                    query(
                        s.agg("sum", tight=True)
                        + s.agg("max", "queue_name")
                        + s.queue("celery_queue_length")
                        + "))"
                    )
                ],
                width=3,
            ),
            single(
                "Oldest message",
                "Age of the oldest waiting message over the selected queues.",
                [
                    query(
                        s.agg("max", tight=True)
                        + s.queue("celery_queue_oldest_message_age_seconds")
                        + ")"
                    )
                ],
                unit="s",
                width=3,
                red_above=300,
            ),
            single(
                "Time-limit kills in range",
                "Executions that hit a soft or hard time limit in the time range.",
                [query(s.increase("celery_task_time_limit_exceeded_total", s.task))],
                width=3,
                red_above=1,
            ),
            single(
                "Lost children in range",
                "Executions whose pool process died under them (SIGKILL, OOM) in the time range.",
                [query(s.increase("celery_task_worker_lost_total", s.task))],
                width=3,
                red_above=1,
            ),
        ],
    )


def _overview_throughput(d: dash.Dashboard, b: Board) -> dash.Dashboard:
    """Row "Throughput and failures": executions by outcome, retries, top failing tasks."""
    s = b.s
    # The ratio column keeps only the rows of the failures column (`and on`), so
    # both columns describe the same ten tasks.
    top_failed = (
        "topk(10, "
        + s.observations("increase", RUNTIME, s.failed, "queue_name, name", RANGE)
        + ") > 0"
    )
    return row(
        d,
        "Throughput and failures",
        [
            graph(
                "Throughput by outcome",
                "Executions finished per second, by final state of the "
                "execution (a retried execution is one that raised Retry).",
                [query(s.observations("rate", RUNTIME, s.task, "state"), "{{state}}")],
                unit="ops",
            ),
            graph(
                "Failure ratio by task",
                "Failed executions over all executions of each task.",
                [query(s.failure_ratio(s.task, "queue_name, name"), "{{name}} ({{queue_name}})")],
                unit="percentunit",
            ),
            lifecycle(
                s,
                "Task lifecycle",
                "Messages per second at each step: sent (by any publisher), "
                "received and started by workers, and how they ended; redelivered: "
                "delivered again after a lost connection or worker (not in received).",
                (
                    "received",
                    "redelivered",
                    "started",
                    "succeeded",
                    "failed",
                    "retried",
                    "revoked",
                    "rejected",
                ),
            ),
            graph(
                "Retries by task",
                "Executions that raised Retry and were re-published, per second.",
                [
                    query(
                        s.rate("celery_task_retried_total", s.task, "queue_name, name"),
                        "{{name}} ({{queue_name}})",
                    )
                ],
                unit="ops",
            ),
            listing(
                "Top failing tasks",
                "Tasks with the most failed executions in the time range. "
                "Click a name for the task dashboard.",
                [
                    query("sort_desc(" + top_failed + ")", instant=True),
                    query(
                        f"(\n{s.failure_ratio(s.task, 'queue_name, name', RANGE)}\n)\n"
                        f"and {s.on('queue_name, name')}\n" + top_failed,
                        instant=True,
                    ),
                ],
                rename={"Value #A": "failures", "Value #B": "failure ratio"},
                sort_by="failures",
                link=b.link("Open task ${__data.fields.name}"),
            ),
            listing(
                "Top exceptions",
                "Exception classes of the failures in the time range, by task "
                "(time limits show as TimeLimitExceeded, lost pool processes as "
                "WorkerLostError). Click a name for the task dashboard.",
                [
                    query(
                        "sort_desc(topk(10, " + s.failures_by_exception() + ") > 0)",
                        instant=True,
                    ),
                ],
                rename={"Value": "failures"},
                sort_by="failures",
                link=b.link("Open task ${__data.fields.name}"),
            ),
        ],
    )


def _overview_latency(d: dash.Dashboard, b: Board) -> dash.Dashboard:
    """Row "Latency": runtime and queue-wait percentiles and means, unmeasured waits."""
    s = b.s
    return row(
        d,
        "Latency",
        [
            percentiles(
                s,
                "Runtime p50 / p95 / p99",
                "Time executions ran in the pool, every outcome.",
                "celery_task_runtime_seconds",
            ),
            percentiles(
                s,
                "Queue wait p50 / p95 / p99",
                "Time from publish (or ETA) until a pool process started the task.",
                "celery_task_queue_wait_seconds",
            ),
            graph(
                "Mean runtime and queue wait",
                "Sum of observed seconds over the number of observations, per rate interval.",
                [
                    query(
                        s.observed_sum("celery_task_runtime_seconds", s.task)
                        + "\n/\n"
                        + s.observations("rate", "celery_task_runtime_seconds", s.task),
                        "runtime",
                    ),
                    query(
                        s.observed_sum("celery_task_queue_wait_seconds", s.task)
                        + "\n/\n"
                        + s.observations("rate", "celery_task_queue_wait_seconds", s.task),
                        "queue wait",
                    ),
                ],
                unit="s",
            ),
            graph(
                "Queue wait not measured",
                "Tasks started without the publish timestamp header "
                "(published by a process without csuite-async-obs): their wait is not in the "
                "histogram; and tasks whose wait came out negative (the publisher's clock "
                "ahead of the worker's), recorded as 0.",
                [
                    query(
                        s.rate(
                            "celery_task_queue_wait_unmeasured_total", s.task, "queue_name, name"
                        ),
                        "{{name}} ({{queue_name}})",
                    ),
                    query(
                        s.rate("celery_task_queue_wait_clamped_total", s.task, "queue_name, name"),
                        "{{name}} ({{queue_name}}) clamped at 0: clock skew",
                    ),
                ],
                unit="ops",
            ),
        ],
    )


def _overview_queues(d: dash.Dashboard, b: Board) -> dash.Dashboard:
    """Row "Queues": broker-wide length, oldest age, unacked messages and consumers per queue,
    and polling health."""
    s = b.s
    return row(
        d,
        "Queues (broker-wide: filtered by queue only)",
        [
            graph(
                "Queue length",
                "Messages waiting in each queue, all priority sub-queues included.",
                [
                    query(
                        s.agg("max", "queue_name") + s.queue("celery_queue_length") + ")",
                        "{{queue_name}}",
                    )
                ],
                width=8,
            ),
            graph(
                "Oldest message age",
                "Age of the oldest waiting message of each queue; 0 when empty.",
                [
                    query(
                        s.agg("max", "queue_name")
                        + s.queue("celery_queue_oldest_message_age_seconds")
                        + ")",
                        "{{queue_name}}",
                    )
                ],
                unit="s",
                width=8,
            ),
            graph(
                "Unacknowledged messages",
                "Messages of each queue delivered to workers and not yet acknowledged "
                "(prefetched, running, waiting for their ETA). RabbitMQ's management API "
                "tells them; Redis (one unacked hash for every queue) and passive declares "
                "do not: no series there.",
                [
                    query(
                        s.agg("max", "queue_name") + s.queue("celery_queue_unacked_messages") + ")",
                        "{{queue_name}}",
                    )
                ],
                width=8,
            ),
            graph(
                "Consumers",
                "Consumers subscribed to each queue, as the broker counts them: 0 while "
                "messages wait means nobody takes from it. RabbitMQ only (management API "
                "or passive declares); Redis cannot tell.",
                [
                    query(
                        s.agg("max", "queue_name") + s.queue("celery_queue_consumers") + ")",
                        "{{queue_name}}",
                    )
                ],
                width=8,
            ),
            graph(
                "Queue-depth polling",
                "Failed polls per second, and seconds since the last "
                "successful poll, of each process that polls the broker.",
                [
                    query(
                        s.agg("sum", "job, instance")
                        + s.queue(
                            "celery_queue_length_poll_errors_total",
                            queues=False,
                            fn="rate",
                            window=RATE,
                        )
                        + ")",
                        "errors/s {{instance}}",
                    ),
                    query(
                        "time() - "
                        + s.agg("max", "job, instance")
                        + s.queue(
                            "celery_queue_length_last_success_timestamp_seconds", queues=False
                        )
                        + ")",
                        "since last success {{instance}}",
                    ),
                ],
                width=16,
            ),
        ],
    )


def _overview_workers(d: dash.Dashboard, b: Board) -> dash.Dashboard:
    """Row "Workers": saturation, pool, liveness, host names and kills of each worker."""
    s = b.s
    return row(
        d,
        "Workers",
        [
            graph(
                "Saturation by worker",
                "Executing tasks over pool processes, per worker.",
                [
                    query(
                        s.agg("sum", "instance")
                        + f"celery_worker_tasks_active{{{s.worker}}})\n/\n"
                        + s.agg("sum", "instance")
                        + f"celery_worker_pool_size{{{s.worker}}})",
                        "{{instance}}",
                    )
                ],
                unit="percentunit",
                maximum=1,
                width=8,
            ),
            graph(
                "Pool",
                "Pool processes: executing, reserved but not started (prefetched), "
                "and the pool size.",
                [
                    query(
                        s.agg("sum", tight=True) + f"celery_worker_tasks_active{{{s.worker}}})",
                        "active",
                    ),
                    query(
                        s.agg("sum", tight=True) + f"celery_worker_prefetched_tasks{{{s.worker}}})",
                        "prefetched",
                    ),
                    query(
                        s.agg("sum", tight=True) + f"celery_worker_pool_size{{{s.worker}}})",
                        "pool size",
                    ),
                ],
                width=8,
            ),
            graph(
                "Workers up and consuming",
                "`up` per scrape target, and whether each worker's "
                "consumer is connected to the broker.",
                [
                    query(f"up{{{s.worker}}}", "up {{instance}}"),
                    query(f"celery_worker_consumer_up{{{s.worker}}}", "consuming {{instance}}"),
                ],
                maximum=1,
                width=8,
            ),
            listing(
                "Workers",
                "Workers scraped right now, with their Celery host names.",
                [query(f"celery_worker_up{{{s.worker}}}", instant=True)],
                rename={"Value": "up", "hostname": "Celery host name"},
                sort_by="instance",
                width=8,
            ),
            per_minute(
                s,
                "Time-limit kills",
                "Executions that hit their soft or hard time limit, per minute.",
                "celery_task_time_limit_exceeded_total",
                "name, kind",
                "{{name}} {{kind}}",
            ),
            per_minute(
                s,
                "Lost pool children",
                "Executions whose pool process died under them, per minute.",
                "celery_task_worker_lost_total",
                "instance, name",
                "{{name}} on {{instance}}",
            ),
        ],
    )


def _overview_periodic(d: dash.Dashboard, b: Board) -> dash.Dashboard:
    """Row "Periodic tasks": beat's entries joined with their task's outcomes, and beat itself."""
    s = b.s
    entry = "job, entry, task"

    def beat(metric: str) -> str:
        return series(metric, s.beat)

    def task_age(gauge: str) -> str:
        """Seconds since the task of each entry last did ``gauge`` on any worker shown,
        in the time range (the max over it: a worker restarted since starts at 0)."""
        entries = (
            'label_join(\n    ' + s.agg("group", entry)
            + beat("celery_beat_entry_period_seconds") + '),\n    "name", "", "task"\n  )'
        )  # fmt: skip
        return (
            "time() - "
            + s.agg("max", entry)
            + "\n  "
            + s.agg("max", "name")
            + f"max_over_time({gauge}{{{s.worker}}}[{RANGE}]) > 0)\n  * {s.on('name')} "
            + "group_right ()\n  "
            + entries
            + "\n)"
        )

    def counted(metric: str) -> str:
        return s.agg("sum", entry) + f"increase({beat(metric)}[{RANGE}]))"

    table = listing(
        "Schedule entries",
        "One row per entry of beat's schedule: seconds since beat last sent it (empty "
        "while never sent) and until it is next due (negative while overdue), its period, "
        "sends and failed sends in the time range, and its task's seconds since the last "
        "success and the last failure on the workers in the time range (empty while none; "
        "a worker restarted since keeps them). State: overdue "
        f"once more than {b.overdue_grace:g} s past due, as CeleryBeatEntryOverdue reads it.",
        [
            query(
                "time() - "
                + s.agg("max", entry)
                + beat("celery_beat_entry_last_sent_timestamp_seconds")
                + " > 0)",
                instant=True,
            ),
            query(
                s.agg("max", entry)
                + beat("celery_beat_entry_next_due_timestamp_seconds")
                + ") - time()",
                instant=True,
            ),
            query(
                s.agg("max", entry) + beat("celery_beat_entry_period_seconds") + ")", instant=True
            ),
            query(counted("celery_beat_entry_sent_total"), instant=True),
            query(counted("celery_beat_entry_send_errors_total"), instant=True),
            query(task_age("celery_task_last_success_timestamp_seconds"), instant=True),
            query(task_age("celery_task_last_failure_timestamp_seconds"), instant=True),
            query(
                s.agg("max", entry)
                + "time() - "
                + beat("celery_beat_entry_next_due_timestamp_seconds")
                + f" > bool {b.overdue_grace:g})",
                instant=True,
            ),
        ],
        rename={
            "Value #A": "since last sent",
            "Value #B": "until next due",
            "Value #C": "period",
            "Value #D": "sends",
            "Value #E": "failed sends",
            "Value #F": "since task succeeded",
            "Value #G": "since task failed",
            "Value #H": "state",
        },
        sort_by="state",
        width=24,
    ).unit("s")
    for column in ("sends", "failed sends"):
        table = table.override_by_name(column, [dm.DynamicConfigValue(id_val="unit", value="none")])
    state: list[dict[str, Any]] = [
        {
            "type": "value",
            "options": {
                "0": {"text": "ok", "color": "green", "index": 0},
                "1": {"text": "overdue", "color": "red", "index": 1},
            },
        }
    ]
    table = table.override_by_name(
        "state",
        [
            dm.DynamicConfigValue(id_val="unit", value="none"),
            dm.DynamicConfigValue(id_val="mappings", value=state),
            dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-text"}),
        ],
    )  # fmt: skip
    return row(
        d,
        "Periodic tasks (celery beat)",
        [
            table,
            graph(
                "Beat up and entries",
                "1 while a celery beat process runs its scheduler (the series vanishes with "
                "the process), and the entries of its schedule.",
                [
                    query(beat("celery_beat_up"), "up {{instance}}"),
                    query(beat("celery_beat_entries"), "entries {{instance}}"),
                ],
            ),
            graph(
                "Since beat's last tick",
                "Seconds since each beat's last scheduler tick; beat ticks at least every "
                "beat_max_loop_interval (300 s by default), so more means it hangs.",
                [query("time() - " + beat("celery_beat_last_tick_timestamp_seconds"),
                       "{{instance}}")],
                unit="s",
            ),
        ],
    )  # fmt: skip


def _overview_instrumentation(d: dash.Dashboard, b: Board) -> dash.Dashboard:
    """Row "Instrumentation": csuite-async-obs's own errors and capped label values."""
    s = b.s
    return row(
        d,
        "Instrumentation",
        [
            graph(
                "Instrumentation errors",
                "Errors caught inside csuite-async-obs, by hook, per "
                "second (never raised into a task).",
                [
                    query(
                        s.rate("csuite_async_obs_instrumentation_errors_total", s.worker, "hook"),
                        "{{hook}}",
                    )
                ],
                unit="ops",
            ),
            graph(
                "Label values capped",
                "Label values replaced by 'other' because the cardinality cap was reached, "
                "per second.",
                [
                    query(
                        s.rate("csuite_async_obs_label_overflow_total", s.worker, "label"),
                        "{{label}}",
                    )
                ],
                unit="ops",
            ),
        ],
    )


# --------------------------------------------------------------------------- task


def task_dashboard(b: Board) -> dash.Dashboard:
    """One task (or a few) in depth."""
    d = header(
        b.s,
        b.title_prefix + TASK[1],
        b.task_uid,
        "Outcomes, exceptions, latency and kills of one Celery task.",
        task_multi=False,
        link_title="Overview",
        link_url=dashboard_url(b.overview_uid),
        tags=b.tags,
    )
    d = _task_in_range(d, b)
    d = _task_outcomes(d, b)
    d = _task_latency(d, b)
    return _task_kills_and_queue(d, b)


def _task_in_range(d: dash.Dashboard, b: Board) -> dash.Dashboard:
    """Row "$task in the time range": totals, failure ratio, p95s and kills over the range."""
    s = b.s
    return row(
        d,
        "$task in the time range",
        [
            single(
                "Executions",
                "Executions finished in the time range, every outcome.",
                [query(s.observations("increase", RUNTIME, s.task, window=RANGE))],
                width=4,
            ),
            single(
                "Failures",
                "Failed executions in the time range.",
                [query(s.observations("increase", RUNTIME, s.failed, window=RANGE))],
                width=4,
                red_above=1,
            ),
            single(
                "Failure ratio",
                "Failed over all executions in the time range.",
                [query(s.failure_ratio(s.task, window=RANGE))],
                unit="percentunit",
                width=4,
                red_above=0.1,
            ),
            single(
                "Runtime p95",
                "95th percentile of the runtime over the time range.",
                [query(s.quantile(0.95, "celery_task_runtime_seconds", s.task, window=RANGE))],
                unit="s",
                width=4,
            ),
            single(
                "Queue wait p95",
                "95th percentile of the queue wait over the time range.",
                [query(s.quantile(0.95, "celery_task_queue_wait_seconds", s.task, window=RANGE))],
                unit="s",
                width=4,
            ),
            single(
                "Kills",
                "Time-limit kills and lost pool processes in the time range.",
                [
                    query(
                        s.increase("celery_task_time_limit_exceeded_total", s.task)
                        + "\n+\n"
                        + s.increase("celery_task_worker_lost_total", s.task)
                    )
                ],
                width=4,
                red_above=1,
            ),
        ],
    )


def _task_outcomes(d: dash.Dashboard, b: Board) -> dash.Dashboard:
    """Row "Outcomes": executions by state, failure ratio, exceptions and the lifecycle."""
    s = b.s
    return row(
        d,
        "Outcomes",
        [
            graph(
                "Executions by outcome",
                "Executions finished per second, by final state.",
                [query(s.observations("rate", RUNTIME, s.task, "state"), "{{state}}")],
                unit="ops",
            ),
            graph(
                "Failure ratio",
                "Failed over all executions, per rate interval.",
                [query(s.failure_ratio(s.task), "failure ratio")],
                unit="percentunit",
                maximum=1,
            ),
            graph(
                "Failures by exception",
                "Failed executions per second, by exception class.",
                [query(s.rate("celery_task_failed_total", s.task, "exception"), "{{exception}}")],
                unit="ops",
            ),
            listing(
                "Exceptions in the time range",
                "Exception classes of the failures in the time range.",
                [query("sort_desc(" + s.failures_by_exception() + ")", instant=True)],
                rename={"Value": "failures"},
                sort_by="failures",
            ),
            lifecycle(
                s,
                "Lifecycle",
                "Messages per second: sent (by any publisher), received, redelivered "
                "(delivered again, not in received), started, succeeded, retried, revoked, "
                "rejected.",
                (
                    "received",
                    "redelivered",
                    "started",
                    "succeeded",
                    "retried",
                    "revoked",
                    "rejected",
                ),
                width=24,
            ),
        ],
    )


def _task_latency(d: dash.Dashboard, b: Board) -> dash.Dashboard:
    """Row "Latency": runtime percentiles (overall and by outcome), distribution, queue wait."""
    s = b.s
    return row(
        d,
        "Latency",
        [
            percentiles(
                s,
                "Runtime p50 / p95 / p99",
                "Time executions ran in the pool, every outcome.",
                "celery_task_runtime_seconds",
            ),
            graph(
                "Runtime p95 by outcome",
                "95th percentile of the runtime of each final state.",
                [
                    query(
                        s.quantile(0.95, "celery_task_runtime_seconds", s.task, "state, le"),
                        "{{state}}",
                    )
                ],
                unit="s",
            ),
            heatmap.Panel()
            .title("Runtime distribution")
            .description("Executions per runtime bucket and rate interval.")
            .datasource(DATASOURCE)
            .targets(
                numbered(
                    [
                        query(
                            s.distribution("celery_task_runtime_seconds", s.task),
                            "{{le}}",
                        ).format(PromQueryFormat.HEATMAP)
                    ]
                )
            )
            .calculate(False)
            .unit("s")
            .span(12)
            .height(8),
            percentiles(
                s,
                "Queue wait p50 / p95 / p99",
                "Time from publish (or ETA) until a pool process started the task.",
                "celery_task_queue_wait_seconds",
            ),
        ],
    )


def _task_kills_and_queue(d: dash.Dashboard, b: Board) -> dash.Dashboard:
    """Row "Kills and queue": time limits, lost pool processes and the task's queues."""
    s = b.s
    # Queue series carry no task label: keep the queues this task was received from.
    routed = (
        f"\nand {s.on('queue_name')}\n"
        + s.agg("group", "queue_name")
        + f"celery_task_received_total{{{s.task}}})"
    )
    return row(
        d,
        "Kills and queue",
        [
            per_minute(
                s,
                "Time limits",
                "Executions that hit their soft or hard time limit, per minute.",
                "celery_task_time_limit_exceeded_total",
                "kind",
                "{{kind}}",
            ),
            per_minute(
                s,
                "Lost pool children",
                "Executions whose pool process died under them, per minute, by worker.",
                "celery_task_worker_lost_total",
                "instance",
                "{{instance}}",
            ),
            graph(
                "Its queue",
                "Length and oldest message age of the queue(s) this task is routed to.",
                [
                    query(
                        s.agg("max", "queue_name")
                        + s.queue("celery_queue_length", queues=False)
                        + ")"
                        + routed,
                        "length {{queue_name}}",
                    ),
                    query(
                        s.agg("max", "queue_name")
                        + s.queue("celery_queue_oldest_message_age_seconds", queues=False)
                        + ")"
                        + routed,
                        "oldest age (s) {{queue_name}}",
                    ),
                ],
                width=8,
            ),
        ],
    )
