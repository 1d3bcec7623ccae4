"""The HTTP exporter: ``/metrics`` and ``/healthz``, nothing else, safe to expose.

It runs in the process that owns the metrics (the worker's main process) on a
few daemon threads and adds no dependency.  The seams: :mod:`.wire` parses and
writes HTTP, :mod:`.connections` owns the sockets (event loop, deadlines,
limits, eviction), :mod:`.routes` decides what to answer, and :class:`Exporter`
here is the running server with its public surface; :mod:`.webconfig` reads
the TLS and basic-auth file.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from ..logs import get_logger
from .routes import Authenticator, HealthCheck, MetricsRoutes, Renderer

__all__ = ["Authenticator", "Exporter", "HealthCheck", "Renderer", "start_exporter"]


class Exporter(MetricsRoutes):
    """A running exporter; :meth:`stop` closes its socket, connections and threads."""

    def start(self) -> Exporter:
        """Start serving on the loop thread; returns ``self``."""
        self._start_loop()
        return self

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def address(self) -> str:
        return str(self._listener.getsockname()[0])

    @property
    def tls(self) -> bool:
        return self._ssl is not None

    @property
    def url(self) -> str:
        """Where ``/metrics`` is served, as a person would open it (https under TLS)."""
        addr = self.address
        host = "localhost" if addr in ("0.0.0.0", "::") else f"[{addr}]" if ":" in addr else addr
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/metrics"

    def stats(self) -> dict[str, int]:
        """Counts since start: ``connections``, ``requests``, ``status_<code>``,
        ``tls_failed``, ``timed_out``, ``evicted``, ``refused``, ``open``."""
        snapshot = dict(self._stats)
        snapshot["open"] = len(self._conns)
        return snapshot


def _listen(addr: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Let a restarted worker bind at once while old connections sit in
        # TIME_WAIT; Linux still refuses a port another socket listens on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and addr == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((addr, port))
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    return sock


def start_exporter(
    registry: CollectorRegistry,
    *,
    port: int,
    addr: str = "0.0.0.0",
    health: HealthCheck | None = None,
    authenticate: Authenticator | None = None,
    ssl_context: ssl.SSLContext | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    max_connections: int = 128,
    timeout: float = 10.0,
    max_header_bytes: int = 32768,
    render_threads: int = 2,
    renderer: Renderer | None = None,
    log_format: str = "console",
    on_bind_failure: str = "The worker keeps running without its exporter.",
) -> Exporter | None:
    """Serve ``registry`` on ``addr:port`` from daemon threads.

    Args:
        registry: what ``/metrics`` exposes.
        port: TCP port; 0 picks a free one (see :attr:`Exporter.port`).
        addr: address to bind (``0.0.0.0``, ``::``, ``127.0.0.1`` ...).
        health: ``() -> (ok, details)`` for ``/healthz`` (200 or 503, JSON);
            called on the loop thread, so it must not block.
        authenticate: checks the ``Authorization`` header of every request
            (see :data:`Authenticator`); ``None`` serves everyone.
        ssl_context: a server-side TLS context; ``None`` serves plain HTTP.
        on_error: called with any exception raised by the exporter's own code
            or by a collector; never with a client's misbehaviour.
        max_connections: open connections at most; see the module docstring.
        timeout: seconds a client has to send a complete request head (or to
            take a response); also how long an idle keep-alive connection stays.
        max_header_bytes: size limit of a request head (answered with 431).
        render_threads: threads rendering ``/metrics`` concurrently.
        renderer: renders ``/metrics`` instead of ``registry`` (see :data:`Renderer`);
            ``registry`` is then not read by the exporter.
        log_format: ``console`` or ``json``, for the one error logged on failure.
        on_bind_failure: what the caller does when the port cannot be bound,
            said in the logged hint (a worker runs on; a standalone exporter exits).

    Returns:
        The running :class:`Exporter`, or ``None`` (after logging one error that
        names the address and port) when the port cannot be bound, so that the
        caller decides: a worker keeps working without its exporter.
    """
    log = get_logger(log_format)
    try:
        listener = _listen(addr, port)
    except OSError as exc:
        log.error(
            "metrics_exporter_not_started",
            reason=exc.strerror or str(exc),
            addr=addr,
            port=port,
            hint=f"port {port} on {addr} is taken or not bindable; set CSUITE_METRICS_PORT or "
            f"--metrics-port to another port. {on_bind_failure}",
        )
        return None
    return Exporter(
        listener,
        registry,
        health=health or (lambda: (True, {})),
        authenticate=authenticate,
        ssl_context=ssl_context,
        on_error=on_error or (lambda exc: None),
        max_connections=max(1, max_connections),
        timeout=timeout,
        max_header_bytes=max_header_bytes,
        render_threads=max(1, render_threads),
        renderer=renderer,
    ).start()
