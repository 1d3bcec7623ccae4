"""Per-task SLOs: error-budget recording rules, multi-window burn-rate alerts, a dashboard.

Each :class:`~csuite_async_obs.monitoring.config.SLO` of the config gives one rule
group (``<group_prefix>.slo.<name>``, written to ``slo.rules.yml``) with, per
objective (``success`` and/or ``latency``):

* ``slo:celery_task_sli_errors:rate5m`` and ``slo:celery_task_sli_events:rate5m``:
  bad and counted executions per second over the shortest window;
* ``slo:celery_task_sli_error:ratio_rate<w>``: the error ratio over each burn-rate
  window ``<w>`` and over the whole SLO window;
* ``slo:celery_task_error_budget:remaining_ratio``: the share of the error budget
  left over the SLO window (1 untouched, 0 spent, below 0 overspent);
* ``CelerySLOFastBurn`` (``severity_page``) and ``CelerySLOSlowBurn``
  (``severity_ticket``): the Google SRE workbook's multi-window, multi-burn-rate
  alerts.

Every series carries ``slo`` (the objective's name) and ``objective``
(``success`` or ``latency``), and the config's ``cluster_label`` when set.

What counts:

* **success**: bad = ``state="failed"`` (exceptions, time limits, lost pool
  children); counted = ``succeeded`` and ``failed``.  ``retried`` is not final (the
  retry's own execution counts; one that runs out of retries ends ``failed``);
  ``revoked`` is a caller's or operator's decision, ``ignored`` and ``rejected``
  the task's own deliberate choice (``Ignore``, ``Reject``): none of them is a
  failure to do the work, so none is counted either way.  (Messages for an
  unregistered task are ``rejected`` too: that is a deployment error, which the
  generic alerts and the dashboards show.)
* **latency**: counted = ``succeeded``; good = those in the runtime histogram's
  bucket ``le=<threshold>``.  Failed runs belong to the success objective; a task
  that fails fast must not improve its latency.

Aggregation is **per objective**, summed over every task the glob matches and
over every queue and worker the selector picks: an objective is one promise (the
backups finish) with one budget and one page, whatever the number of tasks
behind it.  Per task, a glob over 50 tasks would be 50 budgets, most of them too
small in volume for a meaningful ratio.  The price: a busy task can hide a rare
one that always fails; give such a task an objective of its own (the generic
``CeleryRareTaskFailed`` also reports it).

The glob follows :func:`fnmatch.fnmatchcase` (``*``, ``?``, ``[seq]``, ``[!seq]``,
case-sensitive, ``*`` crosses dots) and becomes an RE2 regex on ``name`` with
every other character literal; a name without glob characters is an equality
matcher.

**Burn-rate windows.**  The workbook's four pairs (long & short window, burn-rate
factor): page 14.4x over 1h & 5m, page 6x over 6h & 30m, ticket 3x over 1d & 2h,
ticket 1x over 3d & 6h, taken as they are for a 28-day window and scaled in
proportion to any other window (a 7-day SLO pages on 14.4x over 15m & 75s).
The factors stay, so each alert still means "this share of the whole budget is
gone": 2.1%, 5.4%, 10.7% and 10.7% of it.  Scaled windows are rounded to the
second (to the minute from an hour up).  This proportionality is also what the
end-to-end test relies on: a window of ``28d / 60`` makes every burn-rate window
sixty times shorter.

How this differs from sloth and Pyrra, and why:

* Sloth keeps the windows fixed and derives the factors from budget shares
  (13.44x for 28 days); we keep the workbook's factors and scale the windows, as
  Pyrra does (Pyrra also scales from 28 days, but uses 14/7/2/1 and a 4d long
  window).  Scaled windows keep the alerts' meaning for any SLO window, and let a
  test shrink every duration by one factor.
* Pyrra writes one alert per window pair (two pages when both pairs fire); sloth,
  and we, join the pairs of a severity with ``or``: one page, one ticket.  Ours
  carries the long window's burn rate as its value (the error ratio divided by the
  budget, compared with the factor), so the alert says "burning 20x", not "0.2".
* No ``for``: the short window already makes the alert need a sustained burn and
  resolve soon after it stops, which is what the workbook's short window is for
  (Pyrra adds one; sloth does not).
* Whole-window error ratio: sloth averages the recorded 5-minute ratios
  (``sum_over_time(ratio_rate5m) / count_over_time``), which weighs a quiet night
  like a busy day; Pyrra runs ``increase()`` over 28 days of raw series, exact but
  expensive for a glob over many tasks, queues and workers.  We sum the recorded
  5-minute *rates* of bad and of counted executions over the window and divide:
  weighted by traffic like Pyrra (every execution counts the same), as cheap as
  sloth (one recorded series per objective).  It is approximate at the window's
  edges and across gaps in rule evaluation.
* The latency objective reads the bucket whose ``le`` is the threshold: it must be
  a boundary of the workers' ``runtime_buckets`` (checked; no interpolation, as in
  both).  ``le`` is matched as exposed: Python's ``repr`` of the float (``30.0``),
  which is also prometheus_client's and Prometheus 3's normalised form below 1e6;
  above, both forms are matched.  With native histograms (``histograms: native``)
  there is no such bucket: the share under the threshold is ``histogram_fraction``,
  which interpolates within the native bucket that holds the threshold (schema 3:
  a bucket is 9% wide, so at most the share of runs in that one bucket is misread),
  and the check that the threshold is a classic boundary does not apply.
* No metadata series (sloth's ``slo:objective:ratio`` and friends): objective and
  budget are constants in the generated expressions and dashboard, which read
  from the same config.

**Low traffic.**  Every ratio divides by ``(counted > 0)``: a window without a
counted execution has no sample rather than ``NaN``, so no alert fires and the
dashboard shows no data instead of a made-up 100%.  A handful of executions can
still make the short windows jumpy; a task that runs a few times a day is better
served by a longer SLO window or by ``CeleryRareTaskFailed``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from ..config.options import DEFAULT_RUNTIME_BUCKETS
from .config import SLO, MonitoringConfig, MonitoringConfigError

__all__ = [
    "BURN_WINDOWS",
    "BurnWindow",
    "glob_to_regex",
    "slo_dashboard",
    "slo_rule_groups",
    "slo_windows",
    "task_matcher",
]

RUNTIME = "celery_task_runtime_seconds"
ERRORS = "slo:celery_task_sli_errors"
EVENTS = "slo:celery_task_sli_events"
RATIO = "slo:celery_task_sli_error"
REMAINING = "slo:celery_task_error_budget:remaining_ratio"
FAST, SLOW = "CelerySLOFastBurn", "CelerySLOSlowBurn"

_REFERENCE = 28 * 86400  # the SLO window the workbook's windows are taken for
_UNITS = {"y": 365 * 86400.0, "w": 7 * 86400.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0,
          "ms": 0.001}  # fmt: skip


@dataclass(frozen=True)
class BurnWindow:
    """One window pair of the workbook, for a 28-day SLO window."""

    alert: str  # FAST (pages) or SLOW (tickets)
    factor: float
    long_seconds: float
    short_seconds: float


BURN_WINDOWS = (
    BurnWindow(FAST, 14.4, 3600, 300),
    BurnWindow(FAST, 6, 6 * 3600, 1800),
    BurnWindow(SLOW, 3, 86400, 2 * 3600),
    BurnWindow(SLOW, 1, 3 * 86400, 6 * 3600),
)


@dataclass(frozen=True)
class ScaledWindow:
    """A window pair scaled to an SLO window, as Prometheus durations."""

    alert: str
    factor: float
    long: str
    short: str


# --------------------------------------------------------------------------- durations


def _seconds(text: str) -> float:
    return sum(float(n) * _UNITS[u] for n, u in re.findall(r"([0-9]+)(ms|[ywdhms])", text))


def _duration(seconds: float) -> str:
    """Prometheus duration text (d, h, m, s, ms) for a number of seconds."""
    millis = round(seconds * 1000)
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, millis = divmod(millis, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def slo_windows(slo: SLO) -> tuple[ScaledWindow, ...]:
    """The workbook's window pairs scaled to ``slo.window`` (see the module docstring).

    Raises:
        MonitoringConfigError: the window is so short that a scaled window is under 1 s.
    """
    scale = _seconds(slo.window) / _REFERENCE
    out = []
    for window in BURN_WINDOWS:
        if window.short_seconds * scale < 1:
            raise MonitoringConfigError(
                f"slos.{slo.name}.window", slo.window, "a window of at least 2h14m24s"
            )
        long, short = (_rounded(s * scale) for s in (window.long_seconds, window.short_seconds))
        out.append(ScaledWindow(window.alert, window.factor, _duration(long), _duration(short)))
    return tuple(out)


def _rounded(seconds: float) -> float:
    return round(seconds / 60) * 60.0 if seconds >= 3600 else float(round(seconds))


# --------------------------------------------------------------------------- matchers


def _string(value: str) -> str:
    """A PromQL double-quoted string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_RE2_SPECIAL = set("\\.+*?()|[]{}^$")


