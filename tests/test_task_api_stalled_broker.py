"""delay_task on a RabbitMQ that stopped answering: ``None`` in seconds, never a hang.

The session's real node is stopped with SIGSTOP (its sockets stay open, the kernel
still completes TCP handshakes, nothing answers), as a hung or partitioned broker
is.  A publish that needs a reply then (here: the first task routed to a queue the
app has not declared on this connection) used to wait for it for good, and with
``rpc://`` Celery retried the declare of its reply queue for ever; the task API's
AMQP publish timeouts and its bounded declare make it fail, and ``delay_task``
returns ``None``.  Once the node continues, publishing works again on the same app.
Both usual result backends of a RabbitMQ broker: ``rpc://`` and Redis.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from csuite_async_obs import create_celery_app, delay_task
from csuite_async_obs.config.celery_settings import CelerySettings
from csuite_async_obs.servers.rabbitmq_server import RabbitMQServer
from csuite_async_obs.task_api import producers

from .support import wait_for

#: Seconds a publish may take against the stalled node: the read timeout (3 s) on
#: each of the retry policy's 3 attempts, with reconnects bounded by the
#: connection timeout (2 s), and the retry intervals; the test waits far longer.
BOUND_S = 20.0
HANG_S = 60.0
QUEUES = ("celery", "stalled.elsewhere")


def _publish(task: Any, *args: Any) -> tuple[Any, float]:
    """delay_task in a thread, so that a hang fails the test instead of stopping it.

    With ``rpc://`` every publish declares the reply queue first (it is auto-delete,
    so kombu never caches the declare): the round trip the stalled node never
    answers."""
    out: list[Any] = []
    began = time.monotonic()
    thread = threading.Thread(target=lambda: out.append(delay_task(task, *args)), daemon=True)
    thread.start()
    thread.join(HANG_S)
    assert not thread.is_alive(), f"delay_task still blocked after {HANG_S:g} s"
    return out[0], time.monotonic() - began


@pytest.mark.parametrize("backend", ["rpc", "redis"])
def test_a_publish_to_a_stalled_rabbitmq_returns_none_in_seconds(
    backend: str,
    rabbitmq_server: RabbitMQServer,
    rabbitmq_vhost: str,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    if backend == "rpc":
        result_backend = "rpc://"  # its reply queue is declared before each publish
    else:
        result_backend = f"{request.getfixturevalue('redis_server').url}/1"
    app = _app(rabbitmq_vhost, monkeypatch, result_backend)

    @app.task(name="tests.stalled.first", shared=False)
    def first(x: int) -> int:
        return x

    @app.task(name="tests.stalled.elsewhere", shared=False, queue="stalled.elsewhere")
    def elsewhere(x: int) -> int:
        return x

    try:
        queued, _ = _publish(first, 1)
        assert queued is not None  # connected, channel open, queue declared: all pooled
        with rabbitmq_server.paused():
            result, took = _publish(elsewhere, 2)
            assert result is None, "a publish to the stalled node was reported queued"
            assert took < BOUND_S, f"delay_task took {took:.1f} s to give up"
        # The same app publishes again once the node continues.
        deadline = time.monotonic() + 60
        while _publish(elsewhere, 3)[0] is None:
            assert time.monotonic() < deadline, (
                "publishing did not recover after the node continued"
            )
            time.sleep(1)
        # Ground truth: one message in each queue.  The stalled publish failed at a
        # declare (its reply queue's with rpc://, else its queue's), before its
        # basic.publish was written.
        vhost = rabbitmq_vhost.rsplit("/", 1)[1]

        def counts() -> Any:
            queues = rabbitmq_server.list_queues(vhost)
            ready = {name: queues.get(name, {}).get("messages_ready") for name in QUEUES}
            return ready if ready == dict.fromkeys(QUEUES, 1) else None

        wait_for(counts, 10, message="one message in each queue")
    finally:
        app.close()


def _app(
    url: str, monkeypatch: pytest.MonkeyPatch, result_backend: str = "rpc://", **options: Any
) -> Any:
    """A task-API app on ``url`` with ``options`` as its broker_transport_options."""
    # Celery lets CELERY_BROKER_URL / CELERY_RESULT_BACKEND override any app's
    # configuration: this app must not see the session's.
    monkeypatch.delenv("CELERY_BROKER_URL")
    monkeypatch.delenv("CELERY_RESULT_BACKEND")
    app = create_celery_app(CelerySettings(broker_url=url, result_backend=result_backend))
    if options:
        app.conf.broker_transport_options = options
    return app


def _options(pool: Any) -> dict[str, Any]:
    connection = pool.connections.acquire()
    try:
        return dict(connection.transport_options)
    finally:
        connection.release()


def test_only_delay_tasks_own_amqp_connections_carry_the_timeouts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Nothing connects: kombu's connections are lazy.
    app = _app("amqp://guest:guest@127.0.0.1:1//", monkeypatch)
    pool = producers._pool(app)
    assert pool is not None
    assert {k: _options(pool)[k] for k in ("read_timeout", "write_timeout")} == {
        "read_timeout": 3.0,
        "write_timeout": 3.0,
    }
    assert producers._pool(app) is pool  # one per app and process
    # Celery's own connections (events, beat, control, the rpc result consumer) get none.
    assert "read_timeout" not in app.connection_for_write().transport_options
    assert "read_timeout" not in app.connection_for_read().transport_options


def test_a_timeout_the_app_sets_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    app = _app("amqp://guest:guest@127.0.0.1:1//", monkeypatch, read_timeout=30.0)
    pool = producers._pool(app)
    assert pool is not None
    options = _options(pool)
    assert (options["read_timeout"], options["write_timeout"]) == (30.0, 3.0)


def test_off_amqp_delay_task_uses_celerys_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    assert producers._pool(_app("redis://127.0.0.1:1/0", monkeypatch)) is None


def test_waiting_for_a_free_producer_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    app = _app("amqp://guest:guest@127.0.0.1:1//", monkeypatch)
    app.conf.broker_pool_limit = 1
    app.conf.broker_pool_acquire_timeout = 0.5

    @app.task(name="tests.stalled.pool", shared=False)
    def pooled(x: int) -> int:
        return x

    pool = producers._pool(app)
    assert pool is not None
    held = pool.acquire(block=True)  # the one producer, as a publish stuck on a stalled node
    try:
        began = time.monotonic()
        assert delay_task(pooled, 1) is None
        assert time.monotonic() - began < 3.0
    finally:
        held.release()


def test_an_eager_app_runs_the_task_without_a_producer(monkeypatch: pytest.MonkeyPatch) -> None:
    app = _app("amqp://guest:guest@127.0.0.1:1//", monkeypatch)
    app.conf.task_always_eager = True

    @app.task(name="tests.stalled.eager", shared=False)
    def eager(x: int) -> int:
        return x * 2

    result = delay_task(eager, 21)
    assert result is not None and result.get() == 42
    assert producers._POOLS.get(app) is None  # no pool was made, no connection tried
