"""``delay_task``'s own producers on AMQP brokers: connections with publish timeouts.

Celery's producer pool shares its connections (``app.connection_for_write``) with
everything else that writes, and some of it reads on them for as long as it
likes: a broadcast collecting replies, ``SimpleQueue.get``, publisher confirms, a
broker holding publishers back on a memory alarm.  A read timeout there would
end those early, so it is not put there.  ``delay_task`` publishes through a
pool of its own instead, one per app and process, whose connections carry
:data:`~.retry_policy.AMQP_PUBLISH_TIMEOUTS` (a key the app sets in
``broker_transport_options`` wins).  A connection whose publish failed on a
connection error is closed without a word before it goes back (a timed-out frame
may be half written), and reconnects on its next use.  Waiting for a free producer
is bounded too (``broker_pool_acquire_timeout``, else :data:`ACQUIRE_TIMEOUT`), so
a stalled node that holds every pooled connection still answers each caller in
seconds.  Redis needs none of this: its socket timeouts are on every connection
already (:mod:`.app`).  Only py-amqp is given the options: librabbitmq, which
kombu prefers when it is installed, takes no such keywords.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from kombu.exceptions import LimitExceeded, OperationalError
from kombu.pools import ProducerPool
from kombu.transport.pyamqp import Transport as PyAmqpTransport

from .retry_policy import AMQP_PUBLISH_TIMEOUTS

__all__ = ["ACQUIRE_TIMEOUT", "publish_producer"]

#: Seconds a ``delay_task`` waits for a free producer when the app sets no
#: ``broker_pool_acquire_timeout`` (Celery < 5.7 has none).
ACQUIRE_TIMEOUT = 3.0

_POOLS: weakref.WeakKeyDictionary[Any, tuple[int, ProducerPool | None]] = (
    weakref.WeakKeyDictionary()
)
_LOCK = threading.Lock()


def _new_pool(app: Any) -> ProducerPool | None:
    probe = app.connection_for_write()
    try:
        if not issubclass(probe.get_transport_cls(), PyAmqpTransport):
            return None
    finally:
        probe.release()
    configured = app.conf.broker_transport_options or {}
    options = {k: v for k, v in AMQP_PUBLISH_TIMEOUTS.items() if k not in configured}
    limit = app.conf.broker_pool_limit
    connections = app.connection_for_write(transport_options=options).Pool(limit=limit)
    return ProducerPool(connections, limit=limit, Producer=app.amqp.Producer)


def _pool(app: Any) -> ProducerPool | None:
    pid = os.getpid()
    with _LOCK:
        known = _POOLS.get(app)
        if known is not None and known[0] == pid:
            return known[1]
        # New, or inherited over a fork: a pool's sockets belong to the parent.
        pool = _new_pool(app)
        _POOLS[app] = (pid, pool)
        return pool


@contextlib.contextmanager
def publish_producer(app: Any) -> Iterator[Any | None]:
    """A producer of ``delay_task``'s pool for ``app``, or ``None`` off AMQP (then
    Celery's own pool is used)."""
    pool = _pool(app)
    if pool is None:
        yield None
        return
    timeout = app.conf.get("broker_pool_acquire_timeout") or ACQUIRE_TIMEOUT
    try:
        producer = pool.acquire(block=True, timeout=timeout)
    except LimitExceeded as exc:
        raise OperationalError(
            f"no free broker connection for delay_task after {timeout:g} s "
            f"(broker_pool_limit {app.conf.broker_pool_limit})"
        ) from exc
    connection = getattr(producer, "__connection__", None)
    broken: tuple[type[BaseException], ...] = (OperationalError, OSError, *_errors(connection))
    try:
        yield producer
    except broken:
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.collect()
        raise
    finally:
        producer.release()


def _errors(connection: Any) -> tuple[type[BaseException], ...]:
    """The transport's own connection and channel errors (py-amqp's), if known."""
    if connection is None:
        return ()
    try:
        return tuple(connection.connection_errors) + tuple(connection.channel_errors)
    except Exception:  # noqa: BLE001 -- a transport that cannot say: the generic ones only
        return ()
