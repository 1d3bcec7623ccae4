"""The monitoring config: what the rules and dashboards are generated from.

One typed object (:class:`MonitoringConfig`), with a file form in YAML (or TOML on
Python 3.11+) of the same shape.  Its defaults give the committed ``alerts/`` and
``dashboards/``; a deployment changes only what differs::

    selectors:
      worker: 'job="celery-workers"'      # label matchers of the worker targets
      exporter: 'job="celery-exporter"'   # of standalone queue-depth exporters
      beat: 'job="celery-beat"'           # of celery beat (periodic-task alerts)
    cluster_label: cluster                # aggregations keep it; dashboards get a variable
    runbook_url: https://wiki.example.com/celery-runbooks#
    alerts:
      CeleryQueueBacklogGrowing: {threshold: 500, for: 30m}
      CeleryWorkerSaturated: {enabled: false}
    dashboards: {title_prefix: "Prod ", tags: [celery, prod], uid_prefix: prod-}
    long_window_interval: 1m              # the 1h failure rules' own evaluation interval
    slos:
      - name: backup
        task: csuite.backup_*
        success_ratio: 0.995
        window: 28d
      - name: reports-latency
        task: csuite.generate_report
        latency: {threshold_seconds: 30, ratio: 0.99}

An unknown key or a value of the wrong kind fails with :class:`MonitoringConfigError`
naming the key and the value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

__all__ = [
    "SEVERITIES",
    "SLO",
    "AlertTuning",
    "DashboardSettings",
    "LatencyObjective",
    "MonitoringConfig",
    "MonitoringConfigError",
    "Selectors",
    "load_config",
]

SEVERITIES = ("critical", "warning", "info")
_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_MATCHERS = re.compile(
    r'^\s*([a-zA-Z_][a-zA-Z0-9_]*\s*(=|!=|=~|!~)\s*"(?:[^"\\]|\\.)*"\s*'
    r'(,\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(=|!=|=~|!~)\s*"(?:[^"\\]|\\.)*"\s*)*)?,?\s*$'
)


class MonitoringConfigError(ValueError):
    """A monitoring config value that cannot be used; the message names key and value."""

    def __init__(self, key: str, value: Any, expected: str) -> None:
        super().__init__(f"monitoring config: {key} = {value!r}: expected {expected}")
        self.key = key
        self.value = value


def _duration(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _DURATION.match(value):
        raise MonitoringConfigError(key, value, "a Prometheus duration such as 30s, 5m, 1h, 28d")
    return value


def _matchers(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _MATCHERS.match(value):
        raise MonitoringConfigError(
            key, value, 'PromQL label matchers such as job="celery" or job=~"celery-.*"'
        )
    return value.strip().rstrip(",").strip()


def _ratio(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise MonitoringConfigError(key, value, "a ratio strictly between 0 and 1, e.g. 0.995")
    return float(value)


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise MonitoringConfigError(key, value, "a number >= 0")
    return float(value)


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise MonitoringConfigError(key, value, "a string")
    return value


@dataclass(frozen=True)
class Selectors:
    """PromQL label matchers (without braces) that pick this package's targets.

    ``worker`` selects the worker targets (every task, worker and queue metric they
    serve, and ``up`` for the worker-down alerts); ``exporter`` the standalone
    queue-depth exporters, if any (their queue metrics); ``beat`` the ``celery beat``
    processes (every ``celery_beat_*`` series, read by the periodic-task alerts and
    the dashboards' "Periodic tasks" row).  The queue series are read from either
    worker or exporter, as the union ``(m{worker} or m{exporter})``; with no
    ``exporter``, from the worker targets alone.  Empty ``worker`` (or ``beat``)
    matches every target that serves the metrics, as the default rules do: only beat
    serves ``celery_beat_*``, so the default needs no job name.
    """

    worker: str = ""
    exporter: str = ""
    beat: str = ""


@dataclass(frozen=True)
class AlertTuning:
    """Overrides of one alert's defaults; ``None`` keeps the generator's default.

    ``threshold`` and ``window`` mean what the alert's row of the tuning table in
    ``alerts/README.md`` says (the main threshold, and the main range of its
    expression); ``for_`` is the rule's ``for`` (``for`` in the file form).
    """

    enabled: bool = True
    for_: str | None = None
    severity: str | None = None
    threshold: float | None = None
    window: str | None = None


@dataclass(frozen=True)
class DashboardSettings:
    """Titles, tags and uids of the generated Grafana dashboards."""

    title_prefix: str = ""
    tags: tuple[str, ...] = ("celery", "csuite-async-obs")
    uid_prefix: str = "csuite-"


@dataclass(frozen=True)
class LatencyObjective:
    """A share (``ratio``) of successful runs faster than ``threshold_seconds``.

    The threshold must be a bucket boundary of ``celery_task_runtime_seconds``
    (the worker's ``CSUITE_RUNTIME_BUCKETS``): the generator refuses another.
    """

    threshold_seconds: float
    ratio: float


@dataclass(frozen=True)
class SLO:
    """One objective for the tasks whose name matches ``task`` (a name or a shell glob).

    ``success_ratio``: the share of executions that must succeed over ``window``;
    ``latency``: a runtime objective over the same window.  At least one is given.
    """

    name: str
    task: str
    success_ratio: float | None = None
    latency: LatencyObjective | None = None
    window: str = "28d"
    severity_page: str = "critical"
    severity_ticket: str = "warning"


@dataclass(frozen=True)
class MonitoringConfig:
    """Everything the rule and dashboard generators read; the defaults are the shipped output."""

    selectors: Selectors = field(default_factory=Selectors)
    #: A label (``cluster``, ``region``) that tells apart several deployments in one
    #: Prometheus: every aggregation keeps it, dashboards get a variable for it.
    cluster_label: str | None = None
    #: Base of each alert's ``runbook`` annotation; the alert's name in lower case is appended.
    runbook_url: str = "alerts/README.md#"
    alerts: Mapping[str, AlertTuning] = field(default_factory=dict)
    dashboards: DashboardSettings = field(default_factory=DashboardSettings)
    slos: tuple[SLO, ...] = ()
    #: The runtime histogram's buckets the workers use (latency SLO thresholds are checked
    #: against them); the package's default buckets when not given.
    runtime_buckets: tuple[float, ...] | None = None
    #: Rule group names start with it.
    group_prefix: str = "csuite-async-obs"
    #: How Prometheus stores the runtime and queue-wait histograms: ``classic``
    #: (``_bucket``/``_count``/``_sum`` series; the text formats, or
    #: ``CSUITE_NATIVE_HISTOGRAMS=both``/``off``) or ``native`` (Prometheus started
    #: with ``--enable-feature=native-histograms`` and workers serving
    #: ``CSUITE_NATIVE_HISTOGRAMS=native``, the default): the rules and dashboards
    #: read them with ``histogram_count``, ``histogram_quantile`` on the native series.
    histograms: str = "classic"
    #: How often the long-window recording rules (the failure counts and ratio over
    #: ``CeleryRareTaskFailed``'s window, 1h by default) are evaluated: their own group
    #: with this ``interval``.  They read every sample of that window, per task, queue
    #: and worker: at fleet scale the costliest rules of all, for alerts that a minute's
    #: delay does not change.  ``"auto"``: 1m, or a quarter of the window when that is
    #: shorter; ``None``: Prometheus's global ``evaluation_interval`` (use it when that
    #: is already 1m or more).  A duration: at most 2m and a quarter of the window.
    long_window_interval: str | None = "auto"

    @property
    def native(self) -> bool:
        return self.histograms == "native"

    def tuning(self, alert: str) -> AlertTuning:
        """The overrides of ``alert`` (all defaults when the config names none)."""
        return self.alerts.get(alert, AlertTuning())

    def runbook(self, alert: str) -> str:
        return f"{self.runbook_url}{alert.lower()}"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> MonitoringConfig:
        """Build from the file form's mapping; raises :class:`MonitoringConfigError`."""
        if not isinstance(data, Mapping):
            raise MonitoringConfigError("(top level)", data, "a mapping")
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise MonitoringConfigError(key, data[key], "one of " + ", ".join(sorted(known)))
        config = cls()
        if "selectors" in data:
            config = replace(config, selectors=_selectors(data["selectors"]))
        if data.get("cluster_label") is not None:
            label = data["cluster_label"]
            if not isinstance(label, str) or not _LABEL.match(label):
                raise MonitoringConfigError("cluster_label", label, "a Prometheus label name")
            config = replace(config, cluster_label=label)
        if "runbook_url" in data:
            config = replace(config, runbook_url=_text("runbook_url", data["runbook_url"]))
        if "group_prefix" in data:
            config = replace(config, group_prefix=_text("group_prefix", data["group_prefix"]))
        if "alerts" in data:
            config = replace(config, alerts=_alerts(data["alerts"]))
        if "dashboards" in data:
            config = replace(config, dashboards=_dashboards(data["dashboards"]))
        if "slos" in data:
            config = replace(config, slos=_slos(data["slos"]))
        if "histograms" in data:
            kind = data["histograms"]
            if kind not in ("classic", "native"):
                raise MonitoringConfigError("histograms", kind, "classic or native")
            config = replace(config, histograms=kind)
        if "long_window_interval" in data:
            raw = data["long_window_interval"]
            interval = raw if raw in (None, "auto") else _duration("long_window_interval", raw)
            config = replace(config, long_window_interval=interval)
        if data.get("runtime_buckets") is not None:
            raw = data["runtime_buckets"]
            if not isinstance(raw, (list, tuple)) or not raw:
                raise MonitoringConfigError("runtime_buckets", raw, "a list of seconds")
            buckets = tuple(_number(f"runtime_buckets[{i}]", b) for i, b in enumerate(raw))
            config = replace(config, runtime_buckets=buckets)
        return config


def _keys(key: str, data: Any, known: set[str]) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise MonitoringConfigError(key, data, "a mapping")
    for name in data:
        if name not in known:
            raise MonitoringConfigError(
                f"{key}.{name}", data[name], "one of " + ", ".join(sorted(known))
            )
    return data


def _selectors(data: Any) -> Selectors:
    data = _keys("selectors", data, {"worker", "exporter", "beat"})
    return Selectors(
        **{k: _matchers(f"selectors.{k}", v) for k, v in data.items() if v is not None}
    )


def _alerts(data: Any) -> dict[str, AlertTuning]:
    if not isinstance(data, Mapping):
        raise MonitoringConfigError("alerts", data, "a mapping of alert name to settings")
    out: dict[str, AlertTuning] = {}
    for name, raw in data.items():
        key = f"alerts.{name}"
        raw = _keys(key, raw or {}, {"enabled", "for", "severity", "threshold", "window"})
        tuning = AlertTuning()
        if "enabled" in raw:
            if not isinstance(raw["enabled"], bool):
                raise MonitoringConfigError(f"{key}.enabled", raw["enabled"], "true or false")
            tuning = replace(tuning, enabled=raw["enabled"])
        if raw.get("for") is not None:
            tuning = replace(tuning, for_=_duration(f"{key}.for", raw["for"]))
        if raw.get("severity") is not None:
            if raw["severity"] not in SEVERITIES:
                raise MonitoringConfigError(
                    f"{key}.severity", raw["severity"], "one of " + ", ".join(SEVERITIES)
                )
            tuning = replace(tuning, severity=raw["severity"])
        if raw.get("threshold") is not None:
            tuning = replace(tuning, threshold=_number(f"{key}.threshold", raw["threshold"]))
        if raw.get("window") is not None:
            tuning = replace(tuning, window=_duration(f"{key}.window", raw["window"]))
        out[str(name)] = tuning
    return out


def _dashboards(data: Any) -> DashboardSettings:
    data = _keys("dashboards", data, {"title_prefix", "tags", "uid_prefix"})
    settings = DashboardSettings()
    if "title_prefix" in data:
        settings = replace(
            settings, title_prefix=_text("dashboards.title_prefix", data["title_prefix"])
        )
    if "uid_prefix" in data:
        uid = _text("dashboards.uid_prefix", data["uid_prefix"])
        if not re.match(r"^[a-zA-Z0-9_-]{0,20}$", uid):
            raise MonitoringConfigError(
                "dashboards.uid_prefix", uid, "up to 20 letters, digits, - or _"
            )
        settings = replace(settings, uid_prefix=uid)
    if "tags" in data:
        tags = data["tags"]
        if not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) for t in tags):
            raise MonitoringConfigError("dashboards.tags", tags, "a list of strings")
        settings = replace(settings, tags=tuple(tags))
    return settings