def glob_to_regex(glob: str) -> str:
    """The RE2 regex (anchored by PromQL's ``=~``) matching what ``fnmatchcase(name, glob)`` does.

    ``*`` is ``.*`` (dots included), ``?`` is ``.``, ``[seq]`` and ``[!seq]`` are
    classes; an unclosed ``[`` is literal, as in :mod:`fnmatch`; every other
    character is literal.
    """
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        i += 1
        if c == "*":
            if not out or out[-1] != ".*":  # fnmatch collapses runs of *
                out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i
            if j < n and glob[j] == "!":
                j += 1
            if j < n and glob[j] == "]":
                j += 1
            while j < n and glob[j] != "]":
                j += 1
            if j >= n:
                out.append("\\[")
                continue
            body = glob[i:j]
            i = j + 1
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            # Inside the class only '-' keeps a meaning (ranges); RE2 takes any
            # escaped punctuation as itself.
            chars = "".join(
                ch if ch.isalnum() or ch == "-" or ord(ch) > 127 else "\\" + ch for ch in body
            )
            out.append(f"[{'^' if negate else ''}{chars}]")
        else:
            out.append("\\" + c if c in _RE2_SPECIAL else c)
    return "".join(out)


def task_matcher(task: str) -> str:
    """The PromQL matcher on ``name`` for a task name or shell glob."""
    if any(c in task for c in "*?["):
        return f"name=~{_string(glob_to_regex(task))}"
    return f"name={_string(task)}"


