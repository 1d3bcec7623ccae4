"""Generate the Grafana dashboards of csuite-async-obs from code.

    python dashboards/generate.py           # (re)write dashboards/*.json
    python dashboards/generate.py --check   # exit 1 if the committed JSON differs

Two dashboards: **overview** (every task, queue and worker of the chosen jobs)
and **task** (one task in depth), linked both ways; the overview's tables of
failing tasks and exceptions open the task dashboard on the clicked row.

Why the Grafana Foundation SDK (``grafana-foundation-sdk`` on PyPI): it is
maintained by Grafana Labs and generated from Grafana's own panel and dashboard
schemas, so option names follow Grafana releases instead of trailing them; its
builders are fully typed (``py.typed``), which lets mypy catch a misspelt option
here; and it has no dependencies.  grafanalib has had no release since January
2024, and grafana-dashboard-builder describes dashboards in YAML, which would
put the PromQL back into untyped text with no place for the shared selectors
below.

Design of the queries:

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
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models.common import (
    BigValueGraphMode,
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    TooltipDisplayMode,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

HERE = Path(__file__).resolve().parent
OVERVIEW_UID = "csuite-async-obs-overview"
TASK_UID = "csuite-async-obs-task"
TAGS = ["celery", "csuite-async-obs"]

DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Label filters shared by the panels (see the module docstring).
WORKER = 'job=~"$job", instance=~"$instance"'
TASK = WORKER + ', queue_name=~"$queue_name", name=~"$task"'
FAILED = TASK + ', state="failed"'
# Publishers (a web app, beat) count celery_task_sent_total in jobs of their own.
SENT = 'queue_name=~"$queue_name", name=~"$task"'
QUEUE = 'queue_name=~"$queue_name"'

# Executions are counted by the runtime histogram: one observation each, labelled
# with its final ``state`` (so it also gives the failure ratios, see above).
EXECUTIONS = "celery_task_runtime_seconds_count"

RATE = "$__rate_interval"
RANGE = "$__range"


# --------------------------------------------------------------------------- PromQL helpers


def rate(metric: str, selector: str, by: str | None = None, window: str = RATE) -> str:
    """``sum [by (...)] (rate(metric{selector}[window]))``."""
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{{{selector}}}[{window}]))"


def increase(metric: str, selector: str, by: str | None = None, window: str = RANGE) -> str:
    """``sum [by (...)] (increase(metric{selector}[window]))``."""
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (increase({metric}{{{selector}}}[{window}]))"


def increase_since_created(metric: str, selector: str, by: str, window: str = RANGE) -> str:
    """Increase over ``window`` of a counter whose series appear at their first event.

    ``increase()`` needs two samples, so it misses the event that created a series
    (``celery_task_failed_total{exception}`` appears at 1).  A series that did not
    exist ``window`` ago counts with its whole value; the others with their increase
    (``or`` matches label sets without the metric name).
    """
    sel = f"{metric}{{{selector}}}"
    return (
        f"sum by ({by}) (\n  ({sel} unless {sel} offset {window})\n  or\n"
        f"  increase({sel}[{window}])\n)"
    )


def quantile(q: float, histogram: str, selector: str, by: str = "le", window: str = RATE) -> str:
    """The ``q`` quantile of ``histogram`` (without ``_bucket``) over ``window``."""
    return f"histogram_quantile({q}, {rate(histogram + '_bucket', selector, by, window)})"


def failure_ratio(selector: str, by: str | None = None, window: str = RATE) -> str:
    """Failed executions over all executions, from the runtime histogram's counts."""
    fn = "rate" if window == RATE else "increase"
    grouping = f" by ({by})" if by else ""
    failed = f'sum{grouping} ({fn}({EXECUTIONS}{{{selector}, state="failed"}}[{window}]))'
    total = f"sum{grouping} ({fn}({EXECUTIONS}{{{selector}}}[{window}]))"
    return f"{failed}\n/\n{total}"


def failures_by_exception() -> str:
    """Failures in the time range by exception class and task, first failures included."""
    return increase_since_created("celery_task_failed_total", TASK, "exception, queue_name, name")


# --------------------------------------------------------------------------- panel helpers


def query(expr: str, legend: str = "", *, instant: bool = False) -> prometheus.Dataquery:
    """One Prometheus target (the ref id is set by :func:`numbered`)."""
    target = prometheus.Dataquery().expr(expr)
    if legend:
        target = target.legend_format(legend)
    return target.instant().format(PromQueryFormat.TABLE) if instant else target.range()


