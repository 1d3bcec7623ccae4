"""Every version-specific path of compat.py, private and forced fallback, on real workers."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from typing import Any

import pytest
import redis
from celery import Celery

from csuite_async_obs import ConfigError, compat
from csuite_async_obs.metrics.catalog import METRICS
from csuite_async_obs.queue_depth.declare_reader import VIRTUAL_ABSENT, DeclareReader
from csuite_async_obs.queue_depth.readers import open_reader
from csuite_async_obs.queue_depth.reading import CONSUMERS
from csuite_async_obs.queue_depth.redis_reader import RedisReader

from . import worker_tasks as t
from .support import wait_for

FORCE = {"CSUITE_COMPAT_FALLBACKS": "all"}
MODES = [pytest.param({}, id="private"), pytest.param(FORCE, id="fallbacks")]


@pytest.fixture()
def forced(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Set CSUITE_COMPAT_FALLBACKS in this process and probe again (undone after)."""

    def force(value: str | None) -> dict[str, str]:
        if value is None:
            monkeypatch.delenv(compat.FORCE_VARIABLE, raising=False)
        else:
            monkeypatch.setenv(compat.FORCE_VARIABLE, value)
        compat.reset_paths()
        return compat.path_report()

    yield force
    monkeypatch.delenv(compat.FORCE_VARIABLE, raising=False)
    compat.reset_paths()


def test_every_shim_is_probed_and_can_be_forced(forced: Any) -> None:
    paths = forced(None)
    assert set(paths) == set(compat.SHIMS)
    assert set(paths.values()) <= {"private", "fallback"}
    # prometheus_client's internals and Celery's revocation hook exist on every
    # supported version; only scheduled_requests is new (Celery 5.7).
    for name in ("counter_value", "histogram_internals", "family_internals", "value_class",
                 "announce_revoked", "cancel_flags", "redis_channel", "find_app_frame",
                 "rpc_consumer_states"):  # fmt: skip
        assert paths[name] == "private", name
    import celery

    expected = "private" if celery.VERSION >= (5, 7) else "fallback"
    assert paths["scheduled_requests"] == expected
    assert set(forced("all").values()) == {"fallback (forced)"}
    some = forced("counter_value,redis_channel")
    assert some["counter_value"] == some["redis_channel"] == "fallback (forced)"
    assert some["histogram_internals"] == "private"
    with pytest.raises(ConfigError, match="CSUITE_COMPAT_FALLBACKS='nonsense'"):
        forced("nonsense")


def test_every_shim_documents_its_versions_and_fallback() -> None:
    for shim in compat.SHIMS.values():
        assert shim.checked and shim.private and shim.fallback, shim.name
        assert shim.library in ("celery", "kombu", "prometheus_client", "redis", "billiard")
    for behaviour in compat.BEHAVIOURS:
        assert behaviour.versions and behaviour.handled, behaviour.name


@pytest.mark.parametrize("env", MODES)
def test_every_promised_series_exists_before_the_first_task(workers: Any, env: Any) -> None:
    worker = workers(pool="prefork", concurrency=2, env=env)

    def polled() -> Any:
        s = worker.scrape()
        return s if s.value("celery_queue_length_last_success_timestamp_seconds") else None

    s = wait_for(polled, 30, message="a first queue-depth poll")
    # Redis has no consumer registry; kombu's fallback (a passive declare on a
    # virtual transport) tells neither ages, consumers nor unacked.
    absent = set(VIRTUAL_ABSENT) if env else {CONSUMERS}
    for spec in METRICS:
        promise = spec.zero_initialised
        if spec.process != "worker" or not promise.startswith(
            ("yes", "0 until", "reported from the first")
        ):
            continue
        name = spec.name + ("_count" if spec.type == "histogram" else "")
        if spec.name in absent:
            assert not s.find(name), f"{name} served by a reader that cannot tell it"
        else:
            assert s.find(name), f"{spec.name} is promised from start ({promise}) but absent"
    with urllib.request.urlopen(worker.url + "/healthz", timeout=5) as response:
        health = json.load(response)
    assert sorted(health["queue_depth_absent_metrics"]) == sorted(absent)
    # The worker said once which paths it took.
    log = worker.log()
    assert log.count("compat_paths") == 1
    if env:
        assert "queue_depth_metrics_absent" in log


@pytest.mark.parametrize("env", MODES)
def test_prefetched_counts_reserved_and_eta_requests(workers: Any, env: Any) -> None:
    # Not solo: a solo worker runs the task on the thread that fetches messages.
    worker = workers(pool="threads", concurrency=1, env=env)
    blocker = t.sleep.delay(6.0)
    waiting = [t.ok.delay(i) for i in range(2)]
    eta = [t.ok.apply_async(args=(i,), countdown=10) for i in range(3)]

    seen: list[Any] = []

    def counted() -> Any:
        s = worker.scrape()
        pair = (s.value("celery_worker_tasks_active"), s.value("celery_worker_prefetched_tasks"))
        seen.append(pair)
        return pair if pair == (1, 5) else None

    # Ground truth while the blocker runs: one running, two reserved behind it,
    # three held back until their ETA.
    try:
        wait_for(counted, 5, message="1 active and 5 prefetched")
    except TimeoutError:
        pytest.fail(f"(active, prefetched) seen: {sorted(set(seen))}")
    for result in [blocker, *waiting, *eta]:
        result.get(timeout=30)

    def drained() -> Any:
        s = worker.scrape()
        return s.value("celery_worker_prefetched_tasks") == 0 and s

    s = wait_for(drained, 20, message="prefetched back to 0")
    assert s.sum("csuite_async_obs_instrumentation_errors_total") == 0
    assert s.value("celery_task_succeeded_total", name="tests.ok", queue_name="celery") == 5