def _le_matcher(threshold: float) -> str:
    """The ``le`` matcher of a bucket boundary, as the workers expose it.

    This package's renderer writes ``repr(float(bound))`` (``30.0``);
    prometheus_client and Prometheus 3's normalisation write Go's form, which is
    the same below 1e6 and ``1e+06`` style from there.
    """
    from prometheus_client.utils import floatToGoString

    python, go = repr(float(threshold)), floatToGoString(threshold)
    if python == go:
        return f"le={_string(python)}"
    return f"le=~{_string(re.escape(python) + '|' + re.escape(go))}"


def validate_slos(config: MonitoringConfig) -> None:
    """Check what the generator needs beyond the config's own parsing.

    Raises:
        MonitoringConfigError: naming the objective: a latency threshold that is
        not a bucket boundary, a window too short to scale, two objectives of one
        name, or one with neither objective.
    """
    buckets = config.runtime_buckets or DEFAULT_RUNTIME_BUCKETS
    names: set[str] = set()
    for slo in config.slos:
        if slo.name in names:
            raise MonitoringConfigError(f"slos.{slo.name}", slo.name, "a name no other SLO has")
        names.add(slo.name)
        if slo.success_ratio is None and slo.latency is None:
            raise MonitoringConfigError(f"slos.{slo.name}", slo, "success_ratio and/or latency")
        if slo.latency is not None and not config.native:
            threshold = slo.latency.threshold_seconds
            if not any(float(b) == threshold for b in buckets) or math.isinf(threshold):
                raise MonitoringConfigError(
                    f"slos.{slo.name}.latency.threshold_seconds",
                    threshold,
                    "a bucket boundary of celery_task_runtime_seconds (runtime_buckets: "
                    + ", ".join(repr(float(b)) for b in buckets)
                    + ")",
                )
        slo_windows(slo)


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class _Objective:
    slo: SLO
    kind: str  # "success" or "latency"
    target: float  # the objective ratio
    errors: str  # PromQL of bad executions per second, with {window} to fill in
    events: str  # of counted executions per second

    @property
    def budget(self) -> str:
        return f"{1 - self.target:.10g}"

    @property
    def labels(self) -> dict[str, str]:
        return {"slo": self.slo.name, "objective": self.kind}

    @property
    def selector(self) -> str:
        return f'{{slo={_string(self.slo.name)}, objective="{self.kind}"}}'


