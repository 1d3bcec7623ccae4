"""A writer of Prometheus's protobuf exposition (``io.prometheus.client.MetricFamily``,
length-delimited), the only format that carries native histograms.

Hand-written rather than generated from ``metrics.proto`` with the ``protobuf``
package: the exposition needs five message types and three wire types, all
write-only, and a scrape of 500 task names writes ~30,000 messages, where
building protobuf message objects would cost more than the text renderer
(measured in ``benchmarks/``).  The field numbers are those of
``prometheus/client_model`` ``metrics.proto``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from .native_histogram import NativeSnapshot, spans_and_deltas

__all__ = [
    "CONTENT_TYPE",
    "COUNTER",
    "GAUGE",
    "HISTOGRAM",
    "UNTYPED",
    "counter_metric",
    "family",
    "gauge_metric",
    "histogram_metric",
    "label_pairs",
]

CONTENT_TYPE = (
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
)

# MetricType
COUNTER, GAUGE, SUMMARY, UNTYPED, HISTOGRAM = 0, 1, 2, 3, 4

_DOUBLE = struct.Struct("<d")


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 as two's complement (not used for sint fields)
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _zigzag(value: int) -> int:
    return (value << 1) ^ (value >> 63) if value < 0 else value << 1


def _key(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _bytes(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _double(field: int, value: float) -> bytes:
    return _key(field, 1) + _DOUBLE.pack(value)


def _uint(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value)


def _sint(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(_zigzag(value))


def label_pairs(names: Sequence[str], values: Sequence[str]) -> bytes:
    """A Metric's ``label`` fields (1: LabelPair{name=1, value=2}); encode once per series."""
    out = b""
    for name, value in zip(names, values, strict=True):
        out += _bytes(1, _bytes(1, name.encode()) + _bytes(2, value.encode()))
    return out


def counter_metric(labels: bytes, value: float) -> bytes:
    """Metric{label, counter=3: Counter{value=1}}."""
    return labels + _bytes(3, _double(1, value))


def gauge_metric(labels: bytes, value: float) -> bytes:
    """Metric{label, gauge=2: Gauge{value=1}}."""
    return labels + _bytes(2, _double(1, value))


def untyped_metric(labels: bytes, value: float) -> bytes:
    """Metric{label, untyped=5: Untyped{value=1}}."""
    return labels + _bytes(5, _double(1, value))


def histogram_metric(
    labels: bytes,
    count: float,
    total: float,
    classic: Iterable[tuple[float, float]] = (),
    native: NativeSnapshot | None = None,
) -> bytes:
    """Metric{label, histogram=7}: classic buckets ``(upper bound, cumulative count)``
    (without ``+Inf``, which the count is), a native part, or both."""
    body = _uint(1, int(count)) + _double(2, total)
    for bound, cumulative in classic:
        if bound == float("inf"):
            continue
        body += _bytes(3, _uint(1, int(cumulative)) + _double(2, bound))
    if native is not None:
        body += _sint(5, native.schema) + _double(6, native.zero_threshold)
        body += _uint(7, int(native.zero_count))
        for spans_field, deltas_field, buckets in (
            (9, 10, native.negative),
            (12, 13, native.positive),
        ):
            spans, deltas = spans_and_deltas(buckets)
            for offset, length in spans:
                body += _bytes(spans_field, _sint(1, offset) + _uint(2, length))
            for delta in deltas:
                body += _sint(deltas_field, delta)
        if not native.positive and not native.negative and not native.zero_count:
            # No bucket yet: an empty span marks the histogram native (as
            # client_golang does), else Prometheus would read a classic one.
            body += _bytes(12, _sint(1, 0) + _uint(2, 0))
    return labels + _bytes(7, body)


def family(name: str, help_text: str, kind: int, metrics: Iterable[bytes]) -> bytes:
    """One length-delimited MetricFamily{name=1, help=2, type=3, metric=4}."""
    body = _bytes(1, name.encode()) + _bytes(2, help_text.encode()) + _uint(3, kind)
    for metric in metrics:
        body += _bytes(4, metric)
    return _varint(len(body)) + body