def _slos(data: Any) -> tuple[SLO, ...]:
    if not isinstance(data, (list, tuple)):
        raise MonitoringConfigError("slos", data, "a list of objectives")
    out: list[SLO] = []
    names: set[str] = set()
    for i, raw in enumerate(data):
        key = f"slos[{i}]"
        raw = _keys(
            key,
            raw,
            {"name", "task", "success_ratio", "latency", "window", "severity_page",
             "severity_ticket"},
        )  # fmt: skip
        name = raw.get("name")
        if not isinstance(name, str) or not _LABEL.match(name.replace("-", "_")):
            raise MonitoringConfigError(f"{key}.name", name, "a name of letters, digits, - and _")
        if name in names:
            raise MonitoringConfigError(f"{key}.name", name, "a name no other objective has")
        names.add(name)
        task = raw.get("task")
        if not isinstance(task, str) or not task:
            raise MonitoringConfigError(f"{key}.task", task, "a task name or shell glob")
        latency = None
        if raw.get("latency") is not None:
            lat = _keys(f"{key}.latency", raw["latency"], {"threshold_seconds", "ratio"})
            if "threshold_seconds" not in lat or "ratio" not in lat:
                raise MonitoringConfigError(
                    f"{key}.latency", lat, "threshold_seconds and ratio, both given"
                )
            latency = LatencyObjective(
                _number(f"{key}.latency.threshold_seconds", lat["threshold_seconds"]),
                _ratio(f"{key}.latency.ratio", lat["ratio"]),
            )
        success = raw.get("success_ratio")
        if success is not None:
            success = _ratio(f"{key}.success_ratio", success)
        if success is None and latency is None:
            raise MonitoringConfigError(key, dict(raw), "success_ratio and/or latency")
        slo = SLO(name=name, task=task, success_ratio=success, latency=latency)
        if raw.get("window") is not None:
            slo = replace(slo, window=_duration(f"{key}.window", raw["window"]))
        for sev in ("severity_page", "severity_ticket"):
            if raw.get(sev) is not None:
                if raw[sev] not in SEVERITIES:
                    raise MonitoringConfigError(
                        f"{key}.{sev}", raw[sev], "one of " + ", ".join(SEVERITIES)
                    )
                slo = replace(slo, **{sev: raw[sev]})
        out.append(slo)
    return tuple(out)


def load_config(path: str | Path | None) -> MonitoringConfig:
    """The config in ``path`` (``.yaml``/``.yml``, or ``.toml`` on Python 3.11+); defaults
    for ``None``."""
    if path is None:
        return MonitoringConfig()
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise MonitoringConfigError("(file)", str(path), f"a readable file ({exc})") from None
    if path.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            raise MonitoringConfigError(
                "(file)", str(path), "YAML on Python 3.10 (tomllib is 3.11+)"
            ) from None
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise MonitoringConfigError("(file)", str(path), f"valid TOML ({exc})") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise MonitoringConfigError("(file)", str(path), f"valid YAML ({exc})") from None
    return MonitoringConfig.from_mapping(data)
