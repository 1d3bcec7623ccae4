"""Queue depth equals the broker's truth: real redis-server, Celery's own publishing, real workers.

Every expected number is the count of messages this test published (or took),
checked against raw Redis where the layout matters (priority sub-lists, key
prefix), never "> 0".
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Exchange, Queue
from prometheus_client import CollectorRegistry, generate_latest

from csuite_async_obs import (
    CelerySettings,
    ObsSettings,
    create_celery_app,
    get_celery_app,
    wait_for_task,
)
from csuite_async_obs.http.server import Exporter
from csuite_async_obs.instrumentation.instrument import instrumentation_for
from csuite_async_obs.protocol import PUBLISHED_AT_HEADER
from csuite_async_obs.queue_depth.poller import QueueDepthPoller, start_queue_depth
from csuite_async_obs.queue_depth.readers import open_reader
from csuite_async_obs.queue_depth.reading import CONSUMERS, UNACKED, BrokerReader, Reading
from csuite_async_obs.queue_depth.redis_reader import UNACKED_LIMIT
from csuite_async_obs.queue_depth.selection import QueueSelection
from csuite_async_obs.queue_depth.standalone import run_standalone_exporter
from csuite_async_obs.servers.redis_server import RedisServer
from csuite_async_obs.testing import Samples, sample_value, scrape

from . import worker_tasks as t
from .support import ROOT, http_status, wait_for

SEP = "\x06\x16"  # kombu's default priority separator
# Celery's priority argument -> kombu's step (bisect into [0, 3, 6, 9]; 255 clamps to 9).
PRIORITIES = {None: 0, 0: 0, 1: 0, 2: 0, 3: 3, 4: 3, 5: 3, 6: 6, 7: 6, 8: 6, 9: 9, 255: 9}


# --------------------------------------------------------------------------- helpers


@pytest.fixture()
def pollers() -> Iterator[Callable[..., QueueDepthPoller]]:
    """Builds pollers and stops every one of them at the end of the test."""
    made: list[QueueDepthPoller] = []

    def make(app: Celery, queues: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
             limit: int = 1000, **kwargs: Any) -> QueueDepthPoller:  # fmt: skip
        kwargs.setdefault("timeout", 10.0)  # generous: two busy cores
        poller = QueueDepthPoller(app, QueueSelection.build(app, queues, exclude, limit), **kwargs)
        made.append(poller)
        return poller

    yield make
    for poller in made:
        poller.stop()


def _poll(poller: QueueDepthPoller) -> Reading:
    assert poller.poll_once(), poller.state.last_error
    reading = poller.state.reading
    assert reading is not None
    return reading


def _publish(queue: str, priorities: list[int | None], app: Celery | None = None) -> None:
    for i, priority in enumerate(priorities):
        options: dict[str, Any] = {"queue": queue}
        if priority is not None:
            options["priority"] = priority
        if app is None:
            t.ok.apply_async(args=(i,), **options)
        else:
            app.send_task("tests.ok", args=(i,), **options)


def _sub_lengths(client: redis.Redis, queue: str, prefix: str = "") -> dict[int, int]:
    """Raw LLEN of each of kombu's default priority sub-lists (ground truth)."""
    return {
        step: int(client.llen(prefix + (f"{queue}{SEP}{step}" if step else queue)))
        for step in (0, 3, 6, 9)
    }


def _expected_steps(priorities: list[int | None]) -> dict[int, int]:
    steps = dict.fromkeys((0, 3, 6, 9), 0)
    for priority in priorities:
        steps[PRIORITIES[priority]] += 1
    return steps


