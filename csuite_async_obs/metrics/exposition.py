"""Fast text and OpenMetrics rendering of the task metrics.

Every registered task has about 140 series at 0 from worker start (its
counters, and the runtime histogram for every outcome), so a worker with 500
task names exposes some 72,000 series.  ``prometheus_client.generate_latest``
builds a sample object and a label string for each of them at every scrape
(about 10 us a series here: 0.75 s a scrape).  Label values of a series never
change, so this renderer formats each series' label string once, caches it
with the series' last values and text, and at scrape time reads the values and
re-formats only the series whose values changed (most of them sit at 0) --
more than ten times faster, with the same samples (a test compares the parsed
output of both).

The values are read through :mod:`csuite_async_obs.compat`
(:func:`~csuite_async_obs.compat.counter_values`,
:func:`~csuite_async_obs.compat.histogram_values`), which reads
prometheus_client's private attributes when the probe found them and the
metrics' public ``collect()`` otherwise: the output is the same either way.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from ..compat import counter_values, histogram_bounds, histogram_values

__all__ = ["OPENMETRICS", "Family", "TaskExposition", "make_renderer"]

OPENMETRICS = "application/openmetrics-text"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if value != value:  # NaN
        return "NaN"
    return repr(float(value))


def _labels(names: tuple[str, ...], key: tuple[str, ...]) -> str:
    return ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, key, strict=True))


@dataclass(frozen=True)
class Family:
    """One metric to render, with what its owner knows of it (the catalog's names)."""

    metric: Counter | Gauge | Histogram
    name: str  # the family's name: a counter's without ``_total``
    help: str
    label_names: tuple[str, ...]


class TaskExposition:
    """Renders a fixed set of labelled counters, gauges and histograms, with cached
    label strings."""

    def __init__(self, families: Iterable[Family]) -> None:
        self.families = tuple(families)
        # Per metric: label values -> [prefix(es), last values, last text].
        self._cache: dict[int, dict[Any, list[Any]]] = {}
        # A histogram's bucket bounds, read once: every child of one metric shares them.
        self._bounds: dict[int, list[float]] = {}
        self._lock = threading.Lock()

    def _scalar(self, spec: Family, openmetrics: bool, out: list[bytes]) -> None:
        metric, family, documentation, names = spec.metric, spec.name, spec.help, spec.label_names
        if isinstance(metric, Counter):
            sample, kind = f"{family}_total", "counter"
            type_name = family if openmetrics else sample
        else:
            sample = type_name = family
            kind = "gauge"
        out.append(
            f"# HELP {type_name} {_help(documentation)}\n# TYPE {type_name} {kind}\n".encode()
        )
        cache = self._cache.setdefault(id(metric), {})
        append = out.append
        for key, value in counter_values(metric):
            entry = cache.get(key)
            if entry is None:
                labels = _labels(names, key)
                prefix = f"{sample}{{{labels}}} " if labels else f"{sample} "
                entry = cache[key] = [prefix, None, b""]
            elif entry[1] == value:
                append(entry[2])
                continue
            entry[1] = value
            entry[2] = line = (entry[0] + _number(value) + "\n").encode()
            append(line)

    def _histogram(self, spec: Family, out: list[bytes]) -> None:
        metric, family, documentation, names = spec.metric, spec.name, spec.help, spec.label_names
        out.append(f"# HELP {family} {_help(documentation)}\n# TYPE {family} histogram\n".encode())
        cache = self._cache.setdefault(id(metric), {})
        append = out.append
        for key, counts in histogram_values(metric):
            entry = cache.get(key)
            if entry is None:
                labels = _labels(names, key)
                sep = "," if labels else ""
                braces = f"{{{labels}}}" if labels else ""
                bounds = self._bounds.get(id(metric))
                if not bounds:
                    bounds = self._bounds[id(metric)] = histogram_bounds(metric)
                prefixes = [
                    f'{family}_bucket{{{labels}{sep}le="{_number(bound)}"}} ' for bound in bounds
                ]
                prefixes += [f"{family}_count{braces} ", f"{family}_sum{braces} "]
                entry = cache[key] = [prefixes, None, b""]
            elif entry[1] == counts:
                # Most series are unchanged between scrapes (many at 0): reuse the text.
                append(entry[2])
                continue
            prefixes = entry[0]
            lines = []
            running = 0.0
            for prefix, count in zip(prefixes, counts[:-1], strict=False):
                running += count
                lines.append(prefix + _number(running) + "\n")
            lines.append(prefixes[-2] + _number(running) + "\n")
            lines.append(prefixes[-1] + _number(counts[-1]) + "\n")
            entry[1] = counts
            entry[2] = chunk = "".join(lines).encode()
            append(chunk)

    def render(self, openmetrics: bool = False) -> bytes:
        """The metrics' families in the text format (or OpenMetrics, without ``# EOF``)."""
        out: list[bytes] = []
        with self._lock:
            for family in self.families:
                if isinstance(family.metric, Histogram):
                    self._histogram(family, out)
                else:
                    self._scalar(family, openmetrics, out)
        return b"".join(out)


def make_renderer(
    exposition: TaskExposition, rest: CollectorRegistry
) -> Callable[[str], tuple[bytes, str]]:
    """``render(accept_header) -> (body, content type)``: the task metrics, then ``rest``."""

    def render(accept: str) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        openmetrics = content_type.startswith(OPENMETRICS)
        # ``rest`` comes last: in OpenMetrics its encoder writes the final "# EOF".
        return exposition.render(openmetrics) + encoder(rest), content_type

    return render
