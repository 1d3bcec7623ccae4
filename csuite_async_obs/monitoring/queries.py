"""The PromQL of the dashboards: label filters and aggregations made from the monitoring config.

Plain text, no Grafana SDK, so that it can be read and tested on its own.  A
:class:`Scope` holds the config's selectors and cluster label; the panels ask it
for their filters (:attr:`Scope.worker`, :attr:`Scope.task` ...) and their
aggregations (:meth:`Scope.agg`, :meth:`Scope.rate` ...).  With the default
config the text is exactly that of the committed dashboards.

Which selector filters what (the design choice):

* **Worker series** (task, worker and instrumentation metrics, and ``up``) carry
  the worker selector, then the ``job`` and ``instance`` variables.  The variable
  queries carry it too, so the ``job`` variable only offers the selected jobs.
* **Queue series** (``celery_queue_*``) are broker-wide and come from workers or
  from standalone exporters: with both selectors given, a query reads
  ``metric{worker} or metric{exporter}`` (then ``max by (queue_name)`` as
  before); when either is empty it matches any target (empty means "every
  target that serves the metrics"), as the default dashboards do.  They stay
  unfiltered by the ``job`` and ``instance`` variables.
* **Beat series** (``celery_beat_*``) come from the ``celery beat`` targets, in
  a job of their own: the beat selector and the cluster filter only (the ``job``
  and ``instance`` variables list workers).  Where a panel joins a beat entry to
  its task's worker series, beat's ``task`` label is copied to ``name`` with
  ``label_join`` (``label_replace`` would need ``$1``, which Grafana's templating
  replaces).
* **celery_task_sent_total** is counted by publishers (a web app, beat) in jobs
  of their own: no job selector, the cluster filter only.
* **The cluster label**, when given: every selector also matches
  ``<label>=~"$cluster"`` (the dashboards' ``cluster`` variable) and every
  aggregation and vector match (``by``, ``on``) keeps the label, so that two
  clusters' series never merge.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import MonitoringConfig

__all__ = ["RANGE", "RATE", "RUNTIME", "Scope"]

# Executions are counted by the runtime histogram: one observation each, labelled
# with its final ``state`` (so it also gives the failure ratios); see
# Scope.observations for either kind of histogram.
RUNTIME = "celery_task_runtime_seconds"

RATE = "$__rate_interval"
RANGE = "$__range"

_VARIABLES = 'job=~"$job", instance=~"$instance"'
_TASK_VARIABLES = 'queue_name=~"$queue_name", name=~"$task"'
_QUEUE_VARIABLE = 'queue_name=~"$queue_name"'


def _join(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


@dataclass(frozen=True)
class Scope:
    """The label filters and groupings every dashboard query is built with."""

    worker_selector: str = ""
    exporter_selector: str = ""
    cluster_label: str | None = None
    beat_selector: str = ""
    #: The runtime and queue-wait histograms are native (one series each) in Prometheus.
    native: bool = False

    @classmethod
    def from_config(cls, config: MonitoringConfig) -> Scope:
        return cls(
            config.selectors.worker,
            config.selectors.exporter,
            config.cluster_label,
            config.selectors.beat,
            config.native,
        )

    # ------------------------------------------------------------------ filters

    @property
    def cluster(self) -> str:
        """The matcher of the cluster variable, or ``""`` without a cluster label."""
        return f'{self.cluster_label}=~"$cluster"' if self.cluster_label else ""

    @property
    def worker(self) -> str:
        """Worker series of the chosen jobs and workers."""
        return _join(self.worker_selector, self.cluster, _VARIABLES)

    @property
    def task(self) -> str:
        """Task series of the chosen jobs, workers, queues and tasks."""
        return _join(self.worker, _TASK_VARIABLES)

    @property
    def failed(self) -> str:
        return self.task + ', state="failed"'

    @property
    def beat(self) -> str:
        """Series of the celery beat targets (see the module docstring)."""
        return _join(self.beat_selector, self.cluster)

    @property
    def sent(self) -> str:
        """``celery_task_sent_total``: publishers count it in jobs of their own."""
        return _join(self.cluster, _TASK_VARIABLES)

    def variable_source(self, metric: str, *matchers: str) -> str:
        """The series a ``label_values`` variable reads: worker targets, then ``matchers``."""
        return series(metric, _join(self.worker_selector, *matchers))

    def queue(self, metric: str, *, queues: bool = True, fn: str = "", window: str = "") -> str:
        """Queue series from workers or exporters (see the module docstring).

        ``queues``: filter on the ``queue_name`` variable; ``fn`` and ``window``
        wrap each selection as ``fn(metric{...}[window])``.
        """
        sources = [""]
        if self.worker_selector and self.exporter_selector:
            sources = list(dict.fromkeys((self.worker_selector, self.exporter_selector)))
        parts = []
        for source in sources:
            text = series(metric, _join(source, self.cluster, _QUEUE_VARIABLE if queues else ""))
            if window:
                text += f"[{window}]"
            parts.append(f"{fn}({text})" if fn else text)
        return " or ".join(parts)

    # ------------------------------------------------------------------ aggregations

    def labels(self, labels: str = "") -> str:
        """``labels`` with the cluster label first (``""`` when both are empty)."""
        return _join(self.cluster_label or "", labels)

    def agg(self, op: str, labels: str = "", *, tight: bool = False) -> str:
        """The head of an aggregation up to its opening parenthesis, keeping the cluster:
        ``sum by (cluster, le) (``; without labels ``sum (`` (``sum(`` when ``tight``)."""
        grouping = self.labels(labels)
        if grouping:
            return f"{op} by ({grouping}) ("
        return f"{op}(" if tight else f"{op} ("

    def on(self, labels: str) -> str:
        """A vector match on ``labels`` and the cluster label."""
        return f"on ({self.labels(labels)})"

    def rate(self, metric: str, selector: str, by: str | None = None, window: str = RATE) -> str:
        """``sum [by (...)] (rate(metric{selector}[window]))``."""
        return f"{self.agg('sum', by or '')}rate({metric}{{{selector}}}[{window}]))"

    def increase(
        self, metric: str, selector: str, by: str | None = None, window: str = RANGE
    ) -> str:
        """``sum [by (...)] (increase(metric{selector}[window]))``."""
        return f"{self.agg('sum', by or '')}increase({metric}{{{selector}}}[{window}]))"

    def increase_since_created(
        self, metric: str, selector: str, by: str, window: str = RANGE
    ) -> str:
        """Increase over ``window`` of a counter whose series appear at their first event.

        ``increase()`` needs two samples, so it misses the event that created a series
        (``celery_task_failed_total{exception}`` appears at 1).  A series that did not
        exist ``window`` ago counts with its whole value; the others with their increase
        (``or`` matches label sets without the metric name).
        """
        sel = f"{metric}{{{selector}}}"
        return (
            f"{self.agg('sum', by)}\n  ({sel} unless {sel} offset {window})\n  or\n"
            f"  increase({sel}[{window}])\n)"
        )

    def quantile(
        self, q: float, histogram: str, selector: str, by: str = "le", window: str = RATE
    ) -> str:
        """The ``q`` quantile of ``histogram`` (without ``_bucket``) over ``window``; on
        native histograms ``le`` is not a label (the buckets are in each sample)."""
        if self.native:
            kept = ", ".join(x.strip() for x in by.split(",") if x.strip() != "le")
            return f"histogram_quantile({q}, {self.rate(histogram, selector, kept, window)})"
        return f"histogram_quantile({q}, {self.rate(histogram + '_bucket', selector, by, window)})"

    def observations(
        self, fn: str, histogram: str, selector: str, by: str | None = None, window: str = RATE
    ) -> str:
        """``sum [by] (fn(<histogram>_count{selector}[window]))`` -- its observations per
        second (``rate``) or in ``window`` (``increase``), of either kind."""
        if self.native:
            return (
                f"{self.agg('sum', by or '')}histogram_count({fn}({histogram}{{{selector}}}"
                f"[{window}])))"
            )
        return f"{self.agg('sum', by or '')}{fn}({histogram}_count{{{selector}}}[{window}]))"

    def observed_sum(self, histogram: str, selector: str, by: str | None = None) -> str:
        """``sum [by] (rate(<histogram>_sum{selector}[$__rate_interval]))``, of either kind."""
        if self.native:
            return (
                f"{self.agg('sum', by or '')}histogram_sum(rate({histogram}{{{selector}}}"
                f"[{RATE}])))"
            )
        return self.rate(histogram + "_sum", selector, by)

    def distribution(self, histogram: str, selector: str) -> str:
        """Observations per bucket and rate interval, for a heatmap."""
        if self.native:
            return self.increase(histogram, selector, None, RATE)
        return self.increase(histogram + "_bucket", selector, "le", RATE)

    def failure_ratio(self, selector: str, by: str | None = None, window: str = RATE) -> str:
        """Failed executions over all executions, from the runtime histogram's counts."""
        fn = "rate" if window == RATE else "increase"
        failed = self.observations(fn, RUNTIME, f'{selector}, state="failed"', by, window)
        total = self.observations(fn, RUNTIME, selector, by, window)
        return f"{failed}\n/\n{total}"

    def failures_by_exception(self) -> str:
        """Failures in the time range by exception class and task, first failures included."""
        return self.increase_since_created(
            "celery_task_failed_total", self.task, "exception, queue_name, name"
        )


def series(metric: str, selector: str) -> str:
    """``metric{selector}``, or the bare name for an empty selector."""
    return f"{metric}{{{selector}}}" if selector else metric