@pytest.fixture()
def own_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lets an app use its own broker: Celery prefers CELERY_BROKER_URL over its config."""
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)


def _own_app(broker: str, backend: str, **conf: Any) -> Celery:
    app = create_celery_app(CelerySettings(broker_url=broker, result_backend=backend))
    app.conf.update(conf)
    return app


def _drop_app(app: Celery) -> None:
    instrumentation = instrumentation_for(app)
    if instrumentation is not None:
        instrumentation.disconnect_signals()
    app.close()


class StandaloneThread:
    """run_standalone_exporter on a thread, stopped through its stop event."""

    def __init__(self, app: Celery, settings: ObsSettings) -> None:
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.exporter: Exporter | None = None
        self.poller: QueueDepthPoller | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(app, settings), daemon=True)

    def _run(self, app: Celery, settings: ObsSettings) -> None:
        def on_ready(exporter: Exporter, poller: QueueDepthPoller) -> None:
            self.exporter, self.poller = exporter, poller
            self.ready.set()

        try:
            run_standalone_exporter(app, settings, port=0, addr="127.0.0.1",
                                    stop_event=self.stop_event, on_ready=on_ready)  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 -- reported by start()
            self.error = exc
            self.ready.set()

    def start(self) -> StandaloneThread:
        self.thread.start()
        assert self.ready.wait(30), "standalone exporter did not start"
        assert self.error is None, self.error
        return self

    @property
    def url(self) -> str:
        assert self.exporter is not None
        return f"http://127.0.0.1:{self.exporter.port}"

    def scrape(self) -> Samples:
        return scrape(self.url + "/metrics")

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "standalone exporter did not stop"


def _queue_threads() -> list[str]:
    return [th.name for th in threading.enumerate() if th.name.startswith("csuite-queue-depth")]


# --------------------------------------------------------------------------- exact totals


MIXED: list[int | None] = [None, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 255, 9, 0, 5]


def test_lengths_are_exact_over_priority_sub_queues(
    redis_client: redis.Redis, pollers: Callable[..., QueueDepthPoller]
) -> None:
    app = get_celery_app()
    _publish("qd.mixed", MIXED)
    _publish("qd.single", [None] * 4)
    _publish("qd.low", [9, 9, 9])
    _publish("qd.emptied", [0, 9])
    with app.connection_for_write() as conn:
        assert conn.default_channel.queue_purge("qd.emptied") == 2
    # Ground truth: the messages really sit in several sub-lists.
    assert _sub_lengths(redis_client, "qd.mixed") == _expected_steps(MIXED)
    assert _sub_lengths(redis_client, "qd.low") == {0: 0, 3: 0, 6: 0, 9: 3}

    poller = pollers(app, ("qd.mixed", "qd.single", "qd.low", "qd.emptied", "qd.never"))
    registry = CollectorRegistry()
    poller.attach(registry, (("team", "obs"),))
    reading = _poll(poller)

    expected = {"celery": 0, "qd.mixed": len(MIXED), "qd.single": 4, "qd.low": 3,
                "qd.emptied": 0, "qd.never": 0}  # fmt: skip
    assert dict(reading.lengths) == expected
    assert reading.unknown == ()
    assert dict(reading.unacked) == dict.fromkeys(expected, 0)
    assert reading.absent == (CONSUMERS,)
    assert reading.round_trips == 1
    for queue, count in expected.items():
        labels = {"queue_name": queue, "team": "obs"}
        assert sample_value(registry, "celery_queue_length", **labels) == count
        assert sample_value(registry, "celery_queue_unacked_messages", **labels) == 0
    for queue in ("celery", "qd.emptied", "qd.never"):
        labels = {"queue_name": queue, "team": "obs"}
        assert sample_value(registry, "celery_queue_oldest_message_age_seconds", **labels) == 0.0
    assert sample_value(registry, "celery_queue_length_poll_errors_total", team="obs") == 0
    assert (
        sample_value(registry, "celery_queue_length_last_success_timestamp_seconds", team="obs")
        == poller.state.last_success
    )


def test_unacked_counts_messages_taken_and_not_acknowledged(
    redis_client: redis.Redis, pollers: Callable[..., QueueDepthPoller]
) -> None:
    app = get_celery_app()
    _publish("qd.unacked", [0, 0, 3, 9, 9])
    _publish("qd.unacked.b", [0, 9])
    poller = pollers(app, ("qd.unacked", "qd.unacked.b"))
    registry = CollectorRegistry()
    poller.attach(registry)
    none = {"celery": 0, "qd.unacked": 0, "qd.unacked.b": 0}
    assert dict(_poll(poller).unacked) == none

    conn, other = app.connection_for_read(), app.connection_for_read()
    try:
        simple = conn.SimpleQueue("qd.unacked")
        taken = [simple.get(timeout=10) for _ in range(2)]
        other.SimpleQueue("qd.unacked.b").get(timeout=10)
        assert redis_client.hlen("unacked") == 3  # ground truth: one hash for all queues
        reading = _poll(poller)
        assert dict(reading.lengths) == {"celery": 0, "qd.unacked": 3, "qd.unacked.b": 1}
        assert dict(reading.unacked) == {"celery": 0, "qd.unacked": 2, "qd.unacked.b": 1}
        for queue, count in reading.unacked.items():
            assert sample_value(registry, "celery_queue_unacked_messages",
                                queue_name=queue) == count  # fmt: skip
        taken[0].ack()
        reading = _poll(poller)
        assert reading.lengths["qd.unacked"] == 3
        assert dict(reading.unacked) == {"celery": 0, "qd.unacked": 1, "qd.unacked.b": 1}
        simple.close()
    finally:
        conn.release()  # closing the channel restores the message never acknowledged
        other.release()
    reading = _poll(poller)
    assert dict(reading.lengths) == {"celery": 0, "qd.unacked": 4, "qd.unacked.b": 2}
    assert dict(reading.unacked) == none


def _wait_all(ids: list[str], timeout: float = 90.0) -> None:
    for task_id in ids:
        status = wait_for_task(task_id, timeout=timeout)
        assert status is not None and not status["timed_out"], status


def test_reading_follows_a_worker_draining_its_queue(
    workers: Any, redis_client: redis.Redis, pollers: Callable[..., QueueDepthPoller]
) -> None:
    app = get_celery_app()
    drain = [0, 3, 6, 9, None, 5]
    keep = [0, 9, 9, 4]
    ids = [t.ok.apply_async(args=(i,), queue="qd.drain", priority=p or 0).id
           for i, p in enumerate(drain)]  # fmt: skip
    _publish("qd.keep", keep)
    poller = pollers(app, ("qd.drain", "qd.keep"))
    reading = _poll(poller)
    assert {q: reading.lengths[q] for q in ("qd.drain", "qd.keep")} == {
        "qd.drain": len(drain), "qd.keep": len(keep)}  # fmt: skip

    workers(args=("-Q", "qd.drain"))
    _wait_all(ids)

    def drained() -> Reading | None:
        r = _poll(poller)
        return r if r.lengths["qd.drain"] == 0 and r.unacked["qd.drain"] == 0 else None

    reading = wait_for(drained, 60, message="the worker's queue to drain")
    assert {q: reading.lengths[q] for q in ("qd.drain", "qd.keep")} == {
        "qd.drain": 0, "qd.keep": len(keep)}  # fmt: skip
    assert _sub_lengths(redis_client, "qd.keep") == _expected_steps(list(keep))
    assert dict(reading.unacked) == {"celery": 0, "qd.drain": 0, "qd.keep": 0}

    # The worker's own control queues (pidbox, replies) are per process, not backlogs:
    # a catch-all glob does not pick them up.
    assert redis_client.exists("_kombu.binding.celery.pidbox") == 1
    everything = _poll(pollers(app, ("*",)))
    assert dict(everything.lengths) == {"celery": 0, "qd.drain": 0, "qd.keep": len(keep)}


# --------------------------------------------------------------------------- oldest message age


def test_oldest_message_age_against_its_publish_time(
    redis_client: redis.Redis, pollers: Callable[..., QueueDepthPoller]
) -> None:
    app = get_celery_app()
    before = time.time()
    _publish("qd.age", [9])  # lowest priority: served last, and the oldest
    after = time.time()
    wait_for(lambda: time.time() >= after + 1.5, 10, message="1.5 s to pass")
    _publish("qd.age", [0, 0, 3])
    # A message published without this package has no timestamp header.
    with app.connection_for_write() as conn:
        conn.Producer().publish({"raw": True}, routing_key="qd.raw", exchange="",
                                declare=[], retry=False)  # fmt: skip

    raw = redis_client.lindex(f"qd.age{SEP}9", -1)
    assert raw is not None
    published = json.loads(raw)["headers"][PUBLISHED_AT_HEADER]
    assert before <= published <= after

    poller = pollers(app, ("qd.age", "qd.raw"))
    registry = CollectorRegistry()
    poller.attach(registry)
    reading = _poll(poller)
    assert reading.lengths["qd.age"] == 4
    assert reading.lengths["qd.raw"] == 1
    assert reading.oldest_published_at["qd.age"] == published
    assert "qd.raw" not in reading.oldest_published_at

    lo = time.time() - published
    age = sample_value(registry, "celery_queue_oldest_message_age_seconds", queue_name="qd.age")
    hi = time.time() - published
    assert age is not None and lo <= age <= hi
    assert age >= 1.5
    # Unknown, not 0: that queue is not empty.
    assert (
        sample_value(registry, "celery_queue_oldest_message_age_seconds", queue_name="qd.raw")
        is None
    )
    assert sample_value(registry, "celery_queue_length", queue_name="qd.raw") == 1


# --------------------------------------------------------------------------- queue selection


def test_globs_exclusions_and_the_bound(
    redis_client: redis.Redis, pollers: Callable[..., QueueDepthPoller]
) -> None:
    app = get_celery_app()
    _publish("qd.g.a", [0, 3])
    _publish("qd.g.b", [9])
    _publish("qd.g.skip", [0])
    _publish("other", [0])

    reading = _poll(pollers(app, ("qd.g.*", "named"), ("*.skip",)))
    assert dict(reading.lengths) == {"celery": 0, "named": 0, "qd.g.a": 2, "qd.g.b": 1}

    bounded = pollers(app, ("qd.g.*", "named"), ("*.skip",), limit=3)
    reading = _poll(bounded)
    assert dict(reading.lengths) == {"celery": 0, "named": 0, "qd.g.a": 2}
    assert bounded.state.dropped == 1

    consumed = pollers(app, (), ("celery",), consumed=lambda: ["qd.g.b"])
    assert dict(_poll(consumed).lengths) == {"qd.g.b": 1}


def test_global_keyprefix_is_honoured(
    redis_server: RedisServer, redis_client: redis.Redis, pollers: Callable[..., QueueDepthPoller]
) -> None:
    app = _own_app(f"{redis_server.url}/0", f"{redis_server.url}/1")
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options, "global_keyprefix": "pfx:"}  # fmt: skip
    try:
        _publish("qd.pfx", MIXED, app)
        assert redis_client.exists("qd.pfx") == 0
        assert _sub_lengths(redis_client, "qd.pfx", "pfx:") == _expected_steps(MIXED)

        poller = pollers(app, ("qd.pf*", "qd.none"))
        reading = _poll(poller)
        assert dict(reading.lengths) == {"celery": 0, "qd.none": 0, "qd.pfx": len(MIXED)}
        assert reading.oldest_published_at.keys() == {"qd.pfx"}

        # A queue bound to an exchange of its own: its unacked message is found
        # through the binding table, which is under the prefix too.
        direct = Queue("qd.pfx.direct", Exchange("qd.pfx.ex", type="direct"), routing_key="pk")
        conn, other = app.connection_for_read(), app.connection_for_read()
        try:
            with app.connection_for_write() as wconn:
                wconn.Producer().publish({"n": 1}, exchange=direct.exchange, routing_key="pk",
                                         declare=[direct], retry=False)  # fmt: skip
            assert redis_client.exists("pfx:_kombu.binding.qd.pfx.ex") == 1
            message = conn.SimpleQueue("qd.pfx").get(timeout=10)
            routed = other.SimpleQueue(direct).get(timeout=10)
            assert redis_client.hlen("pfx:unacked") == 2
            assert redis_client.exists("unacked") == 0
            reading = _poll(poller)
            assert reading.lengths["qd.pfx"] == len(MIXED) - 1
            assert dict(reading.unacked) == {"celery": 0, "qd.none": 0, "qd.pfx": 1}
            assert dict(_poll(pollers(app, ("qd.pfx.direct",))).unacked) == {
                "celery": 0, "qd.pfx.direct": 1}  # fmt: skip
            message.ack()
            routed.ack()
        finally:
            conn.release()
            other.release()
    finally:
        _drop_app(app)


# --------------------------------------------------------------------------- round trips


def test_200_queues_are_read_in_one_round_trip(
    redis_client: redis.Redis, pollers: Callable[..., QueueDepthPoller], monkeypatch: Any
) -> None:
    app = get_celery_app()
    names = [f"qd.rt.{i:03d}" for i in range(200)]
    expected: dict[str, int] = {}
    with app.producer_or_acquire() as producer:
        for i, name in enumerate(names):
            priorities = [0, 3, 6, 9][: i % 5]  # 0 to 4 messages, one per sub-list
            for priority in priorities:
                t.ok.apply_async(args=(i,), queue=name, priority=priority, producer=producer)
            expected[name] = len(priorities)
    expected["celery"] = 0

    poller = pollers(app, tuple(names))
    _poll(poller)  # connects; the handshake is not part of a poll

    # Ground truth on the wire: every request batch redis-py writes to a socket.
    sent: list[int] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        original(self, command, check_health)

    redis_client.config_resetstat()
    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    reading = _poll(poller)
    monkeypatch.undo()
    stats = redis_client.info("commandstats")

    assert dict(reading.lengths) == expected
    assert reading.round_trips == 1
    assert len(sent) == 1
    # ...and the server ran the whole poll as one script: 201 queues x 4 sub-lists,
    # the tail of each non-empty one, and the unacked hash (empty: no table read).
    non_empty = sum(min(i % 5, 4) for i in range(200))
    assert stats["cmdstat_evalsha"]["calls"] == 1
    assert stats["cmdstat_llen"]["calls"] == 201 * 4
    assert stats["cmdstat_lindex"]["calls"] == non_empty
    assert stats["cmdstat_hlen"]["calls"] == 1
    assert stats["cmdstat_hvals"]["calls"] == 1
    assert "cmdstat_multi" not in stats
    assert "cmdstat_scan" not in stats
    print(f"\n200 queues: {reading.round_trips} round trip, poll {reading.duration * 1000:.1f} ms")


def _ground_truth(
    client: redis.Redis, queues: list[str]
) -> tuple[dict[str, int], dict[str, float], list[str]]:
    """Lengths, oldest publish stamps and non-list queues, read key by key and parsed in Python."""
    lengths: dict[str, int] = {}
    oldest: dict[str, float] = {}
    unknown: list[str] = []
    for name in queues:
        keys = [f"{name}{SEP}{step}" if step else name for step in (0, 3, 6, 9)]
        if any(client.type(k) not in (b"list", b"none") for k in keys):
            unknown.append(name)
            continue
        stamps = []
        for key in keys:
            tail = client.lindex(key, -1)
            if tail is not None:
                value = json.loads(tail)["headers"].get(PUBLISHED_AT_HEADER)
                stamps.append(value if isinstance(value, float | int) else None)
        lengths[name] = sum(int(client.llen(k)) for k in keys)
        if stamps and None not in stamps:
            oldest[name] = min(s for s in stamps if s is not None)
    return lengths, oldest, unknown


@pytest.mark.usefixtures("own_broker")
def test_script_and_pipeline_read_the_same_truth(
    redis_server: RedisServer, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The Lua poll, and the pipeline used where scripting is refused, equal a key-by-key read."""
    url = f"{redis_server.url}/0"
    redis_client.acl_setuser("noscript", enabled=True, passwords=["+pw"], keys=["*"],
                             channels=["*"], commands=["+@all", "-@scripting"])  # fmt: skip
    app = _own_app(url, f"{redis_server.url}/1")
    host_port = url.split("://", 1)[1]
    restricted = _own_app(f"redis://noscript:pw@{host_port}", f"{redis_server.url}/1")
    readers: list[BrokerReader] = []
    try:
        _publish("qd.eq.mixed", MIXED, app)
        # The tail of one sub-list has no header: that queue's age is unknown.
        _publish("qd.eq.partly", [0, 3], app)
        with app.connection_for_write() as conn:
            producer = conn.Producer()
            producer.publish({"raw": 1}, routing_key="qd.eq.partly", exchange="", declare=[],
                             retry=False, priority=9)  # fmt: skip
            producer.publish({"raw": 2}, routing_key="qd.eq.raw", exchange="", declare=[],
                             retry=False)  # fmt: skip
            producer.publish({"raw": 3}, routing_key="qd.eq.text", exchange="", declare=[],
                             retry=False, headers={PUBLISHED_AT_HEADER: "12.5"})  # fmt: skip
        # Arguments that spell the header: its quotes are escaped in the stored message.
        app.send_task("tests.ok", args=(f'"{PUBLISHED_AT_HEADER}": 1.0',), queue="qd.eq.decoy")
        redis_client.set("qd.eq.wrong", "not a list")
        queues = ["qd.eq.decoy", "qd.eq.empty", "qd.eq.mixed", "qd.eq.partly", "qd.eq.raw",
                  "qd.eq.text", "qd.eq.wrong"]  # fmt: skip
        conn = app.connection_for_read()
        taken = conn.SimpleQueue("qd.eq.mixed").get(timeout=10)  # unacked from now on
        lengths, oldest, unknown = _ground_truth(redis_client, queues)
        assert unknown == ["qd.eq.wrong"]
        assert oldest.keys() == {"qd.eq.decoy", "qd.eq.mixed"}
        assert oldest["qd.eq.decoy"] != 1.0
        assert lengths["qd.eq.mixed"] == len(MIXED) - 1

        for each in (app, restricted):
            reader = open_reader(each, timeout=10.0)
            readers.append(reader)
            first = reader.read(queues)
            # A server that lost its scripts (restart, SCRIPT FLUSH) costs one
            # more round trip, once.
            redis_client.script_flush()
            second, third = reader.read(queues), reader.read(queues)
            for reading in (first, second, third):
                assert dict(reading.lengths) == lengths
                assert dict(reading.oldest_published_at) == oldest
                assert reading.unknown == tuple(unknown)
                assert dict(reading.unacked) == {q: int(q == "qd.eq.mixed") for q in lengths}
            trips = (first.round_trips, second.round_trips, third.round_trips)
            assert trips == ((1, 2, 1) if each is app else (1, 1, 1))
        assert readers[0]._script_ok is True
        assert readers[1]._script_ok is False
        assert caplog.text.count("queue_depth_script_unavailable") == 1
        taken.ack()
        conn.release()
    finally:
        for reader in readers:
            reader.close()
        redis_client.acl_deluser("noscript")
        _drop_app(app)
        _drop_app(restricted)