def legend() -> common_builders.VizLegendOptions:
    return (
        common_builders.VizLegendOptions()
        .display_mode(LegendDisplayMode.LIST)
        .placement(LegendPlacement.BOTTOM)
        .show_legend(True)
    )


def tooltip() -> common_builders.VizTooltipOptions:
    return (
        common_builders.VizTooltipOptions()
        .mode(TooltipDisplayMode.MULTI)
        .sort(SortOrder.DESCENDING)
    )


def graph(
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    unit: str = "short",
    width: int = 12,
    height: int = 8,
    minimum: float | None = 0,
    maximum: float | None = None,
) -> timeseries.Panel:
    """A time series panel."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(numbered(targets))
        .unit(unit)
        .span(width)
        .height(height)
        .fill_opacity(10)
        .line_width(1)
        .legend(legend())
        .tooltip(tooltip())
    )
    if minimum is not None:
        panel = panel.min(minimum)
    if maximum is not None:
        panel = panel.max(maximum)
    return panel


def single(
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    unit: str = "short",
    width: int = 4,
    height: int = 4,
    red_above: float | None = None,
) -> stat.Panel:
    """A stat panel showing the last value; red from ``red_above`` when given."""
    steps = [dm.Threshold(value=None, color="green")]
    if red_above is not None:
        steps.append(dm.Threshold(value=red_above, color="red"))
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(numbered(targets))
        .unit(unit)
        .span(width)
        .height(height)
        .graph_mode(BigValueGraphMode.AREA)
        .thresholds(dash.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(steps))
    )


def task_link(title: str) -> dict[str, Any]:
    """A data link from a table row (columns ``name``, ``queue_name``) to the task dashboard."""
    return {
        "title": title,
        "url": (
            f"/d/{TASK_UID}/csuite-async-obs-task?${{__url_time_range}}"
            "&${datasource:queryparam}&${job:queryparam}&${instance:queryparam}"
            "&var-queue_name=${__data.fields.queue_name}&var-task=${__data.fields.name}"
        ),
    }


def listing(
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    rename: dict[str, str],
    sort_by: str,
    link: str | None = None,
    width: int = 12,
    height: int = 8,
) -> table.Panel:
    """A table of instant queries merged on their labels; names can link to the task dashboard."""
    organize = {
        "excludeByName": {"Time": True, "__name__": True},
        "renameByName": rename,
        "indexByName": {},
    }
    panel = (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(numbered(targets))
        .span(width)
        .height(height)
        .show_header(True)
        .with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(dm.DataTransformerConfig(id_val="organize", options=organize))
        .sort_by([common_builders.TableSortByFieldState().display_name(sort_by).desc(True)])
    )
    if link is not None:
        panel = panel.override_by_name(
            "name", [dm.DynamicConfigValue(id_val="links", value=[task_link(link)])]
        )
    return panel


def percentiles(title: str, description: str, histogram: str) -> timeseries.Panel:
    """A time series panel of the p50, p95 and p99 of ``histogram`` (without ``_bucket``)."""
    return graph(
        title,
        description,
        [query(quantile(q, histogram, TASK), f"p{round(q * 100)}") for q in (0.5, 0.95, 0.99)],
        unit="s",
    )


def lifecycle(
    title: str, description: str, events: Sequence[str], *, width: int = 12
) -> timeseries.Panel:
    """Messages per second: sent, then each worker-side ``celery_task_<event>_total``."""
    return graph(
        title,
        description,
        [query(rate("celery_task_sent_total", SENT), "sent")]
        + [query(rate(f"celery_task_{event}_total", TASK), event) for event in events],
        unit="ops",
        width=width,
    )


def per_minute(
    title: str, description: str, metric: str, by: str, legend_format: str
) -> timeseries.Panel:
    """A third-width time series panel of rare events (kills), per minute by ``by``."""
    return graph(
        title,
        description,
        [query("60 * " + rate(metric, TASK, by), legend_format)],
        unit="opm",
        width=8,
    )


def numbered(
    targets: Iterable[prometheus.Dataquery],
) -> list[cogbuilder.Builder[cogvariants.Dataquery]]:
    """Give targets the ref ids A, B, C ... in order."""
    return [t.ref_id(chr(ord("A") + i)) for i, t in enumerate(targets)]


# --------------------------------------------------------------------------- variables


def variables(task_multi: bool) -> list[cogbuilder.Builder[dm.VariableModel]]:
    """datasource, job, instance, queue_name, task."""

    def labels(name: str, label: str, source: str, *, multi: bool = True) -> dash.QueryVariable:
        variable = (
            dash.QueryVariable(name)
            .label(label)
            .datasource(DATASOURCE)
            .query(f"label_values({source}, {name if name != 'task' else 'name'})")
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC)
            .multi(multi)
        )
        if multi:
            variable = (
                variable.include_all(True)
                .all_value(".*")
                .current(dm.VariableOption(selected=True, text="All", value="$__all"))
            )
        return variable

    return [
        dash.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        labels("job", "Job", "celery_worker_up"),
        labels("instance", "Worker", 'celery_worker_up{job=~"$job"}'),
        labels("queue_name", "Queue", 'celery_task_received_total{job=~"$job"}'),
        labels(
            "task",
            "Task",
            'celery_task_received_total{job=~"$job", queue_name=~"$queue_name"}',
            multi=task_multi,
        ),
    ]


# --------------------------------------------------------------------------- shared layout


def header(
    title: str,
    uid: str,
    description: str,
    *,
    task_multi: bool,
    link_title: str,
    link_url: str,
) -> dash.Dashboard:
    """A dashboard header: the settings both dashboards share and a link to the other one."""
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .variables(variables(task_multi=task_multi))
        .link(
            dash.DashboardLink(link_title)
            .type(dm.DashboardLinkType.LINK)
            .url(link_url)
            .include_vars(True)
            .keep_time(True)
            .icon("dashboard")
        )
    )


def row(
    d: dash.Dashboard, title: str, panels: Iterable[cogbuilder.Builder[dm.Panel]]
) -> dash.Dashboard:
    """Add a row titled ``title`` and then its panels, which the SDK lays out in order."""
    d = d.with_row(dash.Row(title))
    for panel in panels:
        d = d.with_panel(panel)
    return d


# --------------------------------------------------------------------------- overview


def overview() -> dash.Dashboard:
    """Every task, queue and worker of the selected jobs."""
    d = header(
        "Celery tasks: overview (csuite-async-obs)",
        OVERVIEW_UID,
        "Throughput, failures, latency, queues and workers of Celery apps "
        "instrumented with csuite-async-obs.",
        task_multi=True,
        link_title="Task detail",
        link_url=f"/d/{TASK_UID}/csuite-async-obs-task",
    )
    d = _overview_now(d)
    d = _overview_throughput(d)
    d = _overview_latency(d)
    d = _overview_queues(d)
    d = _overview_workers(d)
    return _overview_instrumentation(d)


def _overview_now(d: dash.Dashboard) -> dash.Dashboard:
    """Row "Now": the current value of the headline numbers, red past their thresholds."""
    return row(
        d,
        "Now",
        [
            single(
                "Workers up",
                "Scrape targets of the selected jobs that answer (Prometheus's `up`); "
                "a killed worker's own series vanish, so only `up` shows it.",
                [query(f"sum(up{{{WORKER}}})", "up")],
                width=3,
            ),
            single(
                "Saturation",
                "Pool processes executing a task, over all pool processes.",
                [
                    query(
                        f"sum(celery_worker_tasks_active{{{WORKER}}})"
                        f" / sum(celery_worker_pool_size{{{WORKER}}})"
                    )
                ],
                unit="percentunit",
                width=3,
                red_above=0.9,
            ),
            single(
                "Throughput",
                "Executions finished per second, every outcome.",
                [query(rate(EXECUTIONS, TASK))],
                unit="ops",
                width=3,
            ),
            single(
                "Failure ratio",
                "Failed executions over all executions, over the rate interval.",
                [query(failure_ratio(TASK))],
                unit="percentunit",
                width=3,
                red_above=0.1,
            ),
            single(
                "Backlog",
                "Messages waiting in the selected queues (max over the processes that poll them).",
                [query(f"sum(max by (queue_name) (celery_queue_length{{{QUEUE}}}))")],
                width=3,
            ),
            single(
                "Oldest message",
                "Age of the oldest waiting message over the selected queues.",
                [query(f"max(celery_queue_oldest_message_age_seconds{{{QUEUE}}})")],
                unit="s",
                width=3,
                red_above=300,
            ),
            single(
                "Time-limit kills in range",
                "Executions that hit a soft or hard time limit in the time range.",
                [query(increase("celery_task_time_limit_exceeded_total", TASK))],
                width=3,
                red_above=1,
            ),
            single(
                "Lost children in range",
                "Executions whose pool process died under them (SIGKILL, OOM) in the time range.",
                [query(increase("celery_task_worker_lost_total", TASK))],
                width=3,
                red_above=1,
            ),
        ],
    )


def _overview_throughput(d: dash.Dashboard) -> dash.Dashboard:
    """Row "Throughput and failures": executions by outcome, retries, top failing tasks."""
    # The ratio column keeps only the rows of the failures column (`and on`), so
    # both columns describe the same ten tasks.
    top_failed = "topk(10, " + increase(EXECUTIONS, FAILED, "queue_name, name") + ") > 0"
    return row(
        d,
        "Throughput and failures",
        [
            graph(
                "Throughput by outcome",
                "Executions finished per second, by final state of the "
                "execution (a retried execution is one that raised Retry).",
                [query(rate(EXECUTIONS, TASK, "state"), "{{state}}")],
                unit="ops",
            ),
            graph(
                "Failure ratio by task",
                "Failed executions over all executions of each task.",
                [query(failure_ratio(TASK, "queue_name, name"), "{{name}} ({{queue_name}})")],
                unit="percentunit",
            ),
            lifecycle(
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
                        rate("celery_task_retried_total", TASK, "queue_name, name"),
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
                        f"(\n{failure_ratio(TASK, 'queue_name, name', RANGE)}\n)\n"
                        "and on (queue_name, name)\n" + top_failed,
                        instant=True,
                    ),
                ],
                rename={"Value #A": "failures", "Value #B": "failure ratio"},
                sort_by="failures",
                link="Open task ${__data.fields.name}",
            ),
            listing(
                "Top exceptions",
                "Exception classes of the failures in the time range, by task "
                "(time limits show as TimeLimitExceeded, lost pool processes as "
                "WorkerLostError). Click a name for the task dashboard.",
                [
                    query(
                        "sort_desc(topk(10, " + failures_by_exception() + ") > 0)",
                        instant=True,
                    ),
                ],
                rename={"Value": "failures"},
                sort_by="failures",
                link="Open task ${__data.fields.name}",
            ),
        ],
    )


def _overview_latency(d: dash.Dashboard) -> dash.Dashboard:
    """Row "Latency": runtime and queue-wait percentiles and means, unmeasured waits."""
    return row(
        d,
        "Latency",
        [
            percentiles(
                "Runtime p50 / p95 / p99",
                "Time executions ran in the pool, every outcome.",
                "celery_task_runtime_seconds",
            ),
            percentiles(
                "Queue wait p50 / p95 / p99",
                "Time from publish (or ETA) until a pool process started the task.",
                "celery_task_queue_wait_seconds",
            ),
            graph(
                "Mean runtime and queue wait",
                "Sum of observed seconds over the number of observations, per rate interval.",
                [
                    query(
                        rate("celery_task_runtime_seconds_sum", TASK)
                        + "\n/\n"
                        + rate("celery_task_runtime_seconds_count", TASK),
                        "runtime",
                    ),
                    query(
                        rate("celery_task_queue_wait_seconds_sum", TASK)
                        + "\n/\n"
                        + rate("celery_task_queue_wait_seconds_count", TASK),
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
                        rate("celery_task_queue_wait_unmeasured_total", TASK, "queue_name, name"),
                        "{{name}} ({{queue_name}})",
                    ),
                    query(
                        rate("celery_task_queue_wait_clamped_total", TASK, "queue_name, name"),
                        "{{name}} ({{queue_name}}) clamped at 0: clock skew",
                    ),
                ],
                unit="ops",
            ),
        ],
    )


def _overview_queues(d: dash.Dashboard) -> dash.Dashboard:
    """Row "Queues": broker-wide length, oldest age, unacked messages and consumers per queue,
    and polling health."""
    return row(
        d,
        "Queues (broker-wide: filtered by queue only)",
        [
            graph(
                "Queue length",
                "Messages waiting in each queue, all priority sub-queues included.",
                [
                    query(
                        f"max by (queue_name) (celery_queue_length{{{QUEUE}}})",
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
                        f"max by (queue_name) (celery_queue_oldest_message_age_seconds{{{QUEUE}}})",
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
                        f"max by (queue_name) (celery_queue_unacked_messages{{{QUEUE}}})",
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
                        f"max by (queue_name) (celery_queue_consumers{{{QUEUE}}})",
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
                        "sum by (job, instance) "
                        "(rate(celery_queue_length_poll_errors_total[$__rate_interval]))",
                        "errors/s {{instance}}",
                    ),
                    query(
                        "time() - max by (job, instance) "
                        "(celery_queue_length_last_success_timestamp_seconds)",
                        "since last success {{instance}}",
                    ),
                ],
                width=16,
            ),
        ],
    )


def _overview_workers(d: dash.Dashboard) -> dash.Dashboard:
    """Row "Workers": saturation, pool, liveness, host names and kills of each worker."""
    return row(
        d,
        "Workers",
        [
            graph(
                "Saturation by worker",
                "Executing tasks over pool processes, per worker.",
                [
                    query(
                        f"sum by (instance) (celery_worker_tasks_active{{{WORKER}}})\n/\n"
                        f"sum by (instance) (celery_worker_pool_size{{{WORKER}}})",
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
                    query(f"sum(celery_worker_tasks_active{{{WORKER}}})", "active"),
                    query(f"sum(celery_worker_prefetched_tasks{{{WORKER}}})", "prefetched"),
                    query(f"sum(celery_worker_pool_size{{{WORKER}}})", "pool size"),
                ],
                width=8,
            ),
            graph(
                "Workers up and consuming",
                "`up` per scrape target, and whether each worker's "
                "consumer is connected to the broker.",
                [
                    query(f"up{{{WORKER}}}", "up {{instance}}"),
                    query(f"celery_worker_consumer_up{{{WORKER}}}", "consuming {{instance}}"),
                ],
                maximum=1,
                width=8,
            ),
            listing(
                "Workers",
                "Workers scraped right now, with their Celery host names.",
                [query(f"celery_worker_up{{{WORKER}}}", instant=True)],
                rename={"Value": "up", "hostname": "Celery host name"},
                sort_by="instance",
                width=8,
            ),
            per_minute(
                "Time-limit kills",
                "Executions that hit their soft or hard time limit, per minute.",
                "celery_task_time_limit_exceeded_total",
                "name, kind",
                "{{name}} {{kind}}",
            ),
            per_minute(
                "Lost pool children",
                "Executions whose pool process died under them, per minute.",
                "celery_task_worker_lost_total",
                "instance, name",
                "{{name}} on {{instance}}",
            ),
        ],
    )


def _overview_instrumentation(d: dash.Dashboard) -> dash.Dashboard:
    """Row "Instrumentation": csuite-async-obs's own errors and capped label values."""
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
                        rate("csuite_async_obs_instrumentation_errors_total", WORKER, "hook"),
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
                        rate("csuite_async_obs_label_overflow_total", WORKER, "label"),
                        "{{label}}",
                    )
                ],
                unit="ops",
            ),
        ],
    )


