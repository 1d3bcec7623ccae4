"""Fast text and OpenMetrics rendering of the task metrics.

A worker with 500 task names exposes some 25,000 series, most of them at 0.
``prometheus_client.generate_latest`` builds a sample object and a label string for
each of them at every scrape (about 10 us a series here).  Label values of a series
never change, so this renderer formats each series' label string once, caches it
with the series' last values and text, and re-formats only the series whose values
changed, with the same samples (a test compares the parsed output of both).

Reading the values was then most of a render (one object per series, scattered
over the heap).  A metric whose children keep their values in a
:class:`~.value_store.ValueStore` is read as one copy of its array, compared with
the last render's copy block by block (``memcmp``); only the children whose slots
changed are formatted again, and only their chunk of the body is joined again.  An
unchanged metric costs a copy and a comparison; every value is still read at every
scrape: nothing depends on the hooks marking changes.  Metrics without a store (the
compat fallback) are read as whole columns by C-level getters
(:func:`~csuite_async_obs.compat.counter_columns`,
:func:`~csuite_async_obs.compat.histogram_columns`) and compared the same way.

The values are read through :mod:`csuite_async_obs.compat`, which reads
prometheus_client's private attributes when the probe found them and the
metrics' public ``collect()`` otherwise: the output is the same either way.
"""

from __future__ import annotations

import math
import threading
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import compress
from operator import ne
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from ..compat import (
    counter_columns,
    counter_values,
    histogram_bounds,
    histogram_columns,
    histogram_values,
)
from . import protobuf
from .native_histogram import NativeBuckets
from .value_store import ValueStore

__all__ = [
    "OPENMETRICS",
    "Family",
    "TaskExposition",
    "make_renderer",
    "registry_protobuf",
    "wants_protobuf",
]

OPENMETRICS = "application/openmetrics-text"
Natives = dict[int, dict[tuple[str, ...], NativeBuckets]]


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


@dataclass
class _Columns:
    """One metric's children as last rendered: their label values in order, the text
    before each value, the values (a histogram's per-bucket counts of every child one
    after the other) and sums, each child's text, and all of it joined."""

    keys: list[Any]
    heads: list[Any]
    values: list[float]
    sums: list[float]
    lines: list[bytes]
    body: bytes = b""


def _histogram_chunk(heads: list[str], counts: Sequence[float], total: float) -> bytes:
    """A histogram child's lines: cumulative buckets, then _count and _sum."""
    lines = []
    running = 0.0
    for head, count in zip(heads, counts, strict=False):
        running += count
        lines.append(head + _number(running) + "\n")
    lines.append(heads[-2] + _number(running) + "\n")
    lines.append(heads[-1] + _number(total) + "\n")
    return "".join(lines).encode()


def _histogram_heads(family: str, bounds: Iterable[float]) -> Callable[[str], list[str]]:
    """A histogram child's text before each of its values, from its label string."""
    bounds = tuple(bounds)

    def heads(labels: str) -> list[str]:
        sep = "," if labels else ""
        braces = f"{{{labels}}}" if labels else ""
        return [
            *(f'{family}_bucket{{{labels}{sep}le="{_number(b)}"}} ' for b in bounds),
            f"{family}_count{braces} ",
            f"{family}_sum{braces} ",
        ]

    return heads


@dataclass(frozen=True)
class Family:
    """One metric to render, with what its owner knows of it (the catalog's names)."""

    metric: Counter | Gauge | Histogram
    name: str  # the family's name: a counter's without ``_total``
    help: str
    label_names: tuple[str, ...]
    #: Where the metric's children keep their values, if they do (see value_store).
    store: ValueStore | None = None


@dataclass
class _Stored:
    """A stored metric as last rendered: the store's layout generation, each child's
    first slot and text before its value(s), the child owning each slot, the raw
    values, each child's text."""

    generation: int
    bases: list[int]
    heads: list[Any]
    owners: list[int]
    raw: bytes
    values: array[float]
    lines: list[bytes]
    #: The lines joined ``_CHUNK`` children at a time: a change rejoins one chunk.
    chunks: list[bytes]