@pytest.fixture()
def noscript_app(redis_server: RedisServer, redis_client: redis.Redis) -> Iterator[Celery]:
    """An app on the test broker whose Redis user may not run scripts (the pipeline path)."""
    redis_client.acl_setuser("noscript", enabled=True, passwords=["+pw"], keys=["*"],
                             channels=["*"], commands=["+@all", "-@scripting"])  # fmt: skip
    host_port = redis_server.url.split("://", 1)[1]
    app = _own_app(f"redis://noscript:pw@{host_port}/0", f"{redis_server.url}/1")
    try:
        yield app
    finally:
        redis_client.acl_deluser("noscript")
        _drop_app(app)


ROUTES = Exchange("qd.rt.reports", type="topic")
DIRECT = Exchange("qd.rt.direct", type="direct")
GONE = Exchange("qd.rt.gone", type="direct")
ROUTED_QUEUES = (
    Queue("qd.rt.reports", ROUTES, routing_key="reports.#"),
    Queue("qd.rt.eu", ROUTES, routing_key="reports.*.eu"),
    Queue("qd.rt.jobs", DIRECT, routing_key="jobs"),
    Queue("qd.rt.other", DIRECT, routing_key="other"),
    Queue("qd.rt.gone", GONE, routing_key="gone.key"),
)


