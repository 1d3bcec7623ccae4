"""The ``celery_queue_*`` metrics, made from a poller's last state at scrape time.

A scrape reads memory only and never waits on the broker.  The oldest
message's age is computed at scrape time from its publish timestamp, so it
keeps growing between polls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..metrics.catalog import SPECS
from ..metrics.const_labels import ConstLabels

if TYPE_CHECKING:
    from .poller import PollState, QueueDepthPoller

__all__ = ["QueueDepthCollector"]


class QueueDepthCollector(Collector):
    """Yields the ``celery_queue_*`` metrics from a poller's last state at scrape time."""

    def __init__(
        self,
        poller: QueueDepthPoller,
        const_labels: tuple[tuple[str, str], ...] = (),
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._poller = poller
        self._const = ConstLabels.of(const_labels)
        self._on_error = on_error or (lambda exc: None)

    def _family(self, name: str) -> GaugeMetricFamily | CounterMetricFamily:
        spec = SPECS[name]
        labels = self._const.label_names(name)
        if spec.type == "counter":
            return CounterMetricFamily(name.removesuffix("_total"), spec.help, labels=labels)
        return GaugeMetricFamily(name, spec.help, labels=labels)

    _NAMES = (
        "celery_queue_length",
        "celery_queue_oldest_message_age_seconds",
        "celery_queue_unacked_messages",
        "celery_queue_consumers",
        "celery_queue_length_poll_errors_total",
        "celery_queue_length_last_success_timestamp_seconds",
    )

    def describe(self) -> Iterator[Metric]:
        # Names only, so that a registry can refuse duplicates; never the broker.
        for name in self._NAMES:
            yield self._family(name)

    def collect(self) -> Iterator[Metric]:
        try:
            families = self._families(self._poller.state, time.time())
        except Exception as exc:  # noqa: BLE001 -- a scrape must not fail on our account
            self._on_error(exc)
            return
        yield from families

    def _families(self, state: PollState, now: float) -> list[Metric]:
        const = list(self._const.values)
        length, age, unacked, consumers, errors, success = (self._family(n) for n in self._NAMES)
        reading = state.reading
        if reading is not None:
            ages = reading.ages_supported
            for name in sorted(reading.lengths):
                labels = [name, *const]
                count = reading.lengths[name]
                length.add_metric(labels, count)
                if name in reading.unacked:
                    unacked.add_metric(labels, reading.unacked[name])
                if name in reading.consumers:
                    consumers.add_metric(labels, reading.consumers[name])
                if not ages:
                    continue
                if count == 0:
                    age.add_metric(labels, 0.0)
                elif name in reading.oldest_published_at:
                    # Clock skew between publisher and exporter can make it negative.
                    age.add_metric(labels, max(0.0, now - reading.oldest_published_at[name]))
        errors.add_metric(const, state.errors)
        success.add_metric(const, state.last_success)
        return [length, age, unacked, consumers, errors, success]