# --------------------------------------------------------------------------- task


def task_dashboard() -> dash.Dashboard:
    """One task (or a few) in depth."""
    d = header(
        "Celery tasks: task detail (csuite-async-obs)",
        TASK_UID,
        "Outcomes, exceptions, latency and kills of one Celery task.",
        task_multi=False,
        link_title="Overview",
        link_url=f"/d/{OVERVIEW_UID}/csuite-async-obs-overview",
    )
    d = _task_in_range(d)
    d = _task_outcomes(d)
    d = _task_latency(d)
    return _task_kills_and_queue(d)


def _task_in_range(d: dash.Dashboard) -> dash.Dashboard:
    """Row "$task in the time range": totals, failure ratio, p95s and kills over the range."""
    return row(
        d,
        "$task in the time range",
        [
            single(
                "Executions",
                "Executions finished in the time range, every outcome.",
                [query(increase(EXECUTIONS, TASK))],
                width=4,
            ),
            single(
                "Failures",
                "Failed executions in the time range.",
                [query(increase(EXECUTIONS, FAILED))],
                width=4,
                red_above=1,
            ),
            single(
                "Failure ratio",
                "Failed over all executions in the time range.",
                [query(failure_ratio(TASK, window=RANGE))],
                unit="percentunit",
                width=4,
                red_above=0.1,
            ),
            single(
                "Runtime p95",
                "95th percentile of the runtime over the time range.",
                [query(quantile(0.95, "celery_task_runtime_seconds", TASK, window=RANGE))],
                unit="s",
                width=4,
            ),
            single(
                "Queue wait p95",
                "95th percentile of the queue wait over the time range.",
                [query(quantile(0.95, "celery_task_queue_wait_seconds", TASK, window=RANGE))],
                unit="s",
                width=4,
            ),
            single(
                "Kills",
                "Time-limit kills and lost pool processes in the time range.",
                [
                    query(
                        increase("celery_task_time_limit_exceeded_total", TASK)
                        + "\n+\n"
                        + increase("celery_task_worker_lost_total", TASK)
                    )
                ],
                width=4,
                red_above=1,
            ),
        ],
    )