@pytest.mark.usefixtures("own_broker")
def test_unacked_go_to_the_queues_kombu_restores_them_to(
    redis_server: RedisServer, redis_client: redis.Redis, noscript_app: Celery
) -> None:
    """Topic, direct and default exchanges; the truth is where kombu restores each message."""
    app = _own_app(f"{redis_server.url}/0", f"{redis_server.url}/1")
    queues = ["qd.rt.reports", "qd.rt.eu", "qd.rt.jobs", "qd.rt.other", "qd.rt.plain",
              "gone.key"]  # fmt: skip
    consumers: list[Any] = []
    readers: list[BrokerReader] = []
    try:
        with app.connection_for_write() as conn:
            producer = conn.Producer()
            for n, key in enumerate(["reports.daily", "reports.daily", "reports.daily.eu"]):
                producer.publish({"n": n}, exchange=ROUTES, routing_key=key,
                                 declare=list(ROUTED_QUEUES), retry=False)  # fmt: skip
            for n in range(3):
                producer.publish({"n": n}, exchange=DIRECT, routing_key="jobs", retry=False)
            producer.publish({"n": 0}, exchange=GONE, routing_key="gone.key", retry=False)
        _publish("qd.rt.plain", [0, 9], app)  # Celery's publishing: the default exchange

        def take(queue: Queue | str, count: int) -> None:
            # A connection per queue: a channel consuming two queues may fetch
            # from either at each get.
            conn = app.connection_for_read()
            consumers.append(conn)
            simple = conn.SimpleQueue(queue)
            for _ in range(count):
                simple.get(timeout=10)

        take(ROUTED_QUEUES[0], 3)  # reports.daily x2 and reports.daily.eu
        take(ROUTED_QUEUES[2], 2)  # 2 of the 3 "jobs"
        take(ROUTED_QUEUES[4], 1)
        take("qd.rt.plain", 1)
        # Its queue deleted after delivery (and with it the binding): kombu would
        # restore it nowhere; it is counted under its routing key.
        with app.connection_for_write() as conn:
            ROUTED_QUEUES[4].bind(conn.default_channel).declare()
            ROUTED_QUEUES[4].bind(conn.default_channel).delete()
        assert redis_client.exists("_kombu.binding.qd.rt.gone") == 0
        assert redis_client.hlen("unacked") == 7  # ground truth
        tails = [json.loads(v)[1:] for v in redis_client.hvals("unacked")]
        assert sorted(map(tuple, tails)) == [
            ("", "qd.rt.plain"), ("qd.rt.direct", "jobs"), ("qd.rt.direct", "jobs"),
            ("qd.rt.gone", "gone.key"), ("qd.rt.reports", "reports.daily"),
            ("qd.rt.reports", "reports.daily"), ("qd.rt.reports", "reports.daily.eu")]  # fmt: skip

        # reports.daily.eu also matches qd.rt.eu's "reports.*.eu": kombu restores
        # a copy there as well, so it counts in both.
        expected = {"qd.rt.reports": 3, "qd.rt.eu": 1, "qd.rt.jobs": 2, "qd.rt.other": 0,
                    "qd.rt.plain": 1, "gone.key": 1}  # fmt: skip
        before = {"qd.rt.reports": 0, "qd.rt.eu": 1, "qd.rt.jobs": 1, "qd.rt.other": 0,
                  "qd.rt.plain": 1, "gone.key": 0}  # fmt: skip
        for each in (app, noscript_app):
            reader = open_reader(each, timeout=10.0)
            readers.append(reader)
            first, second = reader.read(queues), reader.read(queues)
            for reading in (first, second):
                assert dict(reading.lengths) == before
                assert dict(reading.unacked) == expected
                assert reading.absent == (CONSUMERS,)
            # The binding tables are read at the first poll that needs them
            # (one SCAN, one pipeline of SMEMBERS), then kept.
            assert (first.round_trips, second.round_trips) == (3, 1)
        assert [r._script_ok for r in readers] == [True, False]  # type: ignore[attr-defined]

        for conn in consumers:
            conn.release()  # restores every message it never acknowledged
        consumers.clear()
        assert redis_client.hlen("unacked") == 0
        after = readers[0].read(queues)
        restored = {q: after.lengths[q] - before[q] for q in queues}
        assert restored == {**expected, "gone.key": 0}  # kombu found no queue for it
        assert dict(after.unacked) == dict.fromkeys(queues, 0)
    finally:
        for conn in consumers:
            conn.release()
        for reader in readers:
            reader.close()
        _drop_app(app)