def _objectives(config: MonitoringConfig, slo: SLO) -> list[_Objective]:
    by = f" by ({config.cluster_label})" if config.cluster_label else ""
    base = ", ".join(m for m in (config.selectors.worker, task_matcher(slo.task)) if m)

    def rate(metric: str, matchers: str) -> str:
        return f"sum{by} (rate({metric}{{{base}, {matchers}}}[{{window}}]))"

    def runs(matchers: str) -> str:
        """Executions per second: the runtime histogram's count, of either kind."""
        if config.native:
            return f"sum{by} (histogram_count(rate({RUNTIME}{{{base}, {matchers}}}[{{window}}])))"
        return rate(f"{RUNTIME}_count", matchers)

    def fast_runs(threshold: float) -> str:
        """Successful executions per second that took at most ``threshold``: the bucket of
        a classic histogram; a native one's share under it (interpolated within the
        native bucket that holds the threshold: see the module docstring)."""
        if config.native:
            series = f'rate({RUNTIME}{{{base}, state="succeeded"}}[{{window}}])'
            return (
                f"sum{by} (histogram_fraction(0, {threshold:g}, {series}) * "
                f"histogram_count({series}))"
            )
        return rate(f"{RUNTIME}_bucket", f'state="succeeded", {_le_matcher(threshold)}')

    out = []
    if slo.success_ratio is not None:
        out.append(_Objective(
            slo, "success", slo.success_ratio,
            errors=runs('state="failed"'),
            events=runs('state=~"succeeded|failed"'),
        ))  # fmt: skip
    if slo.latency is not None:
        succeeded = runs('state="succeeded"')
        fast = fast_runs(slo.latency.threshold_seconds)
        out.append(_Objective(
            slo, "latency", slo.latency.ratio, errors=f"{succeeded}\n-\n{fast}", events=succeeded
        ))  # fmt: skip
    return out


def _recording(objective: _Objective, windows: tuple[ScaledWindow, ...]) -> list[dict[str, Any]]:
    shortest = min((w.short for w in windows), key=_seconds)
    others = sorted({w.short for w in windows} | {w.long for w in windows}, key=_seconds)
    others.remove(shortest)
    whole = _duration(_seconds(objective.slo.window))
    sel = objective.selector

    def record(name: str, expr: str) -> dict[str, Any]:
        return {"record": name, "expr": expr, "labels": dict(objective.labels)}

    def fill(expr: str, window: str) -> str:
        return expr.replace("{window}", window)

    rules = [
        record(f"{ERRORS}:rate{shortest}", fill(objective.errors, shortest)),
        record(f"{EVENTS}:rate{shortest}", fill(objective.events, shortest)),
        record(
            f"{RATIO}:ratio_rate{shortest}",
            f"{ERRORS}:rate{shortest}{sel}\n/\n({EVENTS}:rate{shortest}{sel} > 0)",
        ),
    ]
    for window in others:
        errors, events = fill(objective.errors, window), fill(objective.events, window)
        rules.append(record(f"{RATIO}:ratio_rate{window}", f"({errors})\n/\n({events} > 0)"))
    rules.append(record(
        f"{RATIO}:ratio_rate{whole}",
        f"sum_over_time({ERRORS}:rate{shortest}{sel}[{whole}])\n/\n"
        f"(sum_over_time({EVENTS}:rate{shortest}{sel}[{whole}]) > 0)",
    ))  # fmt: skip
    rules.append(record(REMAINING, f"1 - {RATIO}:ratio_rate{whole}{sel} / {objective.budget}"))
    return rules


