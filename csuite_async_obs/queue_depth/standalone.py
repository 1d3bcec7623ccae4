"""The standalone queue-depth exporter: no worker, no events, one broker.

``csuite-async-obs exporter`` runs this.  It polls the broker's queues (see
:mod:`csuite_async_obs.queue_depth`) and serves ``/metrics`` and ``/healthz``.
In a fleet it is the one place queue depth comes from (workers run with
``CSUITE_QUEUE_DEPTH=false``): N workers polling the same broker would load
it N times and serve N copies of every series.  It keeps reporting when every
worker is dead, which is when the backlog matters most.

``/healthz`` answers 200 while the last successful poll is recent (two poll
intervals plus the timeout), else 503: the exporter is up but cannot vouch
for its numbers.
"""

from __future__ import annotations

import signal
import ssl
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from ..http.server import Authenticator, Exporter, start_exporter
from ..logs import get_logger
from ..metrics.const_labels import ConstLabels
from ..metrics.errors import ErrorReporter, error_counter
from .poller import QueueDepthPoller

if TYPE_CHECKING:
    from celery import Celery

    from ..config.options import ObsSettings

__all__ = ["ExporterNotStarted", "run_standalone_exporter"]


class ExporterNotStarted(RuntimeError):
    """The exporter's port could not be bound (the reason was logged)."""


def run_standalone_exporter(
    app: Celery,
    settings: ObsSettings,
    port: int | None = None,
    addr: str | None = None,
    stop_event: threading.Event | None = None,
    *,
    registry: CollectorRegistry | None = None,
    on_ready: Callable[[Exporter, QueueDepthPoller], None] | None = None,
    authenticate: Authenticator | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Serve the queue metrics of ``app``'s broker until stopped.

    Blocks until ``stop_event`` is set or, when called from the main thread,
    until SIGINT or SIGTERM; then stops the poller and the HTTP server and
    returns.

    Args:
        app: the Celery app whose broker and ``task_queues`` are used.
        settings: queue options (``queues``, ``queue_exclude``,
            ``queue_poll_interval``, ``queue_poll_timeout``,
            ``max_queue_names``), ``const_labels`` and ``log_format``.
        port: port to serve on; default ``settings.metrics_port``.
        addr: address to bind; default ``settings.metrics_addr``.
        stop_event: set it to stop the exporter.
        registry: where to register the metrics; a new one by default.
        on_ready: called once serving, with the exporter (its bound ``port``)
            and the poller.
        authenticate: checks the ``Authorization`` header (web config).
        ssl_context: serves HTTPS with it (web config).

    Raises:
        ExporterNotStarted: the port could not be bound.
    """
    stop = stop_event if stop_event is not None else threading.Event()
    registry = registry if registry is not None else CollectorRegistry()
    log = get_logger(settings.log_format)
    poller = QueueDepthPoller.from_settings(app, settings)
    report = ErrorReporter(error_counter(registry, ConstLabels.of(settings.const_labels)), log)
    poller.attach(registry, settings.const_labels, on_error=lambda exc: report("collect", exc))
    exporter = start_exporter(
        registry,
        port=settings.metrics_port if port is None else port,
        addr=settings.metrics_addr if addr is None else addr,
        health=poller.health,
        authenticate=authenticate,
        ssl_context=ssl_context,
        on_error=lambda exc: report("exporter", exc),
        log_format=settings.log_format,
        on_bind_failure="The exporter exits.",
    )
    if exporter is None:
        poller.stop()
        raise ExporterNotStarted("the queue-depth exporter could not bind its port")
    restore = _handle_signals(stop)
    try:
        poller.start()
        log.info(
            "queue_depth_exporter_started",
            url=exporter.url,
            broker=app.connection_for_read().as_uri(),  # as_uri() masks the password
            poll_interval=poller.interval,
        )
        if on_ready is not None:
            on_ready(exporter, poller)
        # A bounded wait keeps the main thread responsive to signals.
        while not stop.wait(0.5):
            pass
    finally:
        restore()
        exporter.stop()
        poller.stop()
        log.info("queue_depth_exporter_stopped")


def _handle_signals(stop: threading.Event) -> Callable[[], None]:
    """Make SIGINT/SIGTERM set ``stop`` (main thread only); return the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, on_signal)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