@pytest.mark.usefixtures("own_broker")
def test_unacked_above_the_limit_are_unknown_not_wrong(
    redis_server: RedisServer, redis_client: redis.Redis, noscript_app: Celery,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    app = _own_app(f"{redis_server.url}/0", f"{redis_server.url}/1")
    conn = app.connection_for_read()
    readers: list[Any] = []
    try:
        _publish("qd.lim", [0, 0, 9, 9], app)
        simple = conn.SimpleQueue("qd.lim")
        taken = [simple.get(timeout=10) for _ in range(3)]
        queues = ["qd.lim"]
        for each in (app, noscript_app):
            reader = open_reader(each, timeout=10.0)
            readers.append(reader)
            assert reader.unacked_limit == UNACKED_LIMIT == 10_000
            exact = reader.read(queues)
            assert dict(exact.unacked) == {"qd.lim": 3}
            reader.unacked_limit = 2
            for _ in range(2):
                over = reader.read(queues)
                assert dict(over.lengths) == {"qd.lim": 1}
                assert over.oldest_published_at == exact.oldest_published_at
                assert dict(over.unacked) == {}
                assert over.absent == (CONSUMERS, UNACKED)
            reader.unacked_limit = 3
            assert dict(reader.read(queues).unacked) == {"qd.lim": 3}
        # Logged once per reader, not at every poll.
        assert caplog.text.count("queue_depth_unacked_unknown") == 2

        # At the real limit: 10,000 entries (copies of a real one) are counted
        # exactly, 10,001 are unknown.
        raw = redis_client.hget("unacked", taken[0].delivery_tag)
        assert raw is not None
        with redis_client.pipeline(transaction=False) as pipe:
            for i in range(UNACKED_LIMIT - 3):
                pipe.hset("unacked", f"copy-{i}", raw)
            pipe.execute()
        for reader in readers:
            reader.unacked_limit = UNACKED_LIMIT
            at_limit = reader.read(queues)
            assert dict(at_limit.unacked) == {"qd.lim": UNACKED_LIMIT}
            print(f"\n{type(reader).__name__} script={reader._script_ok}: 10,000 unacked, "
                  f"poll {at_limit.duration * 1000:.1f} ms")  # fmt: skip
        redis_client.hset("unacked", "copy-last", raw)
        for reader in readers:
            assert reader.read(queues).absent == (CONSUMERS, UNACKED)
        redis_client.hdel("unacked", *[f"copy-{i}" for i in range(UNACKED_LIMIT - 3)], "copy-last")
        for message in taken:
            message.ack()
    finally:
        for reader in readers:
            reader.close()
        conn.release()
        _drop_app(app)


# --------------------------------------------------------------------------- broker trouble


@pytest.mark.usefixtures("own_broker")
def test_broker_killed_and_restarted_under_the_standalone_exporter() -> None:
    server = RedisServer().start()
    app = _own_app(f"{server.url}/0", f"{server.url}/1")
    interval = 0.5
    settings = ObsSettings(queues=("qd.kill",), queue_poll_interval=interval,
                           queue_poll_timeout=1.0, log_format="json")  # fmt: skip
    exporter: StandaloneThread | None = None
    try:
        _publish("qd.kill", [0, 0, 9], app)
        exporter = StandaloneThread(app, settings).start()
        wait_for(lambda: exporter.scrape().value("celery_queue_length", queue_name="qd.kill") == 3,
                 30, message="the first reading")  # fmt: skip
        wait_for(lambda: http_status(exporter.url + "/healthz") == 200, 30, message="healthy")
        errors_before = exporter.scrape().value("celery_queue_length_poll_errors_total")
        assert errors_before == 0

        server.stop(kill=True)
        down_at = time.monotonic()

        scrape_times: list[float] = []

        def timed_scrape() -> Samples:
            start = time.monotonic()
            samples = exporter.scrape()
            scrape_times.append(time.monotonic() - start)
            return samples

        def errors_risen() -> Samples | None:
            s = timed_scrape()
            errors = s.value("celery_queue_length_poll_errors_total")
            return s if errors is not None and errors >= 3 else None

        samples = wait_for(errors_risen, 30, message="poll errors to rise")
        # Last values kept, frozen: the same success timestamp while down.
        assert samples.value("celery_queue_length", queue_name="qd.kill") == 3
        assert samples.value("celery_queue_length", queue_name="celery") == 0
        frozen = samples.value("celery_queue_length_last_success_timestamp_seconds")
        seen = samples.value("celery_queue_length_poll_errors_total")

        def another_error() -> Samples | None:
            s = timed_scrape()
            return s if s.value("celery_queue_length_poll_errors_total") != seen else None

        later = wait_for(another_error, 30, message="another failed poll")
        assert later.value("celery_queue_length_last_success_timestamp_seconds") == frozen
        assert later.value("celery_queue_length", queue_name="qd.kill") == 3
        wait_for(lambda: http_status(exporter.url + "/healthz") == 503, 30, message="unhealthy")
        assert time.monotonic() - down_at < 30
        # /metrics never waited on the dead broker.
        assert len(scrape_times) >= 2
        assert max(scrape_times) < 1.0, scrape_times

        server = RedisServer(port=server.port).start()  # empty: nothing is persisted
        _publish("qd.kill", [3, 6], app)
        back_at = time.monotonic()
        wait_for(lambda: timed_scrape().value("celery_queue_length", queue_name="qd.kill") == 2,
                 30, message="the reading after the restart")  # fmt: skip
        recovered_in = time.monotonic() - back_at
        assert recovered_in <= 2 * interval, f"recovered in {recovered_in:.2f}s"
        samples = timed_scrape()
        assert samples.value("celery_queue_length_last_success_timestamp_seconds") > frozen  # type: ignore[operator]
        assert max(scrape_times) < 1.0, scrape_times
        wait_for(lambda: http_status(exporter.url + "/healthz") == 200, 30, message="healthy again")
    finally:
        if exporter is not None:
            exporter.close()
        server.stop()
        _drop_app(app)
    assert _queue_threads() == []


@pytest.mark.usefixtures("own_broker")
def test_a_broker_that_never_answers_costs_the_scrape_nothing(
    pollers: Callable[..., QueueDepthPoller],
) -> None:
    # A listening socket nobody accepts on: TCP connects, Redis never replies.
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)
    port = hole.getsockname()[1]
    app = Celery("blackhole", broker=f"redis://127.0.0.1:{port}/0")
    try:
        poller = pollers(app, ("q",), timeout=0.5)
        registry = CollectorRegistry()
        poller.attach(registry)
        start = time.monotonic()
        assert poller.poll_once() is False
        assert time.monotonic() - start < 2.0
        assert poller.state.errors == 1

        poller.interval = 0.2
        poller.start()
        for _ in range(5):
            start = time.monotonic()
            generate_latest(registry)
            assert time.monotonic() - start < 0.2
            time.sleep(0.1)
        poller.stop()
        state = poller.state
        assert state.polls >= 2
        assert state.errors == state.polls  # every poll failed, none hung the loop
        # stop() unregisters the collector.
        assert sample_value(registry, "celery_queue_length_poll_errors_total") is None
        assert poller.state.reading is None
        assert poller.state.last_success == 0.0
        assert _queue_threads() == []
    finally:
        hole.close()
        app.close()


