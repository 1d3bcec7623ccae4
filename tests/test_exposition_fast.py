"""The fast renderer gives exactly the samples prometheus_client's own exposition gives."""

from __future__ import annotations

import math

import pytest
from prometheus_client import (
    CollectorRegistry,
    Gauge,
    disable_created_metrics,
    enable_created_metrics,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from csuite_async_obs import compat
from csuite_async_obs.config.options import ObsSettings
from csuite_async_obs.metrics.exposition import TaskExposition, make_renderer
from csuite_async_obs.metrics.task_metrics import TaskMetrics


def _filled() -> tuple[CollectorRegistry, TaskMetrics]:
    registry = CollectorRegistry()
    metrics = TaskMetrics(registry, ObsSettings(const_labels=(("team", "core"),)))
    weird = 'odd "name"\nwith \\ and ✓'
    for name in ("a.one", "b.two", weird):
        series = metrics.task(name, "celery")
        series.received.inc(3)
        series.runtime["succeeded"].observe(0.02)
        series.runtime["failed"].observe(7.5)
        series.runtime["failed"].observe(1e-7)
        series.queue_wait.observe(12.0)
        series.failed("ValueError").inc()
    metrics.task("a.one", "other-queue").time_limit["hard"].inc()
    metrics.error("collect")
    return registry, metrics


def _samples(families: object) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    out = []
    for family in families:  # type: ignore[attr-defined]
        for s in family.samples:
            out.append((s.name, tuple(sorted(s.labels.items())), s.value))
    return sorted(out, key=lambda x: (x[0], x[1]))


@pytest.fixture(autouse=True, params=["private", "fallback"])
def _no_created(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> object:
    # Both paths of every prometheus_client shim: private attributes, and the
    # public collect() as if they were missing.
    if request.param == "fallback":
        monkeypatch.setenv(compat.FORCE_VARIABLE, "all")
    else:
        monkeypatch.delenv(compat.FORCE_VARIABLE, raising=False)
    compat.reset_paths()
    expected = "private" if request.param == "private" else "fallback (forced)"
    assert compat.path_report()["family_internals"] == expected
    disable_created_metrics()
    yield
    enable_created_metrics()
    monkeypatch.delenv(compat.FORCE_VARIABLE, raising=False)
    compat.reset_paths()


def test_text_format_has_the_same_samples() -> None:
    registry, metrics = _filled()
    fast = TaskExposition(metrics.families).render(openmetrics=False).decode()
    slow = generate_latest(registry).decode()
    assert _samples(parse_text(fast)) == _samples(parse_text(slow))
    # Later renders reuse the cached text of unchanged series and follow every change.
    exposition = TaskExposition(metrics.families)
    exposition.render()
    series = metrics.task("a.one", "celery")
    series.received.inc()
    series.runtime["succeeded"].observe(3.0)
    series.queue_wait.observe(0.001)
    again = exposition.render().decode()
    assert _samples(parse_text(again)) == _samples(parse_text(generate_latest(registry).decode()))
    assert ("celery_task_received_total", (("name", "a.one"), ("queue_name", "celery"),
            ("team", "core")), 4.0) in _samples(parse_text(again))  # fmt: skip


def test_openmetrics_with_the_rest_of_the_registry() -> None:
    _, metrics = _filled()
    rest = CollectorRegistry()
    Gauge("celery_worker_pool_size", "Pool size.", registry=rest).set(4)
    render = make_renderer(TaskExposition(metrics.families), rest)
    body, content_type = render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    text = body.decode()
    assert text.endswith("# EOF\n") and text.count("# EOF") == 1
    both = CollectorRegistry()
    for metric in metrics.collectors:
        both.register(metric)
    Gauge("celery_worker_pool_size", "Pool size.", registry=both).set(4)
    assert _samples(parse_om(text)) == _samples(parse_om(generate_openmetrics(both).decode()))
    body, content_type = render("text/plain")
    assert content_type.startswith("text/plain")
    assert math.isclose(
        sum(v for n, _, v in _samples(parse_text(body.decode())) if n == "celery_worker_pool_size"),
        4,
    )
