"""The fast renderer gives exactly the samples prometheus_client's own exposition gives."""

from __future__ import annotations

import contextlib
import math
import random
import threading

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
        series.observe_runtime["succeeded"](0.02)
        series.observe_runtime["failed"](7.5)
        series.observe_runtime["failed"](1e-7)
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
    series.observe_runtime["succeeded"](3.0)
    series.queue_wait.observe(0.001)
    again = exposition.render().decode()
    assert _samples(parse_text(again)) == _samples(parse_text(generate_latest(registry).decode()))
    assert ("celery_task_received_total", (("name", "a.one"), ("queue_name", "celery"),
            ("team", "core")), 4.0) in _samples(parse_text(again))  # fmt: skip


def test_every_render_follows_every_change() -> None:
    """Random changes between renders (counts, sums, NaN, infinities, new children:
    a lazily created runtime state, a new exception, a new task; children removed and
    built again), each render compared with prometheus_client's own exposition of the
    same registry."""
    registry, metrics = _filled()
    exposition = TaskExposition(metrics.families)
    rng = random.Random(7)
    names = ["a.one", "b.two", 'odd "name"\nwith \\ and ✓']
    for step in range(120):
        name = rng.choice(names)
        series = metrics.task(name, rng.choice(["celery", "other-queue"]))
        action = rng.randrange(10)
        if action == 0:
            series.received.inc(rng.choice([1, 2.5, 1e9]))
        elif action == 1:
            series.observe_runtime[rng.choice(sorted(series.observe_runtime))](
                rng.choice([0.0, 1e-7, 0.3, 42.0, 1e6])
            )
        elif action == 2:
            series.queue_wait.observe(rng.uniform(0, 4000))
        elif action == 3:
            series.failed(rng.choice(["ValueError", "KeyError", f"E{step % 5}"])).inc()
        elif action == 4:
            series.time_limit[rng.choice(["soft", "hard"])].inc()
        elif action == 5:
            names.append(f"new.task{step}")
        elif action == 6:
            metrics.last_success.labels(name, "core").set(
                rng.choice([math.nan, math.inf, 1.5e9, 0.0, -0.0])
            )
        elif action == 7:
            # prometheus_client 0.20 raises KeyError for a child it does not have.
            with contextlib.suppress(KeyError):
                metrics.failed.remove(name, series.queue, rng.choice(["ValueError", "E1"]), "core")
        elif action == 8:
            metrics.last_success.clear()
        if rng.random() < 0.3 or step % 40 == 0:
            fast = exposition.render().decode()
            slow = generate_latest(registry).decode()
            # repr: NaN is not equal to itself, "nan" is.
            assert [(n, labels, repr(v)) for n, labels, v in _samples(parse_text(fast))] == [
                (n, labels, repr(v)) for n, labels, v in _samples(parse_text(slow))
            ], step


def test_renders_while_threads_count_are_exact() -> None:
    """Four threads count and observe on shared series while another renders without
    pause: every render parses, and the last one equals the counts and prometheus_client's
    own exposition."""
    registry, metrics = _filled()
    exposition = TaskExposition(metrics.families)
    per_thread, threads = 5000, 4
    names = [f"t.{i}" for i in range(threads)]
    done = threading.Event()
    renders = []

    def work(index: int) -> None:
        for i in range(per_thread):
            series = metrics.task(names[(index + i) % threads], "celery")
            series.inc_received()
            series.observe_runtime["succeeded"](0.001 * (i % 7))

    def render() -> None:
        while not done.is_set():
            renders.append(len(list(parse_text(exposition.render().decode()))))

    renderer = threading.Thread(target=render)
    renderer.start()
    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    done.set()
    renderer.join()
    fast = _samples(parse_text(exposition.render().decode()))
    assert fast == _samples(parse_text(generate_latest(registry).decode()))
    received = [v for n, labels, v in fast if n == "celery_task_received_total"
                and dict(labels)["name"] in names]  # fmt: skip
    counts = [v for n, labels, v in fast if n == "celery_task_runtime_seconds_count"
              and dict(labels)["name"] in names]  # fmt: skip
    assert received == [per_thread * threads / len(names)] * len(names)
    assert sum(counts) == per_thread * threads
    assert len(renders) > 1


def test_children_removed_while_others_are_built() -> None:
    """One thread clears a gauge and removes failure series while another builds new
    ones: the render always shows exactly prometheus_client's children."""
    registry, metrics = _filled()
    exposition = TaskExposition(metrics.families)
    stop = threading.Event()

    def remove() -> None:
        while not stop.is_set():
            metrics.last_success.clear()
            with contextlib.suppress(KeyError):  # absent (prometheus_client 0.20 raises)
                metrics.failed.remove("a.one", "celery", "E1", "core")

    remover = threading.Thread(target=remove)
    remover.start()
    try:
        for i in range(3000):
            metrics.last_success.labels(f"n{i % 50}", "core").set(i)
            metrics.failed_child(metrics.task("a.one", "celery"), "E1").inc()
            if i % 100 == 0:
                exposition.render()
    finally:
        stop.set()
        remover.join()
    for i in range(50):
        metrics.last_success.labels(f"n{i}", "core").set(i)
    fast = _samples(parse_text(exposition.render().decode()))
    assert fast == _samples(parse_text(generate_latest(registry).decode()))
    assert len([n for n, _, _ in fast if n == "celery_task_last_success_timestamp_seconds"]) == 50


def test_openmetrics_with_the_rest_of_the_registry() -> None:
    _, metrics = _filled()
    rest = CollectorRegistry()
    Gauge("celery_worker_pool_size", "Pool size.", registry=rest).set(4)
    render = make_renderer(TaskExposition(metrics.families), rest)
    body, content_type = render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert isinstance(body, list)  # written to the socket part by part
    text = b"".join(body).decode()
    assert text.endswith("# EOF\n") and text.count("# EOF") == 1
    both = CollectorRegistry()
    for metric in metrics.collectors:
        both.register(metric)
    Gauge("celery_worker_pool_size", "Pool size.", registry=both).set(4)
    assert _samples(parse_om(text)) == _samples(parse_om(generate_openmetrics(both).decode()))
    body, content_type = render("text/plain")
    assert content_type.startswith("text/plain")
    assert isinstance(body, list)
    plain = b"".join(body).decode()
    assert math.isclose(
        sum(v for n, _, v in _samples(parse_text(plain)) if n == "celery_worker_pool_size"), 4
    )
    # Nothing changed: the task metrics' parts are the very objects of the last render
    # (the exporter's gzip cache compares them by identity first), the rest's is new.
    again, _ = render("text/plain")
    assert isinstance(again, list) and len(again) == len(body)
    assert all(a is b for a, b in zip(again[:-1], body[:-1], strict=True))
    assert b"".join(again).decode() == plain