@pytest.mark.usefixtures("own_broker")
def test_the_error_counter_counts_each_failed_poll_exactly(
    pollers: Callable[..., QueueDepthPoller],
) -> None:
    server = RedisServer().start()
    app = _own_app(f"{server.url}/0", f"{server.url}/1")
    try:
        _publish("qd.count", [0, 9], app)
        poller = pollers(app, ("qd.count",), timeout=5.0)
        registry = CollectorRegistry()
        poller.attach(registry)
        _poll(poller)
        server.stop(kill=True)
        for _ in range(3):
            assert poller.poll_once() is False
        assert sample_value(registry, "celery_queue_length_poll_errors_total") == 3
        assert sample_value(registry, "celery_queue_length", queue_name="qd.count") == 2
        server = RedisServer(port=server.port).start()
        _publish("qd.count", [0], app)
        assert _poll(poller).lengths["qd.count"] == 1  # the first good poll recovers
        assert sample_value(registry, "celery_queue_length_poll_errors_total") == 3
        assert sample_value(registry, "celery_queue_length", queue_name="qd.count") == 1
    finally:
        server.stop()
        _drop_app(app)


# --------------------------------------------------------------------------- standalone


def test_standalone_serves_the_same_numbers_as_a_worker_side_poller(
    redis_client: redis.Redis,
) -> None:
    app = get_celery_app()
    _publish("qd.same", MIXED)
    _publish("qd.other", [3, 3])
    settings = ObsSettings(queues=("qd.same", "qd.other", "qd.nothing"), queue_poll_interval=0.5,
                           const_labels=(("site", "a"),))  # fmt: skip
    conn = app.connection_for_read()
    registry = CollectorRegistry()
    # What a worker consuming qd.other runs (instrument.py calls this).
    worker_side = start_queue_depth(app, registry, settings, consumed_queues=["qd.other"])
    exporter = StandaloneThread(app, settings).start()
    try:
        conn.SimpleQueue("qd.same").get(timeout=10)  # one unacked message for both to see

        def both_settled() -> tuple[Samples, Samples] | None:
            served = exporter.scrape()
            direct = Samples(generate_latest(registry).decode())
            want = len(MIXED) - 1
            for s in (served, direct):
                if s.value("celery_queue_length", queue_name="qd.same", site="a") != want:
                    return None
                if s.value("celery_queue_unacked_messages", queue_name="qd.same", site="a") != 1:
                    return None
            return served, direct

        served, direct = wait_for(both_settled, 30, message="both to read the same broker")
        for queue, count in (("qd.same", len(MIXED) - 1), ("qd.other", 2), ("qd.nothing", 0),
                             ("celery", 0)):  # fmt: skip
            assert served.value("celery_queue_length", queue_name=queue, site="a") == count
            assert direct.value("celery_queue_length", queue_name=queue, site="a") == count
        assert {s.labels["queue_name"] for s in served.find("celery_queue_length")} == {
            s.labels["queue_name"] for s in direct.find("celery_queue_length")}  # fmt: skip
        age_served = served.value("celery_queue_oldest_message_age_seconds", queue_name="qd.same",
                                  site="a")  # fmt: skip
        age_direct = direct.value("celery_queue_oldest_message_age_seconds", queue_name="qd.same",
                                  site="a")  # fmt: skip
        assert age_served is not None and age_direct is not None
        assert math.isclose(age_served, age_direct, abs_tol=5.0)  # two scrapes, two instants
        assert served.value("celery_queue_length_poll_errors_total", site="a") == 0
        assert direct.value("celery_queue_length_poll_errors_total", site="a") == 0
        assert http_status(exporter.url + "/healthz") == 200
    finally:
        exporter.close()
        worker_side.stop()
        conn.release()
    assert sample_value(registry, "celery_queue_length", queue_name="qd.same", site="a") is None
    assert _queue_threads() == []


