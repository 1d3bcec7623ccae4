"""Helpers for tests of instrumented apps: read exact values from a registry or a scrape.

from csuite_async_obs.testing import scrape, sample_value
samples = scrape("http://127.0.0.1:9808/metrics")
assert samples.value("celery_task_succeeded_total", name="app.add", queue_name="celery") == 3
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Samples", "sample_value", "scrape"]


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
