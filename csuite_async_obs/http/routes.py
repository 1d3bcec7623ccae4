"""What the exporter answers: ``/metrics`` and ``/healthz``, nothing else.

* only ``GET``/``HEAD`` of :data:`PATHS`: other paths get 404, other methods
  405, broken requests 400/431/505 -- each a one-line body, never a listing, an
  echo of the request or a traceback;
* rendering ``/metrics`` happens on ``render_threads`` threads, bcrypt checks
  of passwords not seen before on one more (see :mod:`.webconfig`), so a flood
  of wrong passwords delays neither scrapes with known credentials nor
  ``/healthz``;
* the Prometheus text format, or OpenMetrics when the ``Accept`` header asks
  for it, gzip when accepted.

``health`` is called on the loop thread: it must be quick and never block.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
import zlib
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from .connections import BUSY, Connection, ConnectionServer, Lane
from .wire import Request, Response, http_response, plain

__all__ = ["PATHS", "Authenticator", "Body", "HealthCheck", "MetricsRoutes", "Renderer"]

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]
#: Called with the request's ``Authorization`` header (``None`` when absent);
#: returns whether the request may proceed.  If the object also has a
#: ``cached(header) -> bool | None`` method, a ``bool`` from it is taken as the
#: answer without calling the (slow) authenticator itself.
Authenticator = Callable[[str | None], bool]
#: A ``/metrics`` body: bytes, or a list of parts written as they are, never joined.
Body = bytes | list[bytes]
#: ``render(accept_header) -> (body, content_type)``: replaces the rendering of
#: the registry with ``prometheus_client``'s encoder chosen by the Accept header.
Renderer = Callable[[str], tuple[Body, str]]

PATHS = ("/metrics", "/healthz")
_AUTH_QUEUE = 16
# Answers of the auth lane, passed to the loop in place of a status code.
_AUTH_OK, _AUTH_DENIED = -1, -2


class MetricsRoutes(ConnectionServer):
    """Routes complete requests to ``/metrics`` (render lane) and ``/healthz`` (inline)."""

    def __init__(
        self,
        listener: socket.socket,
        registry: CollectorRegistry,
        *,
        health: HealthCheck,
        authenticate: Authenticator | None,
        ssl_context: ssl.SSLContext | None,
        on_error: Callable[[BaseException], None],
        max_connections: int,
        timeout: float,
        max_header_bytes: int,
        render_threads: int,
        renderer: Renderer | None = None,
    ) -> None:
        super().__init__(
            listener,
            ssl_context=ssl_context,
            on_error=on_error,
            max_connections=max_connections,
            timeout=timeout,
            max_header_bytes=max_header_bytes,
        )
        self._registry = registry
        self._renderer = renderer
        # The last gzipped body and its compression (see _gzip): swapped whole, so the
        # render threads need no lock.
        self._last_gzip: tuple[list[bytes], bytes] | None = None
        self._health = health
        self._authenticate = authenticate
        self._cached: Callable[[str | None], bool | None] | None = getattr(
            authenticate, "cached", None
        )
        self._render = Lane("csuite-async-obs-exporter-render", render_threads)
        self._auth = Lane("csuite-async-obs-exporter-auth", 1) if authenticate else None

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listening socket and every connection; wait for the threads."""
        if not self._stop_loop(timeout):
            return
        self._render.stop(timeout)
        if self._auth is not None:
            self._auth.stop(timeout)

    def _dispatch(self, conn: Connection, request: Request) -> None:
        head_only = request.method == "HEAD"
        keep = request.keep_alive
        conn.keep_alive = keep
        if request.path not in PATHS:
            self._send(conn, 404, plain(404, head_only=head_only, keep_alive=keep))
            return
        if request.method not in ("GET", "HEAD"):
            self._send(conn, 405, plain(405, head_only=head_only, keep_alive=keep,
                                         extra={"Allow": "GET, HEAD"}))  # fmt: skip
            return
        conn.state = BUSY
        conn.deadline = time.monotonic() + self._timeout
        self._want(conn, 0)
        if self._authenticate is not None:
            header = request.headers.get("authorization")
            verdict = self._cached(header) if self._cached is not None else None
            if verdict is False:
                self._send(conn, 401, self._unauthorised(request))
                return
            if verdict is None:
                assert self._auth is not None
                if self._auth.pending >= _AUTH_QUEUE:
                    conn.keep_alive = False
                    self._send(conn, 503, plain(503, head_only=head_only,
                                                 extra={"Retry-After": "1"}))  # fmt: skip
                    return
                self._auth.pending += 1
                self._auth.jobs.put(lambda: self._check(conn, request, header))
                return
        self._serve(conn, request)

    def _unauthorised(self, request: Request) -> Response:
        return plain(401, head_only=request.method == "HEAD", keep_alive=request.keep_alive,
                      extra={"WWW-Authenticate": 'Basic realm="csuite-async-obs"'})  # fmt: skip

    def _check(self, conn: Connection, request: Request, header: str | None) -> None:
        """Auth lane: the slow password check; the loop serves or refuses on its answer."""
        assert self._authenticate is not None
        try:
            ok = bool(self._authenticate(header))
        except Exception as exc:  # noqa: BLE001 -- counted; the client is refused
            self._on_error(exc)
            ok = False
        self._done.append((conn, request, _AUTH_OK if ok else _AUTH_DENIED, []))
        self._wake()

    def _serve(self, conn: Connection, request: Request) -> None:
        """On the loop thread, once authorised: /healthz inline, /metrics on the render lane."""
        if request.path == "/metrics":
            self._render.jobs.put(lambda: self._render_metrics(conn, request))
            return
        status, body = self._healthz(request)
        self._send(conn, status, body)

    def _healthz(self, request: Request) -> tuple[int, Response]:
        try:
            ok, detail = self._health()
            payload = json.dumps({"status": "ok" if ok else "unavailable", **detail}).encode()
            status = 200 if ok else 503
            return status, http_response(status, payload + b"\n", "application/json",
                                     head_only=request.method == "HEAD",
                                     keep_alive=request.keep_alive)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 -- counted; the client gets a bare 500
            self._on_error(exc)
            return 500, plain(500)

    def _render_metrics(self, conn: Connection, request: Request) -> None:
        """Render lane: the exposition of the registry."""
        try:
            accept = request.headers.get("accept", "")
            body: Body
            if self._renderer is not None:
                body, content_type = self._renderer(accept)
            else:
                encoder, content_type = choose_encoder(accept)
                body = encoder(self._registry)
            extra: dict[str, str] = {}
            if "gzip" in request.headers.get("accept-encoding", ""):
                body = self._gzip([body] if isinstance(body, bytes) else body)
                extra["Content-Encoding"] = "gzip"
            response = http_response(200, body, content_type, head_only=request.method == "HEAD",
                                 keep_alive=request.keep_alive, extra=extra)  # fmt: skip
            self._post(conn, request, 200, response)
        except Exception as exc:  # noqa: BLE001 -- counted; the client gets a bare 500
            self._on_error(exc)
            self._post(conn, request, 500, plain(500))

    def _gzip(self, parts: list[bytes]) -> bytes:
        """The parts gzipped (level 1, as Prometheus's scrapes want speed), the last
        answer's compressed bytes again when the parts are byte for byte the same (an
        idle worker's scrapes: a comparison of parts, most of them the very objects of
        the last render, not 3 ms of deflate at 2 MiB)."""
        last = self._last_gzip
        if last is not None and last[0] == parts:
            return last[1]
        deflate = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        compressed = b"".join([*map(deflate.compress, parts), deflate.flush()])
        self._last_gzip = (parts, compressed)
        return compressed

    def _settle(self, status: int) -> None:
        if status in (_AUTH_OK, _AUTH_DENIED):
            assert self._auth is not None
            self._auth.pending -= 1

    def _completed(self, conn: Connection, request: Request, status: int, body: Response) -> None:
        if status == _AUTH_OK:
            self._guarded(self._serve, conn, request)
            return
        if status == _AUTH_DENIED:
            status, body = 401, self._unauthorised(request)
        elif status == 500:
            conn.keep_alive = False
        self._guarded(self._send, conn, status, body)
