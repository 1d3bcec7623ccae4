"""get_task_result and wait_for_task on rpc://, redis:// and db+sqlite://, against real workers.

Each backend gets the test process's own app (the environment set, then
``reset_celery_app``) and a real ``celery worker``: Redis as the broker for
redis:// and db+sqlite://, a fresh RabbitMQ vhost for rpc://.  Tasks are
published before the worker starts, so "queued" is really queued.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celery
import pytest
from celery import states
from celery.utils import uuid

from csuite_async_obs import (
    compat,
    delay_task,
    get_celery_app,
    get_task_result,
    reset_celery_app,
    uninstrument,
    wait_for_task,
)
from csuite_async_obs.servers.redis_server import RedisServer
from csuite_async_obs.testing import wait_for

from . import worker_tasks  # noqa: F401 -- registers the shared tasks on every new app
from .conftest import WorkerFactory
from .support import base_env

BACKENDS = ("redis", "rpc", "db")


@dataclass
class Backend:
    name: str
    workers: WorkerFactory
    app: Any


@pytest.fixture(scope="module")
def results_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One file for the module: Celery's SessionManager is process-wide and (on
    # 5.4 at least) creates the tables for the first database URL it meets only.
    return tmp_path_factory.mktemp("results") / "results.db"


@pytest.fixture(params=BACKENDS)
def backend(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    results_db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Backend]:
    name = request.param
    request.getfixturevalue("redis_client")  # an empty Redis
    if name == "rpc":
        broker, result_backend = request.getfixturevalue("rabbitmq_vhost"), "rpc://"
    elif name == "db":
        broker, result_backend = f"{redis_server.url}/0", f"db+sqlite:///{results_db}"
    else:
        broker, result_backend = f"{redis_server.url}/0", f"{redis_server.url}/1"
    # The process's one app re-reads the environment; monkeypatch restores it
    # after this fixture has reset the app again.
    monkeypatch.setenv("CELERY_BROKER_URL", broker)
    monkeypatch.setenv("CELERY_RESULT_BACKEND", result_backend)
    reset_celery_app()
    app = get_celery_app()
    factory = WorkerFactory(base_env(broker, result_backend), tmp_path)
    try:
        yield Backend(name, factory, app)
    finally:
        factory.stop_all()
        uninstrument(app)
        app.close()
        reset_celery_app()


def _queued(task_id: str) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "status": "PENDING",
        "result": None,
        "ready": False,
        "date_done": None,
    }


def _in_thread(task_id: str) -> Any:
    seen: list[Any] = []
    thread = threading.Thread(target=lambda: seen.append(get_task_result(task_id)))
    thread.start()
    thread.join(30)
    return seen[0]


def test_unknown_queued_running_done_and_repeated_reads(backend: Backend) -> None:
    unknown = uuid()
    assert get_task_result(unknown) is None
    assert wait_for_task(unknown, timeout=0.3) is None

    # Published before any worker consumes: queued.
    ok = delay_task("tests.ok", {"answer": 42})
    boom = delay_task("tests.boom", "it broke")
    slow = delay_task("tests.sleep", 1.0)
    assert ok is not None and boom is not None and slow is not None
    # Published without delay_task: no marker, so not visible until a state exists.
    plain = get_celery_app().tasks["tests.ok"].apply_async(args=(7,), countdown=3600)
    # The rpc fallback (CSUITE_COMPAT_FALLBACKS=rpc_consumer_states) marks nothing.
    marks = backend.name != "rpc" or compat.uses_private("rpc_consumer_states")
    for queued in (ok, boom, slow):
        assert get_task_result(queued.id) == (_queued(queued.id) if marks else None)
    assert get_task_result(plain.id) is None

    began = time.monotonic()
    timed_out = wait_for_task(ok.id, timeout=0.5)
    elapsed = time.monotonic() - began
    assert timed_out == ({**_queued(ok.id), "timed_out": True} if marks else None)
    assert 0.5 <= elapsed < 2.0

    worker = backend.workers(pool="solo")

    # Running (task_track_started): the worker's pid and name.  With rpc://
    # these polls also meet ok's and boom's states on the reply queue.
    def started() -> Any:
        status = get_task_result(slow.id)
        return status if status and status["status"] == "STARTED" else None

    running = wait_for(started, 30, message="tests.sleep STARTED", interval=0.02)
    assert running == {
        "task_id": slow.id,
        "status": "STARTED",
        "result": {"pid": worker.pid, "hostname": worker.hostname},
        "ready": False,
        "date_done": None,
    }

    done = wait_for_task(ok.id, timeout=30)
    assert done is not None
    # Before Celery 5.7 an rpc:// state message carries no time (behaviour rpc_date_done).
    dated = backend.name != "rpc" or celery.VERSION >= (5, 7)
    assert isinstance(done["date_done"], str) if dated else done["date_done"] is None
    assert done == {
        "task_id": ok.id,
        "status": "SUCCESS",
        "result": {"answer": 42},
        "ready": True,
        "date_done": done["date_done"],
        "timed_out": False,
    }
    failed = wait_for_task(boom.id, timeout=30)
    assert failed is not None
    assert isinstance(failed["date_done"], str) if dated else failed["date_done"] is None
    assert failed == {
        "task_id": boom.id,
        "status": "FAILURE",
        "result": {"type": "ValueError", "message": "it broke"},
        "ready": True,
        "date_done": failed["date_done"],
        "timed_out": False,
    }
    slept = wait_for_task(slow.id, timeout=30)
    assert slept is not None and (slept["status"], slept["result"]) == ("SUCCESS", 1.0)

    # Every read of a final state gives the same answer, also after
    # AsyncResult.get() drained the reply queue (rpc://) or subscribed (redis://).
    finals = {r.id: {k: v for k, v in s.items() if k != "timed_out"} for r, s in
              ((ok, done), (boom, failed), (slow, slept))}  # fmt: skip
    for _ in range(3):
        for task_id, final in finals.items():
            assert get_task_result(task_id) == final
            assert wait_for_task(task_id, timeout=0.1) == {**final, "timed_out": False}
    assert ok.get(timeout=10) == {"answer": 42}
    assert slow.get(timeout=10) == 1.0
    for task_id, final in finals.items():
        assert get_task_result(task_id) == final
    assert get_task_result(unknown) is None
    assert get_task_result(plain.id) is None  # still waiting for its countdown

    # Another thread: rpc:// states live on the publishing thread's reply queue.
    expected_elsewhere = None if backend.name == "rpc" else finals[ok.id]
    assert _in_thread(ok.id) == expected_elsewhere


def test_marker_never_hides_a_state_the_worker_stored(backend: Backend) -> None:
    backend.workers(pool="prefork", concurrency=2)
    # The worker is consuming: many of these are stored before delay_task has
    # written its marker (or right while it does).
    published = [delay_task("tests.ok", n) for n in range(40)]
    assert all(r is not None for r in published)
    finished = [wait_for_task(r.id, timeout=30) for r in published if r is not None]
    assert [(s or {}).get("status") for s in finished] == ["SUCCESS"] * 40
    assert [(s or {}).get("result") for s in finished] == list(range(40))
    assert [get_task_result(r.id)["status"] for r in published if r is not None] == [  # type: ignore[index]
        "SUCCESS"
    ] * 40


@pytest.mark.parametrize("backend", ["redis", "db"], indirect=True)
def test_marker_after_a_stored_state_is_dropped(backend: Backend) -> None:
    # rpc:// stores nothing: a state is a message to the publisher's reply queue.
    store = get_celery_app().backend
    first, second = uuid(), uuid()
    # The worker stored SUCCESS before the marker: the marker is dropped.
    store.store_result(first, 5, states.SUCCESS)
    store.mark_queued(first)
    assert get_task_result(first)["status"] == "SUCCESS"  # type: ignore[index]
    assert get_task_result(first)["result"] == 5  # type: ignore[index]
    # The marker first: the worker's state replaces it.
    store.mark_queued(second)
    assert get_task_result(second) == _queued(second)
    store.store_result(second, 6, states.SUCCESS)
    assert get_task_result(second)["result"] == 6  # type: ignore[index]
