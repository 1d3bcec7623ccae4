"""The private broker: pre-built task messages, copied into the workers' queues per round.

Publishing 20,000 tasks through Celery takes seconds; so one real message per
task signature is published through Celery (through an instrumented publisher,
so it carries the package's publish-time header), and that message is cloned
with fresh ids into a *template* list in DB 0.  Each round then fills the
workers' queues with ``COPY template <queue> DB n REPLACE`` inside one
``MULTI``: the queues of both sides appear at the same instant, already full,
and the copy takes milliseconds.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import redis
from celery import Celery

from csuite_async_obs.servers.redis_server import RedisServer

from .apps import BENCH_QUEUE

__all__ = ["Broker"]

_TEMPLATE_DB = 0
_UNACKED = "unacked"  # kombu's Redis transport: messages delivered and not yet acked


class Broker:
    """One private redis-server; DB 0 holds the templates, DBs 1.. the workers' queues."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self._clients: dict[int, redis.Redis[bytes]] = {}
        self._publisher: Celery | None = None
        self._prototypes: dict[tuple[str, str], dict[str, Any]] = {}

    def url(self, db: int) -> str:
        return f"{self.server.url}/{db}"

    def client(self, db: int = _TEMPLATE_DB) -> redis.Redis[bytes]:
        if db not in self._clients:
            self._clients[db] = redis.Redis(port=self.server.port, db=db)
        return self._clients[db]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    # ------------------------------------------------------------------ templates

    def prototype(self, task: str, args: Sequence[Any]) -> dict[str, Any]:
        """One real message for ``task(*args)``, published through Celery (cached)."""
        key = (task, json.dumps(list(args)))
        if key not in self._prototypes:
            if self._publisher is None:
                from csuite_async_obs import instrument

                app = Celery("bench_publisher", broker=self.url(_TEMPLATE_DB))
                # The publish hook stamps csuite_published_at, as in production.
                instrument(app, metrics_port=0, queue_depth=False)
                self._publisher = app
            scratch = f"bench:prototype:{uuid.uuid4().hex}"
            self._publisher.send_task(task, args=list(args), queue=scratch)
            raw = self.client().rpop(scratch)
            assert raw is not None, "the prototype message was not published"
            self.client().delete(f"_kombu.binding.{scratch}", f"_kombu.binding_permanent.{scratch}")
            self._prototypes[key] = json.loads(raw)
        return self._prototypes[key]

    def template(
        self,
        count: int,
        tasks: Sequence[tuple[str, Sequence[Any]]] = (("bench.noop", ()),),
        queue: str = BENCH_QUEUE,
    ) -> str:
        """A template list of ``count`` messages cycling through ``tasks``; returns its key."""
        spec = json.dumps([count, [[t, list(a)] for t, a in tasks], queue], sort_keys=True)
        key = f"bench:template:{uuid.uuid5(uuid.NAMESPACE_OID, spec).hex}"
        client = self.client()
        if client.exists(key):
            return key
        protos = [self.prototype(task, args) for task, args in tasks]
        with client.pipeline(transaction=False) as pipe:
            for i in range(count):
                message = json.loads(json.dumps(protos[i % len(protos)]))
                task_id = str(uuid.uuid4())
                headers, props = message["headers"], message["properties"]
                headers["id"] = headers["root_id"] = props["correlation_id"] = task_id
                # kombu tracks unacked messages by delivery tag: each must be unique.
                props["delivery_tag"] = str(uuid.uuid4())
                props["delivery_info"]["routing_key"] = queue
                pipe.lpush(key, json.dumps(message))
                if i % 5000 == 4999:
                    pipe.execute()
            pipe.execute()
        return key

    # ------------------------------------------------------------------ rounds

    def fill(self, template: str, dbs: Sequence[int], queue: str = BENCH_QUEUE) -> None:
        """Copy ``template`` into ``queue`` of every DB in ``dbs``, in that order, atomically."""
        with self.client().pipeline(transaction=True) as pipe:
            for db in dbs:
                pipe.execute_command("COPY", template, queue, "DB", db, "REPLACE")
            pipe.execute()

    def pending(self, db: int, queue: str = BENCH_QUEUE) -> int:
        """Messages of ``queue`` in ``db`` not yet taken or not yet acknowledged."""
        with self.client(db).pipeline(transaction=False) as pipe:
            pipe.llen(queue)
            pipe.hlen(_UNACKED)
            waiting, unacked = pipe.execute()
        return int(waiting) + int(unacked)

    def consuming(self, db: int, ports: set[int] | None = None) -> int:
        """Clients blocked in ``BRPOP`` on ``db``: a worker's consumer waiting for work.

        With ``ports``, only clients connected from one of those local ports
        count (the sockets of one worker, see :func:`benchmarks.system.tcp_ports`).
        """
        count = 0
        for client in self.client().client_list():
            if client.get("cmd") not in ("brpop", "blpop") or int(client.get("db", -1)) != db:
                continue
            port = int(str(client.get("addr", ":0")).rsplit(":", 1)[1])
            if ports is None or port in ports:
                count += 1
        return count

    def flush(self, db: int) -> None:
        self.client(db).flushdb()