def _alerts(config: MonitoringConfig, objective: _Objective,
            windows: tuple[ScaledWindow, ...]) -> list[dict[str, Any]]:  # fmt: skip
    slo, sel, budget = objective.slo, objective.selector, objective.budget
    share = f"{objective.target * 100:.10g}%"
    if objective.kind == "success":
        what = f"{share} of executions succeed"
    else:
        threshold = slo.latency.threshold_seconds if slo.latency else 0.0
        what = f"{share} of successful runs take under {threshold:g} s"
    where = (
        f" in {config.cluster_label} {{{{ $labels.{config.cluster_label} }}}}"
        if config.cluster_label
        else ""
    )
    rules = []
    for alert, severity, speed in ((FAST, slo.severity_page, "fast"),
                                   (SLOW, slo.severity_ticket, "slowly")):  # fmt: skip
        pairs = [w for w in windows if w.alert == alert]
        expr = "\nor\n".join(
            f"(\n  {RATIO}:ratio_rate{w.long}{sel} / {budget} > {w.factor:g}\n"
            f"  and\n  {RATIO}:ratio_rate{w.short}{sel} / {budget} > {w.factor:g}\n)"
            for w in pairs
        )
        conditions = " or ".join(f"{w.factor:g}x over {w.long} and {w.short}" for w in pairs)
        rules.append({
            "alert": alert,
            "expr": expr,
            "labels": {"severity": severity, **objective.labels},
            "annotations": {
                "summary": (
                    f"SLO {slo.name} ({objective.kind}){where} burns its error budget "
                    f"{speed}: {{{{ $value | humanize }}}}x"
                ),
                "description": (
                    f"Tasks {slo.task} must meet: {what}, over {slo.window}. Their bad "
                    f"executions spend the error budget ({budget} of them) "
                    "{{ $value | humanize }} times as fast as the window allows "
                    f"(fires on {conditions}). At 1x the budget lasts exactly {slo.window}."
                ),
                "runbook": config.runbook(alert),
            },
        })  # fmt: skip
    return rules


def slo_rule_groups(config: MonitoringConfig) -> list[dict[str, Any]]:
    """The Prometheus rule groups of ``config.slos``: one per SLO, ``[]`` without SLOs.

    Each group holds the recording rules and then the two alerts of each of its
    objectives (the alerts read the ratios recorded in the same evaluation).

    Raises:
        MonitoringConfigError: see :func:`validate_slos`.
    """
    validate_slos(config)
    groups = []
    for slo in config.slos:
        windows = slo_windows(slo)
        rules: list[dict[str, Any]] = []
        objectives = _objectives(config, slo)
        for objective in objectives:
            rules += _recording(objective, windows)
        for objective in objectives:
            rules += _alerts(config, objective, windows)
        groups.append({"name": f"{config.group_prefix}.slo.{slo.name}", "rules": rules})
    return groups


# --------------------------------------------------------------------------- dashboard


