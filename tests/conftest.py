"""Session fixtures: one real redis-server on a free loopback port, workers as subprocesses."""

from __future__ import annotations

import gc
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from csuite_async_obs.servers.rabbitmq_server import RabbitMQServer
from csuite_async_obs.servers.redis_server import RedisServer

from .support import Worker, base_env

_SERVER: RedisServer | None = None
_RABBITMQ: RabbitMQServer | None = None
_VHOSTS = itertools.count(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run long soaks (marker slow)")


def pytest_configure(config: pytest.Config) -> None:
    global _SERVER
    # The test process's own app (get_celery_app) reads these once; start Redis
    # before any test module imports the tasks.
    _SERVER = RedisServer().start()
    os.environ["CELERY_BROKER_URL"] = f"{_SERVER.url}/0"
    os.environ["CELERY_RESULT_BACKEND"] = f"{_SERVER.url}/1"
    os.environ.setdefault("CSUITE_METRICS_PORT", "0")


def pytest_unconfigure(config: pytest.Config) -> None:
    # A collected AsyncResult unsubscribes from its result channel over Redis; Celery
    # before 5.7 retries that for minutes once Redis is gone.  Collect them first.
    gc.collect()
    if _RABBITMQ is not None:
        # Killed, not stopped: pytest-xdist kills a worker that takes more than 10 s to
        # finish, and `rabbitmqctl stop` can take longer; the node then outlived the
        # run with this worker's redis-server (seen: both left after a suite).  The
        # node's data goes with its folder anyway.
        _RABBITMQ.close(kill=True)
    if _SERVER is not None:
        _SERVER.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    # Deselected, not skipped: the short version of each soak runs by default.
    keep = [item for item in items if "slow" not in item.keywords]
    dropped = [item for item in items if "slow" in item.keywords]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(scope="session")
def redis_server() -> RedisServer:
    assert _SERVER is not None
    return _SERVER


@pytest.fixture()
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=redis_server.port)
    client.flushall()
    yield client
    client.close()


@pytest.fixture()
def worker_env(redis_server: RedisServer, redis_client: redis.Redis) -> dict[str, str]:
    return base_env(f"{redis_server.url}/0", f"{redis_server.url}/1")


@pytest.fixture()
def workers(worker_env: dict[str, str], tmp_path: Path) -> Iterator[WorkerFactory]:
    factory = WorkerFactory(worker_env, tmp_path)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def rabbitmq_server() -> RabbitMQServer:
    """One private RabbitMQ node for the session, started by the first test that needs it."""
    global _RABBITMQ
    if _RABBITMQ is None:
        _RABBITMQ = RabbitMQServer().start()
    elif _RABBITMQ.process is None:  # a fault test stopped it and failed before restarting
        _RABBITMQ.start()
    return _RABBITMQ


@pytest.fixture()
def rabbitmq_vhost(rabbitmq_server: RabbitMQServer) -> Iterator[str]:
    """A fresh vhost per test (its queues and messages go with it); its AMQP URL."""
    vhost = f"test{next(_VHOSTS)}"
    rabbitmq_server.ctl("add_vhost", vhost)
    rabbitmq_server.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield f"amqp://guest:guest@127.0.0.1:{rabbitmq_server.port}/{vhost}"
    if rabbitmq_server.process is not None:
        rabbitmq_server.ctl("delete_vhost", vhost)


@pytest.fixture()
def rabbitmq_env(
    rabbitmq_vhost: str, redis_server: RedisServer, redis_client: redis.Redis
) -> dict[str, str]:
    """Worker environment on RabbitMQ (results in Redis, as the exactness tests read them)."""
    return base_env(rabbitmq_vhost, f"{redis_server.url}/1", TEST_REDIS_URL=f"{redis_server.url}/0")


@pytest.fixture()
def rabbitmq_workers(rabbitmq_env: dict[str, str], tmp_path: Path) -> Iterator[WorkerFactory]:
    factory = WorkerFactory(rabbitmq_env, tmp_path)
    yield factory
    factory.stop_all()


class WorkerFactory:
    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.started: list[Worker] = []

    def __call__(self, **kwargs: object) -> Worker:
        env = dict(self.env)
        env.update(kwargs.pop("env", {}) or {})  # type: ignore[call-overload]
        wait = bool(kwargs.pop("wait", True))
        worker = Worker(env, self.log_dir, **kwargs)  # type: ignore[arg-type]
        self.started.append(worker)
        return worker.start(wait=wait)

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()
