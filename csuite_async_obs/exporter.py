"""The HTTP exporter: ``/metrics`` and ``/healthz``, nothing else, safe to expose.

It runs in the process that owns the metrics (the worker's main process) on a
few daemon threads and adds no dependency.  Design choice: an event loop
(``selectors``) owns every connection, and threads are used only for the work
that a complete, well-formed request asks for.  A thread per connection (the
standard library's ``ThreadingHTTPServer``, ``prometheus_client``'s
``start_http_server``) lets every client that opens a socket and never finishes
its request hold a thread, and a bound on threads then lets a handful of such
clients lock out Prometheus.  Here:

* a connection costs a buffer until its request head is complete; the head
  (request line and headers, TLS handshake included) must arrive within
  ``timeout`` seconds *in total*, however slowly it trickles, and be at most
  ``max_header_bytes``; the response must be taken within ``timeout`` too;
* at most ``max_connections`` are open at once; when full, a new connection
  evicts the oldest one that has not sent a complete request (a slow or idle
  client), so clients that never finish cannot lock out a scrape;
* only ``GET``/``HEAD`` of ``/metrics`` and ``/healthz``: other paths get 404,
  other methods 405, broken requests 400/431/505 -- each a one-line body,
  never a listing, an echo of the request or a traceback;
* rendering ``/metrics`` happens on ``render_threads`` threads, bcrypt checks
  of passwords not seen before on one more (see
  :mod:`csuite_async_obs.webconfig`), so a flood of wrong passwords delays
  neither scrapes with known credentials nor ``/healthz``;
* optional TLS (plain HTTP to a TLS port fails the handshake and is closed)
  and HTTP basic auth, from a Prometheus exporter web-config file;
* the Prometheus text format, or OpenMetrics when the ``Accept`` header asks
  for it, gzip when accepted; HTTP/1.1 keep-alive as Prometheus uses it;
* a process forked from the worker (a prefork pool child started after the
  exporter, e.g. to replace one that died or hit ``--max-tasks-per-child``)
  closes its copies of the exporter's sockets at once, so that no child can keep
  the metrics port bound after the worker has gone.

``health`` is called on the loop thread: it must be quick and never block.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import json
import os
import queue
import re
import selectors
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from .logs import get_logger

__all__ = ["Authenticator", "Exporter", "HealthCheck", "Renderer", "start_exporter"]

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]
#: Called with the request's ``Authorization`` header (``None`` when absent);
#: returns whether the request may proceed.  If the object also has a
#: ``cached(header) -> bool | None`` method, a ``bool`` from it is taken as the
#: answer without calling the (slow) authenticator itself.
Authenticator = Callable[[str | None], bool]
#: ``render(accept_header) -> (body, content_type)``: replaces the rendering of
#: the registry with ``prometheus_client``'s encoder chosen by the Accept header.
Renderer = Callable[[str], tuple[bytes, str]]

PATHS = ("/metrics", "/healthz")
_MAX_HEADERS = 100
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 1 << 20
_AUTH_QUEUE = 16
_ACCEPT_BATCH = 64

_REQUEST_LINE = re.compile(rb"^([A-Z]{1,16}) (\S{1,8000}) HTTP/(\d)\.(\d)$")
_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

# Connection states.
_HANDSHAKE, _READ, _BUSY, _WRITE, _LINGER = range(5)
# Answers of the auth lane, passed to the loop in place of a status code.
_AUTH_OK, _AUTH_DENIED = -1, -2


class _HTTPError(Exception):
    """A request the exporter refuses: answered with ``status`` and closed."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Request:
    __slots__ = ("headers", "keep_alive", "method", "path")

    def __init__(self, method: str, path: str, headers: dict[str, str], keep_alive: bool) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.keep_alive = keep_alive