def test_redis_reader_fallback_is_exact_for_lengths(
    forced: Any, redis_server: Any, redis_client: redis.Redis
) -> None:
    app = Celery("compat-depth", broker=f"{redis_server.url}/0", set_as_current=False)
    with app.connection_for_write() as conn:
        producer = conn.Producer()
        for priority in (0, 3, 9, 9):
            producer.publish({"n": priority}, routing_key="cq.full", exchange="", declare=[],
                             retry=False, priority=priority)  # fmt: skip
    redis_client.set("cq.wrong", "not a list")
    queues = ["cq.full", "cq.empty", "cq.wrong"]
    forced(None)
    private = open_reader(app, timeout=5.0)
    forced("redis_channel")
    fallback = open_reader(app, timeout=5.0)
    try:
        assert isinstance(private, RedisReader) and isinstance(fallback, DeclareReader)
        first, second = private.read(queues), fallback.read(queues)
        assert dict(first.lengths) == dict(second.lengths) == {"cq.full": 4, "cq.empty": 0}
        assert dict(first.unacked) == {"cq.full": 0, "cq.empty": 0}
        assert first.absent == (CONSUMERS,)
        assert dict(second.unacked) == {} and second.absent == VIRTUAL_ABSENT
        # A key that is not a list is a queue neither can read: unknown, never 0.
        assert second.unknown == first.unknown == ("cq.wrong",)
    finally:
        private.close()
        fallback.close()
        app.close()


def test_private_and_fallback_hot_paths_agree(forced: Any) -> None:
    from prometheus_client import CollectorRegistry

    from csuite_async_obs.config.options import ObsSettings
    from csuite_async_obs.metrics.task_metrics import TaskMetrics

    amounts = [0.0, 0.005, 0.0051, 1.0, 7.5, 3600.0, float("inf"), -1.0, float("nan")]
    results = []
    for mode in (None, "all"):
        forced(mode)
        registry = CollectorRegistry()
        series = TaskMetrics(registry, ObsSettings()).task("a", "q")
        for amount in amounts:
            series.observe_wait(amount)
            series.inc_received()
        samples = sorted(
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for family in registry.collect()
            for s in family.samples
            if s.name.startswith(("celery_task_queue_wait", "celery_task_received"))
            and not s.name.endswith("_created")
        )
        results.append(samples)
    private, fallback = results
    assert [(n, labels) for n, labels, _ in private] == [(n, labels) for n, labels, _ in fallback]
    for (_, _, a), (_, _, b) in zip(private, fallback, strict=True):
        assert a == b or (a != a and b != b)  # the sum is NaN on both paths


def test_value_class_is_swapped_for_the_building_thread_only(forced: Any) -> None:
    """A metric another thread builds while a package child is built keeps the value
    class prometheus_client chose, and the package's values land in its store."""
    from prometheus_client import CollectorRegistry, Counter, values

    from csuite_async_obs.config.options import ObsSettings
    from csuite_async_obs.metrics.task_metrics import TaskMetrics
    from csuite_async_obs.metrics.value_store import SlotValue

    assert forced(None)["value_store"] == "private"
    foreign = Counter("foreign", "built by another thread", ["l"], registry=CollectorRegistry())
    built: list[Any] = []

    def build_foreign() -> None:
        built.append(foreign.labels("x"))

    def init_building_another() -> None:
        thread = threading.Thread(target=build_foreign)
        thread.start()
        thread.join()

    compat.in_memory_values(init_building_another, lambda *a, **k: pytest.fail("not this thread"))
    assert type(built[0]._value) is values.ValueClass
    metrics = TaskMetrics(CollectorRegistry(), ObsSettings())
    series = metrics.task("a", "q")
    assert isinstance(series.received._value, SlotValue)
    series.received.inc(2)
    series.inc_received()
    # One class per kind for every TaskMetrics: a class per metric (thousands in a process
    # with many) made each first isinstance() against prometheus_client's ABCs walk them.
    kinds = {type(f.metric) for f in metrics.families}
    assert kinds == {type(metrics.received), type(metrics.runtime), type(metrics.last_success)}
    again = TaskMetrics(CollectorRegistry(), ObsSettings())
    assert {type(f.metric) for f in again.families} == kinds
    store = next(f.store for f in metrics.families if f.metric is metrics.received)
    assert store is not None and store.items() == [(("a", "q"), [3.0])]
    # Label values are keyed as prometheus_client keys them (str), on the hot path too.
    metrics.task("b", 5).inc_received()  # type: ignore[arg-type]
    assert store.items()[-1] == (("b", "5"), [1.0])
    # A probe's swap waiting for the lock restores the class it finds under the lock,
    # never the swap of the thread it waited for.
    original = values.ValueClass
    inside, release = threading.Event(), threading.Event()

    def held() -> None:
        inside.set()
        release.wait(5)

    holder = threading.Thread(target=compat.in_memory_values, args=(held, SlotValue))
    holder.start()
    inside.wait(5)
    prober = threading.Thread(target=compat._memory_metric, args=(lambda: None,))
    prober.start()
    time.sleep(0.2)
    release.set()
    holder.join()
    prober.join()
    assert values.ValueClass is original
    # Forced off, the package's metrics keep prometheus_client's own values.
    forced("value_store")
    plain = TaskMetrics(CollectorRegistry(), ObsSettings())
    assert all(f.store is None for f in plain.families)
    assert type(plain.task("a", "q").received._value) is values.MutexValue
