"""The exporter's event loop: connections, their deadlines and their limits.

An event loop (``selectors``) owns every connection; threads are used only for
the work that a complete, well-formed request asks for (see :mod:`.routes`).  A
thread per connection (the standard library's ``ThreadingHTTPServer``,
``prometheus_client``'s ``start_http_server``) lets every client that opens a
socket and never finishes its request hold a thread, and a bound on threads
then lets a handful of such clients lock out Prometheus.  Here:

* a connection costs a buffer until its request head is complete; the head
  (request line and headers, TLS handshake included) must arrive within
  ``timeout`` seconds *in total*, however slowly it trickles, and be at most
  ``max_header_bytes``; the response must be taken within ``timeout`` too;
* at most ``max_connections`` are open at once; when full, a new connection
  evicts the oldest one that has not sent a complete request (a slow or idle
  client), so clients that never finish cannot lock out a scrape;
* HTTP/1.1 keep-alive and pipelining as Prometheus uses them; a connection
  closes gently (lingering to drain what the client still sends);
* a response is written as the parts it was made of, several per ``sendmsg``
  call, so a 2 MiB body is not copied again into one buffer on the way to the
  socket (TLS, which has no ``sendmsg``, joins them once);
* a process forked from the worker (a prefork pool child started after the
  exporter, e.g. to replace one that died or hit ``--max-tasks-per-child``)
  closes its copies of the exporter's sockets at once, so that no child can keep
  the metrics port bound after the worker has gone.

:class:`ConnectionServer` hands each complete request to :meth:`_dispatch`
(its subclass's routing) and writes what comes back through :meth:`_send` (on
the loop thread) or :meth:`_post` (from any thread).
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import selectors
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from .wire import HTTPError, Request, Response, parse_head, plain

__all__ = ["BUSY", "Connection", "ConnectionServer", "Lane"]

_LINGER_SECONDS = 2.0
_LINGER_BYTES = 1 << 20
_ACCEPT_BATCH = 64
# Buffers per sendmsg call: well under Linux's IOV_MAX (1024), where the kernel
# refuses the call instead of sending part of it.
_IOV_BATCH = 256

# Connection states.
HANDSHAKE, READ, BUSY, WRITE, LINGER = range(5)


class Connection:
    __slots__ = ("buf", "closed", "deadline", "drained", "events", "keep_alive", "out", "part",
                 "sent", "served", "since", "sock", "state")  # fmt: skip

    def __init__(self, sock: socket.socket, state: int, now: float, deadline: float) -> None:
        self.sock = sock
        self.state = state
        self.since = now
        self.deadline = deadline
        self.buf = bytearray()
        #: The response being written: its buffers, the one being sent, and how much
        #: of that one is sent.
        self.out: Response = []
        self.part = 0
        self.sent = 0
        self.events = 0
        self.keep_alive = False
        self.closed = False
        self.drained = 0
        self.served = 0


class Lane:
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


_LIVE: weakref.WeakSet[ConnectionServer] = weakref.WeakSet()


def _forget_after_fork() -> None:
    for exporter in list(_LIVE):
        exporter._close_after_fork()


# billiard forks pool children with os.fork(), which runs these hooks.
os.register_at_fork(after_in_child=_forget_after_fork)


class ConnectionServer:
    """Accepts, reads, parses and writes; :meth:`_dispatch` decides what to answer."""

    def __init__(
        self,
        listener: socket.socket,
        *,
        ssl_context: ssl.SSLContext | None,
        on_error: Callable[[BaseException], None],
        max_connections: int,
        timeout: float,
        max_header_bytes: int,
    ) -> None:
        self._listener = listener
        self._ssl = ssl_context
        self._on_error = on_error
        self._max_connections = max_connections
        self._timeout = timeout
        self._max_header = max_header_bytes
        self._conns: dict[int, Connection] = {}
        self._stats: collections.Counter[str] = collections.Counter()
        self._done: collections.deque[tuple[Connection, Request, int, Response]] = (
            collections.deque()
        )
        self._stopping = False
        self._accept_paused_until = 0.0
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        listener.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(
            target=self._loop, name="csuite-async-obs-exporter", daemon=True
        )

    def _start_loop(self) -> None:
        _LIVE.add(self)
        self._thread.start()

    def _stop_loop(self, timeout: float) -> bool:
        """Stop the loop thread; ``False`` if it was stopped already."""
        if self._stopping:
            return False
        self._stopping = True
        _LIVE.discard(self)
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout)
        else:  # never started: the loop's own clean-up never ran
            for sock in (self._listener, self._wake_r, self._wake_w):
                sock.close()
            self._selector.close()
        return True

    # ------------------------------------------------------------------ to override

    def _dispatch(self, conn: Connection, request: Request) -> None:
        """On the loop thread: answer a complete, well-formed request."""
        raise NotImplementedError

    def _completed(
        self, conn: Connection, request: Request, status: int, response: Response
    ) -> None:
        """On the loop thread: what a lane posted for a connection that still waits."""
        self._guarded(self._send, conn, status, response)

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
            if conn.state in (HANDSHAKE, READ) and (conn.buf or not conn.served):
                self._stats["timed_out"] += 1  # a slow client: its request never completed
            elif conn.state == BUSY:
                self._stats["render_timed_out"] += 1
            elif conn.state == WRITE:
                self._stats["write_timed_out"] += 1
            self._close(conn)

    def _guarded(self, step: Callable[..., None], conn: Connection, *args: Any) -> None:
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
                # A response is written whole, in as few calls as the socket takes:
                # Nagle's algorithm would only hold its last small segment back until
                # the client's (delayed, up to 40 ms) acknowledgement.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self._ssl is not None:
                    sock = self._ssl.wrap_socket(sock, server_side=True,
                                                 do_handshake_on_connect=False)  # fmt: skip
            except OSError:
                sock.close()
                continue
            conn = Connection(sock, HANDSHAKE if self._ssl else READ, now, now + self._timeout)
            self._conns[sock.fileno()] = conn
            self._want(conn, selectors.EVENT_READ)
            # The request (or ClientHello) is usually here already: take it now,
            # before later connections can push this one out.
            self._guarded(self._service, conn)

    def _evict_one(self) -> bool:
        """Close the connection that has waited longest without a complete request."""
        victims = [c for c in self._conns.values() if c.state in (HANDSHAKE, READ, LINGER)]
        if not victims:
            return False
        victim = min(victims, key=lambda c: (c.state != LINGER, c.since))
        if victim.state != LINGER:
            self._stats["evicted"] += 1
        self._close(victim)
        return True

    def _want(self, conn: Connection, events: int) -> None:
        if conn.events == events or conn.closed:
            return
        if events == 0:
            self._selector.unregister(conn.sock)
        elif conn.events == 0:
            self._selector.register(conn.sock, events, conn)
        else:
            self._selector.modify(conn.sock, events, conn)
        conn.events = events

    def _close(self, conn: Connection) -> None:
        if conn.closed:
            return
        self._want(conn, 0)
        conn.closed = True
        self._conns.pop(conn.sock.fileno(), None)
        with contextlib.suppress(OSError):
            conn.sock.close()

    def _service(self, conn: Connection) -> None:
        if conn.state == HANDSHAKE:
            self._handshake(conn)
        elif conn.state == READ:
            self._read(conn)
        elif conn.state == WRITE:
            self._write(conn)
            self._parse(conn)  # a pipelined request may be waiting
        elif conn.state == LINGER:
            self._linger(conn)

    def _handshake(self, conn: Connection) -> None:
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
        conn.state = READ
        self._want(conn, selectors.EVENT_READ)
        self._read(conn)

    def _read(self, conn: Connection) -> None:
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

    def _parse(self, conn: Connection) -> None:
        """Handle the complete requests in the buffer, one at a time (a loop, so
        that a client pipelining thousands of requests cannot recurse deeply)."""
        buf = conn.buf
        while conn.state == READ and not conn.closed and buf:
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
                request = parse_head(head)
            except HTTPError as exc:
                self._fail(conn, exc.status)
                return
            self._dispatch(conn, request)

    def _fail(self, conn: Connection, status: int) -> None:
        conn.keep_alive = False
        self._send(conn, status, plain(status))

    # ------------------------------------------------------------------ responses

    def _post(self, conn: Connection, request: Request, status: int, response: Response) -> None:
        """From a lane thread: give a response (or a lane's answer) to the loop."""
        self._done.append((conn, request, status, response))
        self._wake()

    def _deliver(self) -> None:
        """On the loop thread: what the lanes finished."""
        while self._done:
            conn, request, status, response = self._done.popleft()
            self._settle(status)
            if conn.closed or conn.state != BUSY:
                continue  # timed out meanwhile
            self._completed(conn, request, status, response)
            self._guarded(self._parse, conn)

    def _settle(self, status: int) -> None:
        """Bookkeeping of a lane's answer, whether or not its connection still waits."""
        return None

    def _send(self, conn: Connection, status: int, response: Response) -> None:
        self._stats[f"status_{status}"] += 1
        conn.state = WRITE
        if isinstance(conn.sock, ssl.SSLSocket) and len(response) > 1:
            response = [b"".join(response)]
        conn.out = response
        conn.part = conn.sent = 0
        conn.deadline = time.monotonic() + self._timeout
        self._write(conn)

    def _write(self, conn: Connection) -> None:
        out = conn.out
        while conn.part < len(out):
            first = memoryview(out[conn.part])[conn.sent :]
            try:
                if conn.part + 1 == len(out):
                    sent = conn.sock.send(first)
                else:
                    sent = conn.sock.sendmsg([first, *out[conn.part + 1 : conn.part + _IOV_BATCH]])
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                self._want(conn, selectors.EVENT_WRITE)
                return
            except ssl.SSLWantReadError:
                self._want(conn, selectors.EVENT_READ)
                return
            sent += conn.sent
            while conn.part < len(out) and sent >= len(out[conn.part]):
                sent -= len(out[conn.part])
                conn.part += 1
            conn.sent = sent
        conn.out = []
        conn.part = conn.sent = 0
        conn.served += 1
        now = time.monotonic()
        if conn.keep_alive:
            # The caller parses what is left in the buffer (pipelined requests).
            conn.state = READ
            conn.since = now
            conn.deadline = now + self._timeout
            self._want(conn, selectors.EVENT_READ)
            return
        # Close gently: stop sending, then read and drop what the client still
        # sends for a moment, so that closing with unread data does not reset
        # the connection before the client has read our answer.
        conn.state = LINGER
        conn.deadline = now + min(_LINGER_SECONDS, self._timeout)
        conn.buf.clear()
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        self._want(conn, selectors.EVENT_READ)

    def _linger(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            return
        conn.drained += len(data)
        if not data or conn.drained > _LINGER_BYTES:
            self._close(conn)