def test_standalone_stops_cleanly_on_sigterm(redis_server: RedisServer, tmp_path: Any) -> None:
    port_file = tmp_path / "port"
    code = (
        "import sys\n"
        "from csuite_async_obs import ObsSettings, create_celery_app\n"
        "from csuite_async_obs.queue_depth.standalone import run_standalone_exporter\n"
        "app = create_celery_app()\n"
        "def ready(exporter, poller):\n"
        f"    open({str(port_file)!r}, 'w').write(str(exporter.port))\n"
        "run_standalone_exporter(app, ObsSettings(queue_poll_interval=0.5), port=0,\n"
        "                        addr='127.0.0.1', on_ready=ready)\n"
        "print('stopped', flush=True)\n"
    )
    env = {**os.environ, "CELERY_BROKER_URL": f"{redis_server.url}/0",
           "CELERY_RESULT_BACKEND": f"{redis_server.url}/1", "PYTHONPATH": str(ROOT)}  # fmt: skip
    process = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        port = int(wait_for(lambda: port_file.exists() and port_file.read_text(), 60,
                            message="the exporter's port"))  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_status(url + "/healthz") == 200, 30, message="healthy")
        assert scrape(url + "/metrics").value("celery_queue_length", queue_name="celery") == 0
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
        assert b"stopped" in output
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


