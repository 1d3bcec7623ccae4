"""The queue-depth poller: reads the broker on daemon threads, keeps the last state.

:class:`QueueDepthPoller` polls every ``interval`` seconds and keeps the last
result in plain memory, as one immutable :class:`PollState` swapped in by a
single assignment.  Nothing on the poll threads touches a prometheus_client
metric: in the prefork main process a pool child can be forked at any instant,
and a child that inherits a metric lock held by this thread hangs on it forever.

The broker I/O runs on a second thread so that the poll thread can give up on
it after ``timeout`` seconds (counted as a failed poll) without the scrape, or
the next poll, waiting for it.  The connection has socket timeouts as well and
is thrown away after any error, so a poll normally returns within the timeout
and the next one reconnects.

**Broker down.**  The last readings stay exposed, unchanged, while
``celery_queue_length_poll_errors_total`` rises and
``celery_queue_length_last_success_timestamp_seconds`` stops moving.  Dropping
the series instead would turn every graph and threshold alert into "no data"
at the moment the backlog matters most; staleness is an explicit signal
(``time() - celery_queue_length_last_success_timestamp_seconds``).  The first
good poll replaces the readings.
"""

from __future__ import annotations

import contextlib
import queue as queue_mod
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from kombu.exceptions import OperationalError
from prometheus_client.registry import CollectorRegistry

from ..logs import get_logger
from .collector import QueueDepthCollector
from .readers import open_reader
from .reading import DISCOVERY_INTERVAL, BrokerReader, Reading
from .selection import QueueSelection

if TYPE_CHECKING:
    from celery import Celery

    from ..config.options import ObsSettings

__all__ = [
    "DISCOVERY_INTERVAL",
    "PollState",
    "QueueDepthPoller",
    "start_queue_depth",
]

_LOG_REPEAT = 60.0

ConsumedQueues = Callable[[], Iterable[str]] | Iterable[str]


def _control_exchanges(app: Celery) -> list[str]:
    """Celery's own exchanges, whose queues are per process, not task backlogs."""
    control = app.conf.control_exchange or "celery"
    return [f"{control}.pidbox", f"reply.{control}.pidbox", app.conf.event_exchange or "celeryev"]


@dataclass(frozen=True)
class PollState:
    """What the collector and health check read: replaced whole after every poll."""

    reading: Reading | None = None
    errors: int = 0
    polls: int = 0
    last_success: float = 0.0
    last_error: str = ""
    failing: bool = False
    dropped: int = 0


class _Job:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: tuple[Reading, int] | None = None
        self.error: BaseException | None = None


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError):
        return False
    try:
        import redis.exceptions

        if isinstance(exc, redis.exceptions.ConnectionError):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, (OSError, OperationalError))