def _task_outcomes(d: dash.Dashboard) -> dash.Dashboard:
    """Row "Outcomes": executions by state, failure ratio, exceptions and the lifecycle."""
    return row(
        d,
        "Outcomes",
        [
            graph(
                "Executions by outcome",
                "Executions finished per second, by final state.",
                [query(rate(EXECUTIONS, TASK, "state"), "{{state}}")],
                unit="ops",
            ),
            graph(
                "Failure ratio",
                "Failed over all executions, per rate interval.",
                [query(failure_ratio(TASK), "failure ratio")],
                unit="percentunit",
                maximum=1,
            ),
            graph(
                "Failures by exception",
                "Failed executions per second, by exception class.",
                [query(rate("celery_task_failed_total", TASK, "exception"), "{{exception}}")],
                unit="ops",
            ),
            listing(
                "Exceptions in the time range",
                "Exception classes of the failures in the time range.",
                [query("sort_desc(" + failures_by_exception() + ")", instant=True)],
                rename={"Value": "failures"},
                sort_by="failures",
            ),
            lifecycle(
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


def _task_latency(d: dash.Dashboard) -> dash.Dashboard:
    """Row "Latency": runtime percentiles (overall and by outcome), distribution, queue wait."""
    return row(
        d,
        "Latency",
        [
            percentiles(
                "Runtime p50 / p95 / p99",
                "Time executions ran in the pool, every outcome.",
                "celery_task_runtime_seconds",
            ),
            graph(
                "Runtime p95 by outcome",
                "95th percentile of the runtime of each final state.",
                [
                    query(
                        quantile(0.95, "celery_task_runtime_seconds", TASK, "state, le"),
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
                            increase("celery_task_runtime_seconds_bucket", TASK, "le", RATE),
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
                "Queue wait p50 / p95 / p99",
                "Time from publish (or ETA) until a pool process started the task.",
                "celery_task_queue_wait_seconds",
            ),
        ],
    )


def _task_kills_and_queue(d: dash.Dashboard) -> dash.Dashboard:
    """Row "Kills and queue": time limits, lost pool processes and the task's queues."""
    # Queue series carry no task label: keep the queues this task was received from.
    routed = f"\nand on (queue_name)\ngroup by (queue_name) (celery_task_received_total{{{TASK}}})"
    return row(
        d,
        "Kills and queue",
        [
            per_minute(
                "Time limits",
                "Executions that hit their soft or hard time limit, per minute.",
                "celery_task_time_limit_exceeded_total",
                "kind",
                "{{kind}}",
            ),
            per_minute(
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
                        "max by (queue_name) (celery_queue_length)" + routed,
                        "length {{queue_name}}",
                    ),
                    query(
                        "max by (queue_name) (celery_queue_oldest_message_age_seconds)" + routed,
                        "oldest age (s) {{queue_name}}",
                    ),
                ],
                width=8,
            ),
        ],
    )


# --------------------------------------------------------------------------- output


def finish(board: dash.Dashboard) -> dict[str, Any]:
    """Build, number the panels in order and return plain JSON data."""
    data: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    for number, panel in enumerate(data["panels"], start=1):
        panel["id"] = number
    return data


DASHBOARDS = {
    "overview.json": overview,
    "task.json": task_dashboard,
}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard, exactly as committed."""
    return {
        name: json.dumps(finish(build()), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        for name, build in DASHBOARDS.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if a committed file differs from the generated one",
    )
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = HERE / name
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(
            f"out of date: {', '.join(stale)}; run python dashboards/generate.py", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