def _parse_head(head: bytes) -> _Request:
    """Parse a request head (without its blank line); raise :class:`_HTTPError` if broken."""
    lines = head.split(b"\n")
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    match = _REQUEST_LINE.match(lines[0])
    if match is None:
        raise _HTTPError(400)
    method, target, major, minor = match.groups()
    if major != b"1":
        raise _HTTPError(505)
    headers: dict[str, str] = {}
    if len(lines) - 1 > _MAX_HEADERS:
        raise _HTTPError(431)
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        # No obsolete line folding, no space before the colon, no control characters.
        if not sep or not _TOKEN.match(name) or _BAD_VALUE.search(value):
            raise _HTTPError(400)
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        if key in headers:
            if key in ("content-length", "authorization", "host"):
                raise _HTTPError(400)
            text = headers[key] + ", " + text
        headers[key] = text
    length = headers.get("content-length")
    if length is not None and (not length.isdigit() or len(length) > 18):
        raise _HTTPError(400)
    # A body is never read: a request that announces one ends its connection.
    has_body = bool(length and int(length)) or "transfer-encoding" in headers
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep_alive = minor != b"0" and "close" not in tokens and not has_body
    path = target.split(b"?", 1)[0].decode("latin-1")
    return _Request(method.decode("ascii"), path, headers, keep_alive)