class QueueDepthPoller:
    """Polls queue depth on daemon threads; :attr:`state` is the last result.

    Args:
        app: the Celery app whose broker is read.
        selection: which queues (see :class:`QueueSelection`).
        consumed: the queues a worker consumes, or a callable returning them
            (evaluated at every poll, so queues added at run time count; a
            queue once consumed stays polled after its consumer is cancelled).
        interval: seconds between the starts of two polls.
        timeout: seconds a poll may take; a slower one counts as failed.
        log_format: rendering of the package's logs.
        rabbitmq_api_url: RabbitMQ's management API (see :func:`~.readers.open_reader`).
    """

    def __init__(
        self,
        app: Celery,
        selection: QueueSelection,
        *,
        consumed: ConsumedQueues = (),
        interval: float = 5.0,
        timeout: float = 3.0,
        log_format: str = "console",
        discovery_interval: float = DISCOVERY_INTERVAL,
        rabbitmq_api_url: str = "",
    ) -> None:
        self.app = app
        self.selection = selection
        self.interval = interval
        self.timeout = timeout
        self.discovery_interval = discovery_interval
        self.rabbitmq_api_url = rabbitmq_api_url
        self._consumed = consumed if callable(consumed) else tuple(consumed)
        self._last_consumed: tuple[str, ...] = ()
        self._skip_exchanges = _control_exchanges(app)
        self.log = get_logger(log_format)
        self._state = PollState()
        self._stop = threading.Event()
        self._poll_lock = threading.Lock()
        self._jobs: queue_mod.SimpleQueue[_Job | None] = queue_mod.SimpleQueue()
        self._job: _Job | None = None
        self._thread: threading.Thread | None = None
        self._io_thread: threading.Thread | None = None
        # Owned by the I/O thread only.
        self._reader: BrokerReader | None = None
        self._reader_opened_at = 0.0
        self._globs_warned = False
        self._discovered: list[str] | None = None
        self._discovered_at = 0.0
        self._last_log = -_LOG_REPEAT
        self._attached: list[tuple[CollectorRegistry, QueueDepthCollector]] = []

    @classmethod
    def from_settings(
        cls, app: Celery, settings: ObsSettings, consumed: ConsumedQueues = ()
    ) -> QueueDepthPoller:
        """A poller configured by the ``queues``/``queue_*`` options of ``settings``."""
        selection = QueueSelection.build(
            app, settings.queues, settings.queue_exclude, settings.max_queue_names
        )
        return cls(
            app,
            selection,
            consumed=consumed,
            interval=settings.queue_poll_interval,
            timeout=settings.queue_poll_timeout,
            log_format=settings.log_format,
            rabbitmq_api_url=settings.rabbitmq_api_url,
        )

    @property
    def state(self) -> PollState:
        """The last poll state (an immutable object; read it once per use)."""
        return self._state

    # ------------------------------------------------------------------ I/O thread

    def _consumed_names(self) -> tuple[str, ...]:
        if not callable(self._consumed):
            return self._consumed
        # Worker state read mid-change may raise: keep the last list then.
        with contextlib.suppress(Exception):
            now = [str(q) for q in self._consumed()]
            # A queue stays polled after its consumer is cancelled (control
            # cancel_consumer, -Q changes): a queue nobody consumes any more is
            # exactly the backlog an alert must see grow.
            self._last_consumed = tuple(dict.fromkeys([*self._last_consumed, *now]))
        return self._last_consumed

    def _read(self, reader: BrokerReader) -> tuple[Reading, int]:
        if self.selection.patterns and not reader.discovers:
            if not self._globs_warned:
                self._globs_warned = True
                self.log.warning(
                    "queue_depth_globs_unsupported",
                    patterns=list(self.selection.patterns),
                    reader=type(reader).__name__,
                    hint="this broker's reader cannot list queues; name them, or on RabbitMQ "
                    "make the management API reachable (CSUITE_RABBITMQ_API_URL)",
                )
        elif self.selection.patterns:
            now = time.monotonic()
            if self._discovered is None or now - self._discovered_at >= self.discovery_interval:
                self._discovered = reader.discover()
                self._discovered_at = now
        names, dropped = self.selection.resolve(self._consumed_names(), self._discovered or ())
        return reader.read(names), dropped

    def _collect(self) -> tuple[Reading, int]:
        reader = self._reader
        if (
            reader is not None
            and reader.fallback
            and time.monotonic() - self._reader_opened_at >= self.discovery_interval
        ):
            self._close_reader()  # try the better reader again
            reader = None
        if reader is not None:
            try:
                return self._read(reader)
            except Exception as exc:
                self._close_reader()
                # A connection that worked at the last poll may have been cut by
                # a broker restart since: try once more on a new one.
                if not _is_connection_error(exc):
                    raise
        reader = self._reader = open_reader(
            self.app,
            self.timeout,
            self._skip_exchanges,
            self.log,
            self.rabbitmq_api_url,
            discovery_interval=self.discovery_interval,
        )
        self._reader_opened_at = time.monotonic()
        try:
            return self._read(reader)
        except BaseException:
            self._close_reader()
            raise

    def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    def _io_loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                break
            try:
                job.result = self._collect()
            except Exception as exc:  # noqa: BLE001 -- handed to the poll thread, counted there
                job.error = exc
            finally:
                job.done.set()
        self._close_reader()

    def _ensure_io_thread(self) -> None:
        if self._io_thread is None or not self._io_thread.is_alive():
            self._io_thread = threading.Thread(
                target=self._io_loop, name="csuite-queue-depth-io", daemon=True
            )
            self._io_thread.start()

    # ------------------------------------------------------------------ polling

    def poll_once(self) -> bool:
        """Poll now, waiting at most ``timeout`` seconds; return whether it succeeded."""
        with self._poll_lock:
            self._ensure_io_thread()
            previous = self._job
            if previous is not None and not previous.done.is_set():
                # Still stuck on the broker past its timeout: no second request
                # piles up behind it, and this poll counts as failed too.
                return self._failed("the previous poll is still waiting on the broker")
            job = self._job = _Job()
            self._jobs.put(job)
            if not job.done.wait(self.timeout):
                return self._failed(f"poll took longer than {self.timeout:g}s")
            if job.error is not None or job.result is None:
                exc = job.error
                return self._failed(f"{type(exc).__name__}: {exc}" if exc else "no result")
            reading, dropped = job.result
            old = self._state
            self._state = PollState(
                reading=reading,
                errors=old.errors,
                polls=old.polls + 1,
                last_success=time.time(),
                dropped=dropped,
            )
        if old.failing:
            self.log.info("queue_depth_poll_recovered", failed_polls_total=old.errors,
                          queues=len(reading.lengths))  # fmt: skip
        if reading.absent and (old.reading is None or old.reading.absent != reading.absent):
            self.log.warning(
                "queue_depth_metrics_absent",
                metrics=list(reading.absent),
                reader=type(self._reader).__name__ if self._reader else None,
                hint="this broker's reader cannot tell them; see /healthz",
            )
        if dropped and dropped != old.dropped:
            self.log.warning(
                "queue_depth_queues_dropped",
                dropped=dropped,
                hint="more queues match CSUITE_QUEUES globs than CSUITE_MAX_QUEUE_NAMES allows",
            )
        return True

    def _failed(self, error: str) -> bool:
        old = self._state
        self._state = replace(
            old, errors=old.errors + 1, polls=old.polls + 1, last_error=error, failing=True
        )
        now = time.monotonic()
        if not old.failing or now - self._last_log >= _LOG_REPEAT:
            self._last_log = now
            self.log.warning("queue_depth_poll_failed", error=error, failed_polls_total=old.errors + 1,
                             hint="queue metrics keep their last values until a poll succeeds")  # fmt: skip
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.poll_once()
            except Exception as exc:  # noqa: BLE001 -- the loop must outlive any bug of a poll
                self._failed(f"{type(exc).__name__}: {exc}")
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def start(self) -> QueueDepthPoller:
        """Start polling (the first poll at once) on a daemon thread."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="csuite-queue-depth", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop polling, close the broker connection and unregister attached collectors."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._io_thread is not None:
            self._jobs.put(None)
            # A thread stuck on a dead broker is a daemon: it is left behind.
            self._io_thread.join(timeout)
            self._io_thread = None
        for registry, collector in self._attached:
            with contextlib.suppress(KeyError):  # unregistered by someone else
                registry.unregister(collector)
        self._attached.clear()

    # ------------------------------------------------------------------ exposure

    def attach(
        self,
        registry: CollectorRegistry,
        const_labels: tuple[tuple[str, str], ...] = (),
        on_error: Callable[[BaseException], None] | None = None,
    ) -> QueueDepthCollector:
        """Register a :class:`QueueDepthCollector` of this poller on ``registry``."""
        collector = QueueDepthCollector(self, const_labels, on_error)
        registry.register(collector)
        self._attached.append((registry, collector))
        return collector

    def healthy(self, now: float | None = None) -> bool:
        """Whether a poll succeeded within two intervals plus the timeout."""
        state = self._state
        now = time.time() if now is None else now
        return bool(state.last_success) and now - state.last_success <= (
            2 * self.interval + self.timeout
        )

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``(ok, detail)`` for an exporter's ``/healthz``."""
        state = self._state
        reading = state.reading
        return self.healthy(), {
            "queue_depth_last_success": state.last_success or None,
            "queue_depth_poll_errors": state.errors,
            "queue_depth_last_error": state.last_error or None,
            "queues": len(reading.lengths) if reading else 0,
            "unknown_queues": list(reading.unknown) if reading else [],
            "absent_metrics": list(reading.absent) if reading else [],
            "globs_unmatched": list(self.selection.patterns)
            if self._reader is not None and not self._reader.discovers
            else [],
        }


def start_queue_depth(
    app: Celery,
    registry: CollectorRegistry,
    settings: ObsSettings,
    consumed_queues: ConsumedQueues = (),
    on_error: Callable[[BaseException], None] | None = None,
) -> QueueDepthPoller:
    """Start polling ``app``'s broker and expose the queue metrics on ``registry``.

    Args:
        app: the Celery app.
        registry: where the collector is registered.
        settings: ``queues``, ``queue_exclude``, ``queue_poll_interval``,
            ``queue_poll_timeout``, ``max_queue_names``, ``const_labels`` and
            ``log_format`` are used.
        consumed_queues: the worker's consumed queue names, or a callable
            returning them (see :class:`QueueDepthPoller`).
        on_error: called with an exception raised while building a scrape.

    Returns:
        The running poller; its :meth:`~QueueDepthPoller.stop` also unregisters
        the collector.
    """
    poller = QueueDepthPoller.from_settings(app, settings, consumed_queues)
    poller.attach(registry, settings.const_labels, on_error)
    return poller.start()
