"""The HTTP exporter: ``/metrics`` and ``/healthz``, nothing else.

It runs on daemon threads of the process that owns the metrics (the worker's
main process), built on the standard library's threading HTTP server so that
it adds no dependency.  Why not ``prometheus_client.start_http_server``: it
answers every path, has no bound on connections and no per-connection
timeout, so one slow client can hold a thread forever.  Here:

* only ``GET``/``HEAD`` of ``/metrics`` and ``/healthz``; anything else is 404
  (or 405/400) with a one-line body, never a listing or a traceback;
* each connection has a socket timeout, and at most ``max_connections`` are
  served at once; extra connections are closed at once instead of queueing
  behind a stuck one;
* the Prometheus text format, or OpenMetrics when the ``Accept`` header asks
  for it, gzip when accepted;
* optional TLS and basic auth from a Prometheus exporter web-config file
  (:mod:`csuite_async_obs.webconfig`).
"""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from .logs import get_logger

__all__ = ["Exporter", "HealthCheck", "start_exporter"]

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]
Authenticator = Callable[[str | None], bool]

_MAX_BODY_LOG = 200


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Let a restarted worker bind at once while old sockets sit in TIME_WAIT.
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        family: socket.AddressFamily,
        max_connections: int,
    ) -> None:
        self.address_family = family
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            # Over the connection bound: drop this one rather than let it wait
            # behind slow clients (Prometheus retries on its next scrape).
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Never print tracebacks for a client's misbehaviour to the worker's stderr.
        pass


class Exporter:
    """A running exporter; :meth:`stop` closes the socket and its threads."""

    def __init__(self, server: _Server, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def address(self) -> str:
        return str(self._server.server_address[0])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _make_handler(
    registry: CollectorRegistry,
    health: HealthCheck,
    authenticate: Authenticator | None,
    on_error: Callable[[BaseException], None],
    socket_timeout: float,
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "csuite-async-obs"
        sys_version = ""
        protocol_version = "HTTP/1.1"
        # StreamRequestHandler applies it to the socket: a slow client is dropped.
        timeout = socket_timeout

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def send_error(
            self, code: int, message: str | None = None, explain: str | None = None
        ) -> None:
            # The base class would render an HTML page that echoes the request line.
            body = f"{code} {self.responses.get(code, ('error',))[0]}\n".encode()
            try:
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD" and code >= 200 and code not in (204, 304):
                    self.wfile.write(body)
            except OSError:
                pass
            self.close_connection = True

        def _reply(
            self, code: int, body: bytes, content_type: str, extra: dict[str, str] | None = None
        ) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _authorised(self) -> bool:
            if authenticate is None or authenticate(self.headers.get("Authorization")):
                return True
            body = b"401 Unauthorized\n"
            self._reply(
                401,
                body,
                "text/plain; charset=utf-8",
                {"WWW-Authenticate": 'Basic realm="csuite-async-obs"'},
            )
            return False

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path not in ("/metrics", "/healthz"):
                self.send_error(404)
                return
            if not self._authorised():
                return
            try:
                if path == "/metrics":
                    encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                    body = encoder(registry)
                    extra: dict[str, str] = {}
                    if "gzip" in self.headers.get("Accept-Encoding", ""):
                        body = gzip.compress(body, compresslevel=1)
                        extra["Content-Encoding"] = "gzip"
                    self._reply(200, body, content_type, extra)
                else:
                    ok, detail = health()
                    payload = json.dumps({"status": "ok" if ok else "unavailable", **detail})
                    self._reply(200 if ok else 503, payload.encode() + b"\n", "application/json")
            except OSError:
                self.close_connection = True
            except Exception as exc:  # noqa: BLE001 -- counted, and the client gets a bare 500
                on_error(exc)
                self.send_error(500)

        def do_HEAD(self) -> None:
            self.do_GET()

        def _refuse(self) -> None:
            self.send_error(405)

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse

    return Handler


def start_exporter(
    registry: CollectorRegistry,
    *,
    port: int,
    addr: str = "0.0.0.0",
    health: HealthCheck | None = None,
    authenticate: Authenticator | None = None,
    ssl_context: ssl.SSLContext | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    max_connections: int = 32,
    timeout: float = 10.0,
    log_format: str = "console",
) -> Exporter | None:
    """Serve ``registry`` on ``addr:port`` from daemon threads.

    Returns ``None`` (after logging one error that names the address and port)
    when the port cannot be bound, so that the caller -- a worker -- keeps
    working without its exporter.
    """
    log = get_logger(log_format)
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    handler = _make_handler(
        registry,
        health or (lambda: (True, {})),
        authenticate,
        on_error or (lambda exc: None),
        timeout,
    )
    try:
        server = _Server((addr, port), handler, family=family, max_connections=max_connections)
    except OSError as exc:
        log.error(
            "metrics_exporter_not_started",
            reason=exc.strerror or str(exc),
            addr=addr,
            port=port,
            hint=f"port {port} on {addr} is taken or not bindable; set CSUITE_METRICS_PORT or "
            "--metrics-port to another port (0 turns the exporter off). The worker keeps running.",
        )
        return None
    if ssl_context is not None:
        server.socket = ssl_context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    thread = threading.Thread(
        target=server.serve_forever, name="csuite-async-obs-exporter", daemon=True
    )
    thread.start()
    return Exporter(server, thread)