def _response(status: int, body: bytes, content_type: str, *, head_only: bool = False,
              keep_alive: bool = True, extra: dict[str, str] | None = None) -> bytes:  # fmt: skip
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        f"Date: {formatdate(usegmt=True)}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "X-Content-Type-Options: nosniff",
        "Connection: keep-alive" if keep_alive else "Connection: close",
    ]
    lines += [f"{key}: {value}" for key, value in (extra or {}).items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def _plain(status: int, *, head_only: bool = False, keep_alive: bool = False,
           extra: dict[str, str] | None = None) -> bytes:  # fmt: skip
    body = f"{status} {HTTPStatus(status).phrase}\n".encode()
    return _response(status, body, "text/plain; charset=utf-8", head_only=head_only,
                     keep_alive=keep_alive, extra=extra)  # fmt: skip


class _Conn:
    __slots__ = ("buf", "closed", "deadline", "drained", "events", "keep_alive", "out", "sent",
                 "served", "since", "sock", "state")  # fmt: skip

    def __init__(self, sock: socket.socket, state: int, now: float, deadline: float) -> None:
        self.sock = sock
        self.state = state
        self.since = now
        self.deadline = deadline
        self.buf = bytearray()
        self.out = b""
        self.sent = 0
        self.events = 0
        self.keep_alive = False
        self.closed = False
        self.drained = 0
        self.served = 0


class _Lane:
    """A fixed set of daemon threads running jobs from one queue."""

    def __init__(self, name: str, threads: int) -> None:
        self.jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.pending = 0
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            job()

    def stop(self, timeout: float) -> None:
        for _ in self._threads:
            self.jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


_LIVE: weakref.WeakSet[Exporter] = weakref.WeakSet()


def _forget_after_fork() -> None:
    for exporter in list(_LIVE):
        exporter._close_after_fork()


# billiard forks pool children with os.fork(), which runs these hooks.
os.register_at_fork(after_in_child=_forget_after_fork)


class Exporter:
    """A running exporter; :meth:`stop` closes its socket, connections and threads."""

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
        self._listener = listener
        self._registry = registry
        self._renderer = renderer
        self._health = health
        self._authenticate = authenticate
        self._cached: Callable[[str | None], bool | None] | None = getattr(
            authenticate, "cached", None
        )
        self._ssl = ssl_context
        self._on_error = on_error
        self._max_connections = max_connections
        self._timeout = timeout
        self._max_header = max_header_bytes
        self._conns: dict[int, _Conn] = {}
        self._stats: collections.Counter[str] = collections.Counter()
        self._done: collections.deque[tuple[_Conn, _Request, int, bytes]] = collections.deque()
        self._stopping = False
        self._accept_paused_until = 0.0
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        listener.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._render = _Lane("csuite-async-obs-exporter-render", render_threads)
        self._auth = _Lane("csuite-async-obs-exporter-auth", 1) if authenticate else None
        self._thread = threading.Thread(
            target=self._loop, name="csuite-async-obs-exporter", daemon=True
        )
        _LIVE.add(self)
        self._thread.start()

    # ------------------------------------------------------------------ public

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def address(self) -> str:
        return str(self._listener.getsockname()[0])

    @property
    def tls(self) -> bool:
        return self._ssl is not None

    def stats(self) -> dict[str, int]:
        """Counts since start: ``connections``, ``requests``, ``status_<code>``,
        ``tls_failed``, ``timed_out``, ``evicted``, ``refused``, ``open``."""
        snapshot = dict(self._stats)
        snapshot["open"] = len(self._conns)
        return snapshot

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listening socket and every connection; wait for the threads."""
        if self._stopping:
            return
        self._stopping = True
        _LIVE.discard(self)
        self._wake()
        self._thread.join(timeout)
        self._render.stop(timeout)
        if self._auth is not None:
            self._auth.stop(timeout)

    def _close_after_fork(self) -> None:
        """In a forked child (no loop thread there): close the inherited descriptors."""
        self._stopping = True
        _LIVE.discard(self)
        for sock in [self._listener, self._wake_r, self._wake_w,
                     *(conn.sock for conn in self._conns.values())]:  # fmt: skip
            with contextlib.suppress(OSError):
                sock.close()
        with contextlib.suppress(OSError, ValueError):
            self._selector.close()

    # ------------------------------------------------------------------ loop

    def _loop(self) -> None:
        try:
            while not self._stopping:
                try:
                    self._once()
                except Exception as exc:  # noqa: BLE001 -- the loop must outlive any bug
                    self._on_error(exc)
                    time.sleep(0.05)
        finally:
            for conn in list(self._conns.values()):
                self._close(conn)
            self._selector.close()
            self._listener.close()
            self._wake_r.close()
            self._wake_w.close()

    def _once(self) -> None:
        now = time.monotonic()
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self._selector.register(self._listener, selectors.EVENT_READ, None)
        wait = 0.5
        if self._conns:
            wait = max(0.0, min(wait, min(c.deadline for c in self._conns.values()) - now))
        for key, _events in self._selector.select(wait):
            conn = key.data
            if conn is None:
                if key.fileobj is self._listener:
                    self._accept()
                else:
                    self._drain_wake()
                continue
            self._guarded(self._service, conn)
        self._deliver()
        now = time.monotonic()
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            if conn.state in (_HANDSHAKE, _READ) and (conn.buf or not conn.served):
                self._stats["timed_out"] += 1  # a slow client: its request never completed
            elif conn.state == _BUSY:
                self._stats["render_timed_out"] += 1
            elif conn.state == _WRITE:
                self._stats["write_timed_out"] += 1
            self._close(conn)

    def _guarded(self, step: Callable[..., None], conn: _Conn, *args: Any) -> None:
        """Run one step of a connection; whatever it raises ends that connection only."""
        try:
            step(conn, *args)
        except OSError:
            self._close(conn)
        except Exception as exc:  # noqa: BLE001 -- one connection's bug, not the server's
            self._close(conn)
            self._on_error(exc)

    def _wake(self) -> None:
        # Full (a wake-up is pending anyway) or closed at stop: nothing to do.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    # ------------------------------------------------------------------ connections

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # Out of file descriptors (or similar): make room and pause
                # accepting briefly instead of spinning on a readable listener.
                self._evict_one()
                self._selector.unregister(self._listener)
                self._accept_paused_until = time.monotonic() + 0.1
                return
            self._stats["connections"] += 1
            if len(self._conns) >= self._max_connections and not self._evict_one():
                self._stats["refused"] += 1
                sock.close()
                continue
            now = time.monotonic()
            try:
                sock.setblocking(False)
                if self._ssl is not None:
                    sock = self._ssl.wrap_socket(sock, server_side=True,
                                                 do_handshake_on_connect=False)  # fmt: skip
            except OSError:
                sock.close()
                continue
            conn = _Conn(sock, _HANDSHAKE if self._ssl else _READ, now, now + self._timeout)
            self._conns[sock.fileno()] = conn
            self._want(conn, selectors.EVENT_READ)
            # The request (or ClientHello) is usually here already: take it now,
            # before later connections can push this one out.
            self._guarded(self._service, conn)

    def _evict_one(self) -> bool:
        """Close the connection that has waited longest without a complete request."""
        victims = [c for c in self._conns.values() if c.state in (_HANDSHAKE, _READ, _LINGER)]
        if not victims:
            return False
        victim = min(victims, key=lambda c: (c.state != _LINGER, c.since))
        if victim.state != _LINGER:
            self._stats["evicted"] += 1
        self._close(victim)
        return True

    def _want(self, conn: _Conn, events: int) -> None:
        if conn.events == events or conn.closed:
            return
        if events == 0:
            self._selector.unregister(conn.sock)
        elif conn.events == 0:
            self._selector.register(conn.sock, events, conn)
        else:
            self._selector.modify(conn.sock, events, conn)
        conn.events = events

    def _close(self, conn: _Conn) -> None:
        if conn.closed:
            return
        self._want(conn, 0)
        conn.closed = True
        self._conns.pop(conn.sock.fileno(), None)
        with contextlib.suppress(OSError):
            conn.sock.close()

    def _service(self, conn: _Conn) -> None:
        if conn.state == _HANDSHAKE:
            self._handshake(conn)
        elif conn.state == _READ:
            self._read(conn)
        elif conn.state == _WRITE:
            self._write(conn)
            self._parse(conn)  # a pipelined request may be waiting
        elif conn.state == _LINGER:
            self._linger(conn)

    def _handshake(self, conn: _Conn) -> None:
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want(conn, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._want(conn, selectors.EVENT_WRITE)
            return
        except (ssl.SSLError, OSError, ValueError):
            # Plain HTTP, a scanner, a client that does not trust us: just close.
            self._stats["tls_failed"] += 1
            self._close(conn)
            return
        conn.state = _READ
        self._want(conn, selectors.EVENT_READ)
        self._read(conn)

    def _read(self, conn: _Conn) -> None:
        sock = conn.sock
        while len(conn.buf) <= self._max_header:
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                self._want(conn, selectors.EVENT_READ)
                break
            except ssl.SSLWantWriteError:
                self._want(conn, selectors.EVENT_WRITE)
                break
            if not data:
                self._close(conn)
                return
            conn.buf += data
        self._parse(conn)

    def _parse(self, conn: _Conn) -> None:
        """Handle the complete requests in the buffer, one at a time (a loop, so
        that a client pipelining thousands of requests cannot recurse deeply)."""
        buf = conn.buf
        while conn.state == _READ and not conn.closed and buf:
            # Blank lines before a request line are allowed (RFC 9112, 2.2).
            start = 0
            while start < len(buf) and buf[start] in b"\r\n":
                start += 1
            if start:
                del buf[:start]
            end, sep = buf.find(b"\r\n\r\n"), 4
            bare = buf.find(b"\n\n")
            if bare != -1 and (end == -1 or bare < end):
                end, sep = bare, 2
            if end == -1:
                if len(buf) > self._max_header:
                    self._stats["requests"] += 1
                    self._fail(conn, 431)
                return
            self._stats["requests"] += 1
            if end > self._max_header:
                self._fail(conn, 431)
                return
            head = bytes(buf[:end])
            del buf[: end + sep]
            try:
                request = _parse_head(head)
            except _HTTPError as exc:
                self._fail(conn, exc.status)
                return
            self._dispatch(conn, request)

    def _fail(self, conn: _Conn, status: int) -> None:
        conn.keep_alive = False
        self._send(conn, status, _plain(status))

    # ------------------------------------------------------------------ requests

    def _dispatch(self, conn: _Conn, request: _Request) -> None:
        head_only = request.method == "HEAD"
        keep = request.keep_alive
        conn.keep_alive = keep
        if request.path not in PATHS:
            self._send(conn, 404, _plain(404, head_only=head_only, keep_alive=keep))
            return
        if request.method not in ("GET", "HEAD"):
            self._send(conn, 405, _plain(405, head_only=head_only, keep_alive=keep,
                                         extra={"Allow": "GET, HEAD"}))  # fmt: skip
            return
        conn.state = _BUSY
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
                    self._send(conn, 503, _plain(503, head_only=head_only,
                                                 extra={"Retry-After": "1"}))  # fmt: skip
                    return
                self._auth.pending += 1
                self._auth.jobs.put(lambda: self._check(conn, request, header))
                return
        self._serve(conn, request)

    def _unauthorised(self, request: _Request) -> bytes:
        return _plain(401, head_only=request.method == "HEAD", keep_alive=request.keep_alive,
                      extra={"WWW-Authenticate": 'Basic realm="csuite-async-obs"'})  # fmt: skip

    def _check(self, conn: _Conn, request: _Request, header: str | None) -> None:
        """Auth lane: the slow password check; the loop serves or refuses on its answer."""
        assert self._authenticate is not None
        try:
            ok = bool(self._authenticate(header))
        except Exception as exc:  # noqa: BLE001 -- counted; the client is refused
            self._on_error(exc)
            ok = False
        self._done.append((conn, request, _AUTH_OK if ok else _AUTH_DENIED, b""))
        self._wake()

    def _serve(self, conn: _Conn, request: _Request) -> None:
        """On the loop thread, once authorised: /healthz inline, /metrics on the render lane."""
        if request.path == "/metrics":
            self._render.jobs.put(lambda: self._render_metrics(conn, request))
            return
        status, body = self._healthz(request)
        self._send(conn, status, body)

    def _healthz(self, request: _Request) -> tuple[int, bytes]:
        try:
            ok, detail = self._health()
            payload = json.dumps({"status": "ok" if ok else "unavailable", **detail}).encode()
            status = 200 if ok else 503
            return status, _response(status, payload + b"\n", "application/json",
                                     head_only=request.method == "HEAD",
                                     keep_alive=request.keep_alive)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 -- counted; the client gets a bare 500
            self._on_error(exc)
            return 500, _plain(500)

    def _render_metrics(self, conn: _Conn, request: _Request) -> None:
        """Render lane: the exposition of the registry."""
        try:
            accept = request.headers.get("accept", "")
            if self._renderer is not None:
                body, content_type = self._renderer(accept)
            else:
                encoder, content_type = choose_encoder(accept)
                body = encoder(self._registry)
            extra: dict[str, str] = {}
            if "gzip" in request.headers.get("accept-encoding", ""):
                body = gzip.compress(body, compresslevel=1)
                extra["Content-Encoding"] = "gzip"
            response = _response(200, body, content_type, head_only=request.method == "HEAD",
                                 keep_alive=request.keep_alive, extra=extra)  # fmt: skip
            self._post(conn, request, 200, response)
        except Exception as exc:  # noqa: BLE001 -- counted; the client gets a bare 500
            self._on_error(exc)
            self._post(conn, request, 500, _plain(500))

    def _post(self, conn: _Conn, request: _Request, status: int, response: bytes) -> None:
        """From a lane thread: give a response to the loop, which writes it."""
        self._done.append((conn, request, status, response))
        self._wake()

    def _deliver(self) -> None:
        """On the loop thread: what the lanes finished."""
        while self._done:
            conn, request, status, response = self._done.popleft()
            if status in (_AUTH_OK, _AUTH_DENIED):
                assert self._auth is not None
                self._auth.pending -= 1
            if conn.closed or conn.state != _BUSY:
                continue  # timed out meanwhile
            if status == _AUTH_OK:
                self._guarded(self._serve, conn, request)
            else:
                if status == _AUTH_DENIED:
                    status, response = 401, self._unauthorised(request)
                elif status == 500:
                    conn.keep_alive = False
                self._guarded(self._send, conn, status, response)
            self._guarded(self._parse, conn)

    # ------------------------------------------------------------------ responses

    def _send(self, conn: _Conn, status: int, response: bytes) -> None:
        self._stats[f"status_{status}"] += 1
        conn.state = _WRITE
        conn.out = response
        conn.sent = 0
        conn.deadline = time.monotonic() + self._timeout
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        view = memoryview(conn.out)
        while conn.sent < len(view):
            try:
                conn.sent += conn.sock.send(view[conn.sent :])
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                self._want(conn, selectors.EVENT_WRITE)
                return
            except ssl.SSLWantReadError:
                self._want(conn, selectors.EVENT_READ)
                return
        conn.out = b""
        conn.served += 1
        now = time.monotonic()
        if conn.keep_alive:
            # The caller parses what is left in the buffer (pipelined requests).
            conn.state = _READ
            conn.since = now
            conn.deadline = now + self._timeout
            self._want(conn, selectors.EVENT_READ)
            return
        # Close gently: stop sending, then read and drop what the client still
        # sends for a moment, so that closing with unread data does not reset
        # the connection before the client has read our answer.
        conn.state = _LINGER
        conn.deadline = now + min(_LINGER_SECONDS, self._timeout)
        conn.buf.clear()
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        self._want(conn, selectors.EVENT_READ)

    def _linger(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            return
        conn.drained += len(data)
        if not data or conn.drained > _LINGER_BYTES:
            self._close(conn)


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

    Returns:
        The running :class:`Exporter`, or ``None`` (after logging one error that
        names the address and port) when the port cannot be bound, so that the
        caller -- a worker -- keeps working without its exporter.
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
            "--metrics-port to another port (0 turns the exporter off). The worker keeps running.",
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
    )
