"""Grafana panel builders of the dashboards (the Grafana Foundation SDK's builders).

This module imports the SDK at its top: only :func:`.dashboards.render` imports
it, lazily, so that the package works without the optional SDK.  Why the Grafana
Foundation SDK (``grafana-foundation-sdk`` on PyPI): it is maintained by Grafana
Labs and generated from Grafana's own panel and dashboard schemas, so option
names follow Grafana releases instead of trailing them; its builders are fully
typed (``py.typed``), which lets mypy catch a misspelt option here; and it has no
dependencies.  grafanalib has had no release since January 2024, and
grafana-dashboard-builder describes dashboards in YAML, which would put the PromQL
back into untyped text with no place for the shared selectors.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
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

from .queries import Scope

DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")

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


def dashboard_url(uid: str) -> str:
    """The path of a dashboard (its uid stands for the slug, which Grafana does not check)."""
    return f"/d/{uid}/{uid}"


def task_link(title: str, task_uid: str, s: Scope) -> dict[str, Any]:
    """A data link from a table row (columns ``name``, ``queue_name``) to the task dashboard."""
    cluster = "&${cluster:queryparam}" if s.cluster_label else ""
    return {
        "title": title,
        "url": (
            f"{dashboard_url(task_uid)}?${{__url_time_range}}"
            f"&${{datasource:queryparam}}{cluster}&${{job:queryparam}}&${{instance:queryparam}}"
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
    link: tuple[str, str, Scope] | None = None,
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
            "name", [dm.DynamicConfigValue(id_val="links", value=[task_link(*link)])]
        )
    return panel


def percentiles(s: Scope, title: str, description: str, histogram: str) -> timeseries.Panel:
    """A time series panel of the p50, p95 and p99 of ``histogram`` (without ``_bucket``)."""
    return graph(
        title,
        description,
        [query(s.quantile(q, histogram, s.task), f"p{round(q * 100)}") for q in (0.5, 0.95, 0.99)],
        unit="s",
    )


def lifecycle(
    s: Scope, title: str, description: str, events: Sequence[str], *, width: int = 12
) -> timeseries.Panel:
    """Messages per second: sent, then each worker-side ``celery_task_<event>_total``."""
    return graph(
        title,
        description,
        [query(s.rate("celery_task_sent_total", s.sent), "sent")]
        + [query(s.rate(f"celery_task_{event}_total", s.task), event) for event in events],
        unit="ops",
        width=width,
    )


def per_minute(
    s: Scope, title: str, description: str, metric: str, by: str, legend_format: str
) -> timeseries.Panel:
    """A third-width time series panel of rare events (kills), per minute by ``by``."""
    return graph(
        title,
        description,
        [query("60 * " + s.rate(metric, s.task, by), legend_format)],
        unit="opm",
        width=8,
    )


def numbered(
    targets: Iterable[prometheus.Dataquery],
) -> list[cogbuilder.Builder[cogvariants.Dataquery]]:
    """Give targets the ref ids A, B, C ... in order."""
    return [t.ref_id(chr(ord("A") + i)) for i, t in enumerate(targets)]


# --------------------------------------------------------------------------- variables


def variables(s: Scope, task_multi: bool) -> list[cogbuilder.Builder[dm.VariableModel]]:
    """datasource, cluster (with a cluster label), job, instance, queue_name, task.

    Each reads the worker targets (the worker selector) of the variables before it.
    The cluster variable takes one value: a dashboard shows one cluster at a time.
    """

    def labels(
        name: str, title: str, source: str, *, label: str = "", multi: bool = True
    ) -> dash.QueryVariable:
        variable = (
            dash.QueryVariable(name)
            .label(title)
            .datasource(DATASOURCE)
            .query(f"label_values({source}, {label or name})")
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

    found: list[cogbuilder.Builder[dm.VariableModel]] = [
        dash.DatasourceVariable("datasource").label("Data source").type("prometheus")
    ]
    if s.cluster_label:
        found.append(
            labels(
                "cluster",
                "Cluster",
                s.variable_source("celery_worker_up"),
                label=s.cluster_label,
                multi=False,
            )
        )
    job = 'job=~"$job"'
    queue = 'queue_name=~"$queue_name"'
    return [
        *found,
        labels("job", "Job", s.variable_source("celery_worker_up", s.cluster)),
        labels("instance", "Worker", s.variable_source("celery_worker_up", s.cluster, job)),
        labels(
            "queue_name",
            "Queue",
            s.variable_source("celery_task_received_total", s.cluster, job),
        ),
        labels(
            "task",
            "Task",
            s.variable_source("celery_task_received_total", s.cluster, job, queue),
            label="name",
            multi=task_multi,
        ),
    ]


# --------------------------------------------------------------------------- shared layout


def header(
    s: Scope,
    title: str,
    uid: str,
    description: str,
    *,
    tags: Sequence[str],
    task_multi: bool,
    link_title: str,
    link_url: str,
) -> dash.Dashboard:
    """A dashboard header: the settings both dashboards share and a link to the other one."""
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(list(tags))
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .variables(variables(s, task_multi=task_multi))
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


# --------------------------------------------------------------------------- output


def finish(board: dash.Dashboard) -> dict[str, Any]:
    """Build, number the panels in order and return plain JSON data."""
    data: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    for number, panel in enumerate(data["panels"], start=1):
        panel["id"] = number
    return data
