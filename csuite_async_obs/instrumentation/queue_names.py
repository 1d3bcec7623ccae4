"""The ``queue_name`` label: the queue a message was consumed from (or published to).

A message carries the exchange and routing key it was published with; the queue
is what the broker made of them.  :class:`QueueNames` recovers it, in this order:

1. **AMQP, worker side: the exact queue.**  py-amqp's delivery carries the
   consumer tag, and the worker's task consumer (kombu ``Consumer``) knows which
   queue each of its tags consumes (shim ``consumer_tags`` in
   :mod:`csuite_async_obs.compat`).  A kombu tag is never reused within a process,
   so a tag's queue is cached for good.
2. **Otherwise, by the declared queues and their bindings.**  The candidates are
   the queues the worker consumes (``app.amqp.queues.consume_from``: ``-Q``,
   ``add_consumer``, ``cancel_consumer``) on the worker side, every queue the app
   declares (``app.amqp.queues``) on the publish side.  A queue is bound by its
   ``exchange``/``routing_key`` and by each of its ``bindings``.  The default
   exchange (``""``) routes to the queue named by the routing key; a direct
   exchange to the queues whose binding key equals the routing key; a topic
   exchange by AMQP topic matching (``*`` one word, ``#`` zero or more, words
   separated by ``.``); a fanout exchange to every queue bound to it.  If exactly
   one candidate matches, that queue is the label.  On the publish side the
   ``queue`` of the publish wins when Celery passes it (it declares that one
   queue, ``declare=[queue]``) and its bindings agree.
3. **Else the routing key**, as before this rule: no candidate or several match
   (one message routed to two consumed queues cannot be told apart without the
   consumer tag), a headers exchange (not matched here), or a binding made
   outside Celery's configuration (with ``rabbitmqctl``, or by another app).

Resolutions are cached per (exchange, routing key), bounded, and dropped when
the candidate queues change, so the per-task cost is one or two dict lookups.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from ..compat import consumer_tag_queues

__all__ = ["UNKNOWN_QUEUE", "QueueNames", "bindings", "resolve", "topic_matches"]

UNKNOWN_QUEUE = "unknown"
#: Cached (exchange, routing key) resolutions before the cache starts over: topic
#: routing keys may be unbounded (``reports.<customer>``), the queues are not.
CACHE_LIMIT = 4096


def topic_matches(pattern: str, routing_key: str) -> bool:
    """Whether an AMQP topic binding key ``pattern`` matches ``routing_key``.

    Words are separated by ``.``; ``*`` stands for exactly one word, ``#`` for
    zero or more words (RabbitMQ's semantics).
    """
    words = routing_key.split(".")
    parts = pattern.split(".")
    # reachable[j]: the first i pattern parts can match the first j words.
    reachable = [True] + [False] * len(words)
    for part in parts:
        nxt = [False] * (len(words) + 1)
        if part == "#":
            seen = False
            for j in range(len(words) + 1):
                seen = seen or reachable[j]
                nxt[j] = seen
        else:
            for j in range(len(words)):
                if reachable[j] and (part == "*" or part == words[j]):
                    nxt[j + 1] = True
        reachable = nxt
    return reachable[len(words)]


def bindings(queue: Any) -> list[tuple[str, str, str]]:
    """``(exchange name, exchange type, binding key)`` of every binding of a kombu Queue
    (its own exchange and routing key, then its ``bindings``); the default exchange's
    implicit binding is left out."""
    found: list[tuple[str, str, str]] = []
    pairs = [(getattr(queue, "exchange", None), getattr(queue, "routing_key", None))]
    pairs += [
        (getattr(b, "exchange", None), getattr(b, "routing_key", None))
        for b in (getattr(queue, "bindings", None) or ())
    ]
    for exchange, key in pairs:
        if exchange is None:
            continue
        name = exchange if isinstance(exchange, str) else getattr(exchange, "name", "")
        if not name:
            continue
        kind = "direct" if isinstance(exchange, str) else (exchange.type or "direct")
        found.append((name, kind, key or ""))
    return found


def _binds(kind: str, key: str, routing_key: str) -> bool:
    if kind == "direct":
        return key == routing_key
    if kind == "topic":
        return topic_matches(key, routing_key)
    return kind == "fanout"  # headers: decided by headers this module does not read


def resolve(exchange: str | None, routing_key: str | None, queues: Iterable[Any]) -> str:
    """The one queue of ``queues`` that (exchange, routing key) reaches, else the
    routing key (rules 2 and 3 of the module docstring)."""
    fallback = routing_key or UNKNOWN_QUEUE
    if not exchange:
        return fallback  # the default exchange: the routing key is the queue's name
    key = routing_key or ""
    matched = {
        queue.name
        for queue in queues
        if any(
            name == exchange and _binds(kind, bound, key) for name, kind, bound in bindings(queue)
        )
    }
    if len(matched) == 1:
        return str(matched.pop())
    return fallback


class QueueNames:
    """The queue-name resolver of one instrumented app (see the module docstring)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._worker: Any = None
        self._by_tag: dict[str, str] = {}
        self._consumed: dict[tuple[Any, Any], str] = {}
        self._consumed_of: tuple[int, int] = (0, -1)
        self._declared: dict[tuple[Any, Any], str] = {}
        self._declared_of: tuple[int, int] = (0, -1)
        self._lock = threading.Lock()

    def attach(self, worker: Any) -> None:
        """Resolve deliveries against ``worker``'s task consumer from now on."""
        self._worker = worker

    # ------------------------------------------------------------------ worker side

    def delivered(self, delivery_info: Mapping[str, Any] | None) -> str:
        """The queue a delivery (a kombu message's ``delivery_info``) came from."""
        delivery = delivery_info or {}
        tag = delivery.get("consumer_tag")
        if tag is not None:
            name = self._by_tag.get(tag)
            if name is not None:
                return name
            name = self._tag_queue(tag)
            if name is not None:
                return name
        exchange, routing_key = delivery.get("exchange"), delivery.get("routing_key")
        queues = self._consumed_queues()
        generation = (id(queues[0]), len(queues[1]))
        if generation != self._consumed_of:
            self._consumed, self._consumed_of = {}, generation
        cache = self._consumed
        name = cache.get((exchange, routing_key))
        if name is None:
            name = resolve(exchange, routing_key, queues[1])
            _store(cache, (exchange, routing_key), name)
        return name

    def _consumed_queues(self) -> tuple[Any, list[Any]]:
        """(owner, queues): the live task consumer's queues (``add_consumer`` changes
        them), else the app's ``-Q`` selection (before the consumer starts)."""
        consumer = getattr(getattr(self._worker, "consumer", None), "task_consumer", None)
        if consumer is not None:
            return consumer, consumer.queues
        selected = self.app.amqp.queues.consume_from
        return selected, list(selected.values())

    def _tag_queue(self, tag: str) -> str | None:
        consumer = getattr(getattr(self._worker, "consumer", None), "task_consumer", None)
        if consumer is None:
            return None
        tags = consumer_tag_queues(consumer)
        if tags is None:
            return None
        with self._lock:
            for known, queue in tags.items():
                if len(self._by_tag) < CACHE_LIMIT:
                    self._by_tag[known] = queue
        return tags.get(tag)

    # ------------------------------------------------------------------ publish side

    def published(self, exchange: str | None, routing_key: str | None, declared: Any = None) -> str:
        """The queue a publish goes to; ``declared``: the ``declare`` list Celery passed
        to ``before_task_publish`` (``[queue]`` when the publish named its queue)."""
        if declared and len(declared) == 1 and getattr(declared[0], "name", None):
            queue = declared[0]
            if not exchange and routing_key == queue.name:
                return str(queue.name)
            if exchange and resolve(exchange, routing_key, [queue]) == queue.name:
                return str(queue.name)
        queues = self.app.amqp.queues
        generation = (id(queues), len(queues))
        if generation != self._declared_of:
            self._declared, self._declared_of = {}, generation
        cache = self._declared
        name = cache.get((exchange, routing_key))
        if name is None:
            name = resolve(exchange, routing_key, list(queues.values()))
            _store(cache, (exchange, routing_key), name)
        return name


def _store(cache: dict[tuple[Any, Any], str], key: tuple[Any, Any], name: str) -> None:
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    cache[key] = name
