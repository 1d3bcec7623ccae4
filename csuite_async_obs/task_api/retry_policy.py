"""How long ``delay_task`` keeps trying a broker that does not answer.

One policy for every broker round trip a ``delay_task`` publish makes: the publish
itself and, with ``rpc://``, the declare of the reply queue before it (Celery's
own call retries that for ever, which hung ``delay_task`` on a RabbitMQ that
stopped answering).  Only ``delay_task`` is bounded so: a plain ``apply_async``
keeps Celery's behaviour and the app's ``task_publish_retry_policy``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["AMQP_PUBLISH_TIMEOUTS", "PUBLISH_RETRY_POLICY", "bounded", "in_bounded_publish"]

# At most ~1.5 s of retries after the first failed attempt.  With the socket
# timeouts below and in task_api.app, "broker down" is known in about 1 s when the
# connection is refused, about 3 s when Redis accepts but never answers, and about
# 10 s when a RabbitMQ node stops answering (all tested).
PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0.25,
    "interval_step": 0.5,
    "interval_max": 1.0,
}

#: py-amqp's SO_RCVTIMEO and SO_SNDTIMEO on ``delay_task``'s own connections.  The
#: handshake is bounded by ``broker_connection_timeout`` already; without these, a
#: publish that waits for a reply after it (a channel opened, a queue declared) or
#: for room in a full send buffer blocks for good on a node that stopped answering.
#: A read timeout bounds the first read of a frame, and a stalled node sends none.
AMQP_PUBLISH_TIMEOUTS = {"read_timeout": 3.0, "write_timeout": 3.0}

_BOUNDED: ContextVar[bool] = ContextVar("csuite_bounded_publish", default=False)


@contextmanager
def bounded() -> Iterator[None]:
    """Mark the block as a ``delay_task`` publish (read by the rpc backend)."""
    token = _BOUNDED.set(True)
    try:
        yield
    finally:
        _BOUNDED.reset(token)


def in_bounded_publish() -> bool:
    """Whether the caller runs inside :func:`bounded`."""
    return _BOUNDED.get()