def slo_dashboard(config: MonitoringConfig) -> dict[str, Any] | None:
    """The SLO dashboard of ``config.slos`` as Grafana JSON data; ``None`` without SLOs.

    One row per objective: the error budget left and the SLI over the SLO window
    (stat panels), the burn rate over every alert window with the alert factors as
    dashed thresholds, and the budget left over time.  Unlike the other dashboards
    it reads the recording rules of :func:`slo_rule_groups`, which hold the SLO
    arithmetic: load ``slo.rules.yml`` with it.

    Needs the Grafana Foundation SDK (``grafana-foundation-sdk``, Python 3.11+),
    imported here so that rules can be generated without it.

    Raises:
        MonitoringConfigError: see :func:`validate_slos`.
        ImportError: the SDK is not installed.
    """
    validate_slos(config)
    if not config.slos:
        return None
    from grafana_foundation_sdk.builders import common as common_builders
    from grafana_foundation_sdk.builders import dashboard as dash
    from grafana_foundation_sdk.builders import prometheus, stat, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import dashboard as dm
    from grafana_foundation_sdk.models.common import BigValueColorMode, GraphTresholdsStyleMode

    datasource = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
    cluster = config.cluster_label
    settings = config.dashboards

    def where(objective: _Objective) -> str:
        extra = f', {cluster}=~"${cluster}"' if cluster else ""
        return objective.selector[:-1] + extra + "}"

    # mypy checks the package for Python 3.10, where the SDK's StrEnum types (3.11)
    # are unknown: its enum arguments and some results are untyped there.
    def target(expr: str, ref: int, legend: str = "") -> Any:
        query = prometheus.Dataquery().expr(expr).ref_id(chr(ord("A") + ref)).range()
        return query.legend_format(legend) if legend else query

    def steps(*pairs: tuple[float | None, str]) -> Any:
        return (
            dash.ThresholdsConfig()
            .mode(dm.ThresholdsMode.ABSOLUTE)  # type: ignore[arg-type]
            .steps([dm.Threshold(value=v, color=c) for v, c in pairs])
        )

    def dashed() -> Any:
        style = common_builders.GraphThresholdsStyleConfig()
        return style.mode(GraphTresholdsStyleMode.DASHED)  # type: ignore[arg-type]

    def conditions(windows: tuple[ScaledWindow, ...], alert: str) -> str:
        pairs = [w for w in windows if w.alert == alert]
        return " or ".join(f"{w.factor:g}x over {w.long} and {w.short}" for w in pairs)

    by = f"{{{{{cluster}}}}} " if cluster else ""
    board = (
        dash.Dashboard(f"{settings.title_prefix}Celery task SLOs (csuite-async-obs)")
        .uid(f"{settings.uid_prefix}slo")
        .description(
            "Error budgets and burn rates of the task SLOs, from the recording rules "
            "of slo.rules.yml."
        )
        .tags(list(settings.tags))
        .refresh("1m")
        .time("now-7d", "now")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .with_variable(
            dash.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
    )
    if cluster:
        board = board.with_variable(
            dash.QueryVariable(cluster)
            .label(cluster)
            .datasource(datasource)
            .query(f"label_values({REMAINING}, {cluster})")
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(dm.VariableOption(selected=True, text="All", value="$__all"))
        )
    for slo in config.slos:
        windows = slo_windows(slo)
        whole = _duration(_seconds(slo.window))
        for objective in _objectives(config, slo):
            sel = where(objective)
            goal = f"{objective.target:.10g}"
            board = board.with_row(dash.Row(f"{slo.name}: {objective.kind} ({slo.task})"))
            board = board.with_panel(
                stat.Panel()
                .title("Error budget left")
                .description(
                    f"Share of the error budget ({objective.budget} of executions over "
                    f"{slo.window}) not yet spent; below 0 the objective ({goal}) is missed."
                )
                .datasource(datasource)
                .targets([target(f"{REMAINING}{sel}", 0, by)])
                .unit("percentunit")
                .decimals(1)
                .color_mode(BigValueColorMode.BACKGROUND)
                .thresholds(steps((None, "red"), (0, "orange"), (0.25, "green")))
                .no_value("no executions")
                .span(4)
                .height(6)
            )
            board = board.with_panel(
                stat.Panel()
                .title(f"SLI over {slo.window}")
                .description(
                    "Share of good executions over the SLO window"
                    + (
                        " (succeeded out of succeeded and failed)."
                        if objective.kind == "success"
                        else " (succeeded runs under the threshold out of succeeded runs)."
                    )
                    + f" Objective: {goal}."
                )
                .datasource(datasource)
                .targets([target(f"1 - {RATIO}:ratio_rate{whole}{sel}", 0, by)])
                .unit("percentunit")
                .decimals(3)
                .thresholds(steps((None, "red"), (objective.target, "green")))
                .no_value("no executions")
                .span(4)
                .height(6)
            )
            lines = sorted({w.long for w in windows} | {min((w.short for w in windows), key=_seconds)},
                           key=_seconds)  # fmt: skip
            factors = sorted({w.factor for w in windows})
            board = board.with_panel(
                timeseries.Panel()
                .title("Burn rate")
                .description(
                    "Error ratio divided by the error budget, per alert window: 1 spends the "
                    f"budget in exactly {slo.window}. Pages at {conditions(windows, FAST)}; "
                    f"tickets at {conditions(windows, SLOW)}."
                )
                .datasource(datasource)
                .targets(
                    [
                        target(f"{RATIO}:ratio_rate{w}{sel} / {objective.budget}", i, f"{by}{w}")
                        for i, w in enumerate(lines)
                    ]
                )
                .unit("x")
                .min(0)
                .thresholds(steps((None, "green"), *((f, "red") for f in factors)))
                .thresholds_style(dashed())
                .span(8)
                .height(6)
            )
            board = board.with_panel(
                timeseries.Panel()
                .title("Error budget left over time")
                .description(f"The budget left over the {slo.window} ending at each point.")
                .datasource(datasource)
                .targets([target(f"{REMAINING}{sel}", 0, by or "left")])
                .unit("percentunit")
                .thresholds(steps((None, "red"), (0, "green")))
                .thresholds_style(dashed())
                .span(12)
                .height(6)
            )
    data: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    for number, panel in enumerate(data["panels"], start=1):
        panel["id"] = number
    return data
