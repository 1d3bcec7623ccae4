"""Queue depth on any other kombu transport: a passive ``queue_declare`` per queue.

AMQP (RabbitMQ) and the other transports answer a passive declare with the
number of ready messages and of consumers; a queue the broker does not know
(``NOT_FOUND``) or that fails is *unknown*, never 0.  Ages and unacked counts
are not known this way (RabbitMQ's management API is the place for them: the
fallback when that API cannot be reached).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kombu.exceptions import ChannelError

from .reading import AGE, CONSUMERS, UNACKED, BrokerReader, Reading, close_quietly

__all__ = ["DeclareReader"]


#: What a passive declare cannot tell: said in ``/healthz`` and logged once.
ABSENT = (AGE, UNACKED)
#: kombu's virtual transports count no consumers either.
VIRTUAL_ABSENT = (AGE, CONSUMERS, UNACKED)


class DeclareReader(BrokerReader):
    """One passive ``queue_declare`` per queue, in sequence, on the reader's channel.

    ``missing_is_empty``: on kombu's virtual transports (Redis) a queue without
    messages has no key, and a passive declare answers NOT_FOUND for it: that is
    an empty queue, reported 0.  On AMQP NOT_FOUND means no such queue: unknown.
    """

    discovers = False

    def __init__(self, conn: Any, channel: Any, *, missing_is_empty: bool = False,
                 log: Any = None) -> None:  # fmt: skip
        super().__init__(conn, channel, log)
        self.missing_is_empty = missing_is_empty

    def _read(self, queues: Sequence[str]) -> Reading:
        conn = self._conn
        lengths: dict[str, int] = {}
        consumers: dict[str, int] = {}
        unknown: list[str] = []
        for name in queues:
            self.round_trips += 1
            try:
                _, count, consumer_count = self._channel.queue_declare(queue=name, passive=True)
            except conn.channel_errors as exc:
                if self.missing_is_empty:
                    # kombu's virtual channel stays usable; only NOT_FOUND means empty
                    # (a key of another type, say, is a queue it cannot read).
                    if isinstance(exc, ChannelError):
                        lengths[name] = 0
                    else:
                        unknown.append(name)
                    continue
                # NOT_FOUND and friends: AMQP closes the channel after one.
                unknown.append(name)
                close_quietly(self._channel)
                self._channel = conn.channel()
                continue
            lengths[name] = int(count)
            consumers[name] = int(consumer_count)
        if self.missing_is_empty:
            return Reading(lengths, unknown=tuple(unknown), absent=VIRTUAL_ABSENT)
        return Reading(lengths, consumers=consumers, unknown=tuple(unknown), absent=ABSENT)
