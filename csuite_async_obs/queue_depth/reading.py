"""One read of a broker's queues, and the interface every broker's reader implements.

A reader owns one connection of its own, opened by
:func:`~.readers.open_reader` with socket timeouts and no connection retries,
so that a dead or hung broker costs a poll at most its timeout; after an error
the poller closes the reader and opens a new one.  A queue the broker cannot report (``NOT_FOUND``, an
error) is *unknown*, never 0: it gets no sample and is listed in ``/healthz``.
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..logs import get_logger

__all__ = [
    "AGE",
    "CONSUMERS",
    "DISCOVERY_INTERVAL",
    "UNACKED",
    "BrokerReader",
    "Reading",
    "close_quietly",
]


#: The per-queue metrics a reader may be unable to give (listed in ``Reading.absent``).
AGE = "celery_queue_oldest_message_age_seconds"
UNACKED = "celery_queue_unacked_messages"
CONSUMERS = "celery_queue_consumers"

#: Seconds between two reads of the broker's queue list for glob entries (and,
#: on Redis, of the binding tables that attribute unacked messages to queues).
DISCOVERY_INTERVAL = 60.0


@dataclass(frozen=True)
class Reading:
    """One successful read of the broker.

    ``lengths`` holds the queues whose ready count is known; ``unknown`` the
    queues the broker could not report.  ``oldest_published_at`` holds, for
    non-empty queues whose oldest message carries a publish time the reader can
    see, that Unix time.  ``unacked`` and ``consumers`` hold per-queue counts
    where the broker tells them.  ``absent`` names the metrics this reader
    cannot give at all (``/healthz`` lists them, the poller logs them once): a
    metric in ``absent`` gets no series, which a rule on ``absent()`` can see.
    """

    lengths: Mapping[str, int]
    oldest_published_at: Mapping[str, float] = field(default_factory=dict)
    unacked: Mapping[str, int] = field(default_factory=dict)
    consumers: Mapping[str, int] = field(default_factory=dict)
    unknown: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    round_trips: int = 0
    duration: float = 0.0
    taken_at: float = 0.0

    @property
    def ages_supported(self) -> bool:
        return AGE not in self.absent


class BrokerReader(ABC):
    """Reads queue lengths over one broker connection; one thread owns a reader.

    Subclasses implement :meth:`_read` and, where the broker can list its
    queues, :meth:`discover`.
    """

    #: Whether :meth:`discover` can list the broker's queues (for glob entries).
    discovers = True
    #: True for a stand-in opened because a better reader could not be reached:
    #: the poller replaces it after a while to try the better one again.
    fallback = False

    def __init__(self, conn: Any, channel: Any, log: Any = None) -> None:
        self._conn = conn
        self._channel = channel
        self.log = log or get_logger()
        #: Request batches sent to the broker by :meth:`read` and :meth:`discover`
        #: (a pipeline is one batch: one round trip).
        self.round_trips = 0

    def read(self, queues: Sequence[str]) -> Reading:
        """Read the lengths (and where the broker tells, ages and unacked) of ``queues``."""
        start = time.monotonic()
        before = self.round_trips
        reading = self._read(queues)
        return replace(
            reading,
            round_trips=self.round_trips - before,
            duration=time.monotonic() - start,
            taken_at=time.time(),
        )

    @abstractmethod
    def _read(self, queues: Sequence[str]) -> Reading: ...

    def discover(self) -> list[str]:
        """Queues the broker knows of, for glob entries; ``[]`` where it cannot tell."""
        return []

    def close(self) -> None:
        """Close the connection; errors on the way are ignored (the broker may be gone)."""
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            close_quietly(conn)


def close_quietly(resource: Any) -> None:
    # Closing a connection to a dead broker may raise anything.
    with contextlib.suppress(Exception):
        resource.close()
