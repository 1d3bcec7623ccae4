"""The task API against a real Redis and real worker processes."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

import pytest
import redis

from csuite_async_obs import (
    CelerySettings,
    create_celery_app,
    delay_task,
    get_task_result,
    wait_for_task,
)
from csuite_async_obs.servers.redis_server import RedisServer, free_port

from . import worker_tasks as t


@pytest.mark.parametrize("pool", ["solo", "prefork"])
def test_round_trip_and_results(pool: str, workers: Any) -> None:
    workers(pool=pool, concurrency=2 if pool == "prefork" else 1)
    ok = delay_task(t.ok, {"answer": 42})
    assert ok is not None
    status = wait_for_task(ok.id, timeout=30)
    assert status is not None
    assert (
        status["status"] == "SUCCESS" and status["ready"] is True and status["timed_out"] is False
    )
    assert status["result"] == {"answer": 42}
    assert status["task_id"] == ok.id and isinstance(status["date_done"], str)

    failed = delay_task(t.boom, "it broke")
    assert failed is not None
    status = wait_for_task(failed.id, timeout=30)
    assert status is not None
    assert status["status"] == "FAILURE" and status["ready"] is True
    assert status["result"] == {"type": "ValueError", "message": "it broke"}
    assert get_task_result(failed.id) == {k: v for k, v in status.items() if k != "timed_out"}


def test_queued_but_not_started_is_not_unknown(redis_client: redis.Redis) -> None:
    # No worker consumes this queue: the task stays queued.
    result = t.ok.apply_async(args=(1,), queue="nobody-consumes-this")
    queued = delay_task(t.ok, 2)
    assert queued is not None
    status = get_task_result(queued.id)
    assert status == {
        "task_id": queued.id,
        "status": "PENDING",
        "result": None,
        "ready": False,
        "date_done": None,
    }
    assert result.id  # published without delay_task: unknown until a worker stores a state
    assert get_task_result("00000000-0000-0000-0000-000000000000") is None


def test_wait_for_task_times_out_with_flag(redis_client: redis.Redis) -> None:
    queued = delay_task(t.ok, 3)
    assert queued is not None
    began = time.monotonic()
    status = wait_for_task(queued.id, timeout=0.5)
    elapsed = time.monotonic() - began
    assert status is not None and status["timed_out"] is True and status["status"] == "PENDING"
    assert 0.5 <= elapsed < 2.0
    assert wait_for_task("never-seen-id", timeout=0.2) is None


def test_task_stays_callable_inline() -> None:
    assert t.ok(5) == 5
    with pytest.raises(ValueError, match="inline"):
        t.boom("inline")


def test_delay_task_rejects_non_tasks() -> None:
    with pytest.raises(TypeError, match="@async_task"):
        delay_task(len, [1])


def _app_on(url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    # Celery lets CELERY_BROKER_URL / CELERY_RESULT_BACKEND override any app's
    # configuration: this app must not see the session's.
    monkeypatch.delenv("CELERY_BROKER_URL")
    monkeypatch.delenv("CELERY_RESULT_BACKEND")
    app = create_celery_app(CelerySettings(broker_url=url + "/0", result_backend=url + "/1"))

    @app.task(name="tests.down.ok", shared=False)
    def ok(x: int) -> int:
        return x

    return ok


def test_delay_task_broker_never_up_returns_none_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    task = _app_on(f"redis://127.0.0.1:{free_port()}", monkeypatch)
    assert type(task.app.backend).__name__ == "RedisResultBackend"
    began = time.monotonic()
    assert delay_task(task, 1) is None
    assert time.monotonic() - began < 5.0


def test_delay_task_broker_goes_down_returns_none_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    server = RedisServer().start()
    try:
        task = _app_on(server.url, monkeypatch)
        assert delay_task(task, 1) is not None  # connection established and pooled
        server.stop(kill=True)
        began = time.monotonic()
        assert delay_task(task, 2) is None
        assert time.monotonic() - began < 5.0
    finally:
        server.stop()


def test_delay_task_hung_broker_returns_none_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    # A broker that accepts connections and never answers (a hung Redis).
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        task = _app_on(f"redis://127.0.0.1:{listener.getsockname()[1]}", monkeypatch)
        began = time.monotonic()
        assert delay_task(task, 1) is None
        assert time.monotonic() - began < 5.0
        assert len(accepted) >= 1  # it really talked to the hung peer
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        listener.close()
