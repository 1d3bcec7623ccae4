"""Helpers for tests of instrumented apps: read exact values from a registry or a scrape.

from csuite_async_obs.testing import scrape, sample_value
samples = scrape("http://127.0.0.1:9808/metrics")
assert samples.value("celery_task_succeeded_total", name="app.add", queue_name="celery") == 3
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Samples", "sample_value", "scrape", "wait_for"]


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


class Samples:
    """The samples of one scrape, with exact look-ups."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[Sample] = [
            Sample(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def find(self, metric: str, /, **labels: str) -> list[Sample]:
        return [
            s
            for s in self.samples
            if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, metric: str, /, **labels: str) -> float | None:
        """The value of the one sample with exactly these labels (``None`` if absent)."""
        for s in self.samples:
            if s.name == metric and s.labels == labels:
                return s.value
        return None

    def sum(self, metric: str, /, **labels: str) -> float:
        """Sum over every sample of ``metric`` whose labels include ``labels``."""
        return sum(s.value for s in self.find(metric, **labels))


def scrape(url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> Samples:
    """GET ``url`` and parse the Prometheus text exposition."""
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return Samples(response.read().decode("utf-8"))


def sample_value(registry: CollectorRegistry, metric: str, /, **labels: str) -> float | None:
    """``registry.get_sample_value`` with keyword labels."""
    return registry.get_sample_value(metric, labels)


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 30.0,
    message: str = "condition",
    interval: float = 0.05,
) -> Any:
    """Poll until ``predicate()`` is truthy and return its value.

    Exceptions from ``predicate`` count as "not yet" (a server still starting);
    at the deadline :class:`TimeoutError` names ``message`` and the last one.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 -- retried until the deadline
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(
        f"timed out after {timeout:.0f}s waiting for {message} (last error: {last_exc!r})"
    )