# --------------------------------------------------------------------------- other brokers


@pytest.mark.usefixtures("own_broker")
def test_other_brokers_use_a_passive_declare_and_report_unknown_queues(
    pollers: Callable[..., QueueDepthPoller],
) -> None:
    app = Celery("memory", broker="memory://")
    try:
        for i in range(3):
            app.send_task("tests.ok", args=(i,), queue="qd.mem")
        poller = pollers(app, ("qd.mem", "qd.missing"))
        registry = CollectorRegistry()
        poller.attach(registry)
        reading = _poll(poller)
        assert dict(reading.lengths) == {"qd.mem": 3}
        # Never declared on this broker: unknown, not 0.
        assert reading.unknown == ("celery", "qd.missing")
        assert dict(reading.unacked) == {}
        assert UNACKED in reading.absent
        assert sample_value(registry, "celery_queue_length", queue_name="qd.mem") == 3
        assert sample_value(registry, "celery_queue_length", queue_name="qd.missing") is None
        assert sample_value(registry, "celery_queue_oldest_message_age_seconds",
                            queue_name="qd.mem") is None  # fmt: skip
        assert sample_value(registry, "celery_queue_unacked_messages") is None
        assert sample_value(registry, "celery_queue_length_poll_errors_total") == 0
        assert poller.health()[1]["unknown_queues"] == ["celery", "qd.missing"]
    finally:
        app.close()