#: Slots compared at once as raw bytes, then one by one where a block differs.
_BLOCK = 512
_CHUNK = 64


def _stored_lines(state: _Stored, store: ValueStore, child: int) -> bytes:
    base, values = state.bases[child], state.values
    if store.bounds is None:
        head: str = state.heads[child]
        return (head + _number(values[base]) + "\n").encode()
    return _histogram_chunk(state.heads[child], values[base + 1 : base + store.width], values[base])


class TaskExposition:
    """Renders a fixed set of labelled counters, gauges and histograms, with cached
    label strings."""

    def __init__(
        self, families: Iterable[Family], native: Natives | None = None, native_mode: str = "off"
    ) -> None:
        self.families = tuple(families)
        #: The histograms' native buckets (see TaskMetrics.native), for the protobuf format.
        self._native = native if native is not None else {}
        self._native_mode = native_mode
        # Per metric: label values -> their encoded protobuf LabelPairs.
        self._pb_labels: dict[int, dict[Any, bytes]] = {}
        # Per metric: the children as last rendered (see _Columns), and each child's
        # formatted sample names and labels, kept while the child set changes.
        self._columns: dict[int, _Columns] = {}
        self._prefixes: dict[int, dict[Any, Any]] = {}
        # Per stored metric: its children as last rendered (see _Stored).
        self._stored: dict[int, _Stored] = {}
        # A histogram's bucket bounds, read once: every child of one metric shares them.
        self._bounds: dict[int, list[float]] = {}
        self._headers: dict[tuple[int, bool], tuple[str, bytes]] = {}
        self._lock = threading.Lock()

    def _heads(
        self,
        metric_id: int,
        names: tuple[str, ...],
        keys: list[Any],
        make: Callable[[str], Any],
    ) -> list[Any]:
        """Each child's text before its value(s), made from its label string once."""
        made = self._prefixes.setdefault(metric_id, {})
        heads = []
        for key in keys:
            head = made.get(key)
            if head is None:
                head = made[key] = make(_labels(names, key))
            heads.append(head)
        return heads

    def _scalar(self, spec: Family, openmetrics: bool, out: list[bytes]) -> None:
        metric, names = spec.metric, spec.label_names
        sample, header = self._header(spec, openmetrics)
        out.append(header)
        keys, values = counter_columns(metric)
        state = self._columns.get(id(metric))
        if state is None or state.keys != keys:
            heads = self._heads(
                id(metric),
                names,
                keys,
                lambda labels: f"{sample}{{{labels}}} " if labels else f"{sample} ",
            )
            lines = [(h + _number(v) + "\n").encode() for h, v in zip(heads, values, strict=True)]
            state = self._columns[id(metric)] = _Columns(keys, heads, values, [], lines)
        elif state.values != values:
            # Most series are unchanged between scrapes (many at 0): only the changed
            # ones are formatted again, found by a C-level comparison of the two lists.
            heads, lines = state.heads, state.lines
            for i in compress(range(len(values)), map(ne, values, state.values)):
                lines[i] = (heads[i] + _number(values[i]) + "\n").encode()
            state.values = values
            state.body = b""
        if not state.body:
            state.body = b"".join(state.lines)
        out.append(state.body)

    def _histogram(self, spec: Family, out: list[bytes]) -> None:
        metric, family, names = spec.metric, spec.name, spec.label_names
        out.append(self._header(spec, openmetrics=False)[1])
        bounds = self._bounds.get(id(metric))
        if not bounds:
            bounds = self._bounds[id(metric)] = histogram_bounds(metric)
        width = len(bounds)
        keys, flat, sums = histogram_columns(metric)
        state = self._columns.get(id(metric))
        if state is None or state.keys != keys:
            heads = self._heads(id(metric), names, keys, _histogram_heads(family, bounds))
            lines = [
                _histogram_chunk(heads[i], flat[i * width : (i + 1) * width], sums[i])
                for i in range(len(keys))
            ]
            state = self._columns[id(metric)] = _Columns(keys, heads, flat, sums, lines)
        elif state.values != flat or state.sums != sums:
            changed = {i // width for i in compress(range(len(flat)), map(ne, flat, state.values))}
            changed.update(compress(range(len(sums)), map(ne, sums, state.sums)))
            for i in changed:
                state.lines[i] = _histogram_chunk(
                    state.heads[i], flat[i * width : (i + 1) * width], sums[i]
                )
            state.values, state.sums = flat, sums
            state.body = b""
        if not state.body:
            state.body = b"".join(state.lines)
        out.append(state.body)

    def _header(self, spec: Family, openmetrics: bool) -> tuple[str, bytes]:
        """The sample name of a counter or gauge (a histogram's family name), and the
        family's HELP and TYPE lines (made once: the same object at every render)."""
        key = (id(spec.metric), openmetrics)
        made = self._headers.get(key)
        if made is None:
            made = self._headers[key] = self._make_header(spec, openmetrics)
        return made

    @staticmethod
    def _make_header(spec: Family, openmetrics: bool) -> tuple[str, bytes]:
        metric, family = spec.metric, spec.name
        if isinstance(metric, Histogram):
            sample = type_name = family
            kind = "histogram"
        elif isinstance(metric, Counter):
            sample, kind = f"{family}_total", "counter"
            type_name = family if openmetrics else sample
        else:
            sample = type_name = family
            kind = "gauge"
        return (
            sample,
            f"# HELP {type_name} {_help(spec.help)}\n# TYPE {type_name} {kind}\n".encode(),
        )

    def _from_store(
        self, spec: Family, store: ValueStore, openmetrics: bool, out: list[bytes]
    ) -> None:
        """A stored metric: its raw values compared with the last render's block by block,
        and only the children whose slots changed formatted (and their chunk joined) again."""
        sample, header = self._header(spec, openmetrics)
        out.append(header)
        state = self._stored.get(id(spec.metric))
        raw = store.snapshot()
        if state is not None and state.generation == store.generation and raw != state.raw:
            values: array[float] = array("d")
            values.frombytes(raw)
            if len(values) == len(state.values):
                self._update(state, store, raw, values)
            else:  # a child is being built: read the layout again
                state = None
        if state is None or state.generation != store.generation:
            state = self._stored[id(spec.metric)] = self._lay_out(spec, store, sample)
        out.extend(state.chunks)

    def _lay_out(self, spec: Family, store: ValueStore, sample: str) -> _Stored:
        generation, keys, bases = store.layout()
        raw = store.snapshot()  # at least as new as the layout
        values: array[float] = array("d")
        values.frombytes(raw)
        width, bounds = store.width, store.bounds
        if bounds is None:
            heads = self._heads(
                id(spec.metric),
                spec.label_names,
                keys,
                lambda labels: f"{sample}{{{labels}}} " if labels else f"{sample} ",
            )
        else:
            heads = self._heads(
                id(spec.metric), spec.label_names, keys, _histogram_heads(sample, bounds)
            )
        owners = [-1] * len(values)
        for position, base in enumerate(bases):
            owners[base : base + width] = [position] * width
        state = _Stored(generation, bases, heads, owners, raw, values, [], [])
        state.lines = [_stored_lines(state, store, i) for i in range(len(bases))]
        state.chunks = [b"".join(state.lines[i : i + _CHUNK]) for i in range(0, len(bases), _CHUNK)]
        return state

    @staticmethod
    def _update(state: _Stored, store: ValueStore, raw: bytes, values: array[float]) -> None:
        step, old = _BLOCK * values.itemsize, state.raw
        changed: set[int] = set()
        for start in range(0, len(raw), step):
            if raw[start : start + step] != old[start : start + step]:
                # Compared as 64-bit integers: bit for bit, so that 0.0 -> -0.0 is a
                # change and a NaN left alone is not.
                now, before = (
                    array("q", raw[start : start + step]),
                    array("q", old[start : start + step]),
                )
                a = start // values.itemsize
                slots = compress(range(a, a + len(now)), map(ne, now, before))
                changed.update(state.owners[i] for i in slots)
        changed.discard(-1)  # slots of a forgotten child
        state.raw, state.values = raw, values
        for i in changed:
            state.lines[i] = _stored_lines(state, store, i)
        for chunk in {i // _CHUNK for i in changed}:
            at = chunk * _CHUNK
            state.chunks[chunk] = b"".join(state.lines[at : at + _CHUNK])

    def render(self, openmetrics: bool = False) -> bytes:
        """The metrics' families in the text format (or OpenMetrics, without ``# EOF``)."""
        return b"".join(self.render_parts(openmetrics))

    def render_parts(self, openmetrics: bool = False) -> list[bytes]:
        """:meth:`render`'s body as the parts it is made of, in order: most are the very
        objects of the last render (the cached chunks of unchanged series), so the
        exporter writes them to the socket as they are instead of copying 2 MiB into
        one buffer, and compares them with the last scrape's by identity."""
        out: list[bytes] = []
        with self._lock:
            for family in self.families:
                if family.store is not None:
                    self._from_store(family, family.store, openmetrics, out)
                elif isinstance(family.metric, Histogram):
                    self._histogram(family, out)
                else:
                    self._scalar(family, openmetrics, out)
        return out

    def _labels_pb(self, metric: Any, names: tuple[str, ...], key: tuple[str, ...]) -> bytes:
        cache = self._pb_labels.setdefault(id(metric), {})
        encoded = cache.get(key)
        if encoded is None:
            encoded = cache[key] = protobuf.label_pairs(names, key)
        return encoded

    def render_protobuf(self) -> bytes:
        """The families in the delimited protobuf format, histograms native as configured.

        Native histograms carry their own count and sum (read with their buckets, so
        the three agree); classic buckets are written beside them in ``both`` mode and
        alone in ``off`` mode.
        """
        out: list[bytes] = []
        classic = self._native_mode in ("both", "off")
        native = self._native_mode in ("native", "both")
        with self._lock:
            for family in self.families:
                metric, names = family.metric, family.label_names
                if isinstance(metric, Histogram):
                    natives = self._native.get(id(metric), {}) if native else {}
                    bounds = self._bounds.get(id(metric)) or _bounds(family)
                    self._bounds[id(metric)] = bounds
                    metrics = []
                    for key, counts in _histogram_values(family):
                        labels = self._labels_pb(metric, names, key)
                        cumulative, running = [], 0.0
                        for bound, count in zip(bounds, counts[:-1], strict=False):
                            running += count
                            cumulative.append((bound, running))
                        state = natives.get(key)
                        snapshot = state.snapshot() if state is not None else None
                        count, total = (
                            (snapshot.count, snapshot.sum) if snapshot else (running, counts[-1])
                        )
                        metrics.append(
                            protobuf.histogram_metric(
                                labels,
                                count,
                                total,
                                cumulative if classic or snapshot is None else (),
                                snapshot,
                            )
                        )
                    out.append(
                        protobuf.family(family.name, family.help, protobuf.HISTOGRAM, metrics)
                    )
                    continue
                if isinstance(metric, Counter):
                    name, kind, write = (
                        f"{family.name}_total",
                        protobuf.COUNTER,
                        protobuf.counter_metric,
                    )
                else:
                    name, kind, write = family.name, protobuf.GAUGE, protobuf.gauge_metric
                metrics = [
                    write(self._labels_pb(metric, names, key), value)
                    for key, value in _counter_values(family)
                ]
                out.append(protobuf.family(name, family.help, kind, metrics))
        return b"".join(out)


def _counter_values(family: Family) -> list[tuple[tuple[str, ...], float]]:
    if family.store is None:
        return counter_values(family.metric)
    return [(key, values[0]) for key, values in family.store.items()]


def _histogram_values(family: Family) -> list[tuple[tuple[str, ...], list[float]]]:
    if family.store is None:
        return histogram_values(family.metric)
    return family.store.items()


def _bounds(family: Family) -> list[float]:
    if family.store is None or family.store.bounds is None:
        return histogram_bounds(family.metric)
    return list(family.store.bounds)


_PROTOBUF_TYPE = "application/vnd.google.protobuf"


def wants_protobuf(accept: str) -> bool:
    """Whether the scraper asks for the delimited ``MetricFamily`` protobuf format
    (Prometheus does with ``--enable-feature=native-histograms``) before any other."""
    best: tuple[float, bool] | None = None
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        values = dict(p.split("=", 1) for p in params if "=" in p)
        try:
            q = float(values.get("q", "1"))
        except ValueError:
            continue
        is_protobuf = (
            media == _PROTOBUF_TYPE
            and values.get("proto") == "io.prometheus.client.MetricFamily"
            and values.get("encoding") == "delimited"
        )
        if q > 0 and (best is None or q > best[0]):
            best = (q, is_protobuf)
    return best is not None and best[1]


def _pairs(labels: dict[str, str]) -> bytes:
    return protobuf.label_pairs(list(labels), list(labels.values()))


def registry_protobuf(registry: CollectorRegistry) -> bytes:
    """A registry's collectors in the delimited protobuf format (gauges, counters,
    histograms; other types as untyped), for the scrape-time collectors."""
    out: list[bytes] = []
    for family in registry.collect():
        if family.type == "counter":
            samples = [s for s in family.samples if s.name.endswith("_total")]
            out.append(
                protobuf.family(
                    f"{family.name}_total",
                    family.documentation,
                    protobuf.COUNTER,
                    [
                        protobuf.counter_metric(
                            protobuf.label_pairs(list(s.labels), list(s.labels.values())), s.value
                        )
                        for s in samples
                    ],
                )
            )
        elif family.type == "histogram":
            grouped: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
            for sample in family.samples:
                key = tuple((k, v) for k, v in sample.labels.items() if k != "le")
                entry = grouped.setdefault(key, {"buckets": [], "count": 0.0, "sum": 0.0})
                if sample.name.endswith("_bucket"):
                    entry["buckets"].append((float(sample.labels["le"]), sample.value))
                elif sample.name.endswith("_count"):
                    entry["count"] = sample.value
                elif sample.name.endswith("_sum"):
                    entry["sum"] = sample.value
            metrics = [
                protobuf.histogram_metric(
                    protobuf.label_pairs([k for k, _ in key], [v for _, v in key]),
                    entry["count"],
                    entry["sum"],
                    entry["buckets"],
                )
                for key, entry in grouped.items()
            ]
            out.append(
                protobuf.family(family.name, family.documentation, protobuf.HISTOGRAM, metrics)
            )
        else:
            kind = protobuf.GAUGE if family.type == "gauge" else protobuf.UNTYPED
            write = protobuf.gauge_metric if kind == protobuf.GAUGE else protobuf.untyped_metric
            metrics = [
                write(_pairs(s.labels), s.value)
                for s in family.samples
                if not s.name.endswith("_created")
            ]
            out.append(protobuf.family(family.name, family.documentation, kind, metrics))
    return b"".join(out)


def make_renderer(
    exposition: TaskExposition, rest: CollectorRegistry
) -> Callable[[str], tuple[bytes | list[bytes], str]]:
    """``render(accept_header) -> (body, content type)``: the task metrics, then ``rest``;
    the protobuf format when the scraper asks for it first (native histograms).  A text
    body is a list of parts (see :meth:`TaskExposition.render_parts`)."""

    def render(accept: str) -> tuple[bytes | list[bytes], str]:
        if wants_protobuf(accept):
            return (
                exposition.render_protobuf() + registry_protobuf(rest),
                protobuf.CONTENT_TYPE,
            )
        encoder, content_type = choose_encoder(accept)
        openmetrics = content_type.startswith(OPENMETRICS)
        parts = exposition.render_parts(openmetrics)
        # ``rest`` comes last: in OpenMetrics its encoder writes the final "# EOF".
        parts.append(encoder(rest))
        return parts, content_type

    return render
