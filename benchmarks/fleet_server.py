"""The fleet benchmark's targets: simulated workers served by a few server processes.

A fleet of 1,000 simulated workers cannot be served by one Python process at a
10 s scrape interval: every scrape is a render (about 10 ms for a 50-name native
body, 40 ms for the peer's prometheus_client text), so one GIL caps the fleet
long before Prometheus does.  :class:`FleetServer` therefore forks
``processes`` shards, each owning a contiguous slice of the workers on a port of
its own (``/metrics?worker=w0001``); Prometheus is told which shard serves which
worker by a hidden target label (see :meth:`FleetServer.static_configs`).

Each shard answers ``/stats`` with its CPU time, response bytes and errors, so
the benchmark reads the server's cost from the shards, not from its own process;
``/stats?final=1`` adds the series its workers serve now and the sizes of one
body.  A shard dies with the process that forked it (``PR_SET_PDEATHSIG``), so a
benchmark killed on a timeout leaves no server behind.
"""

from __future__ import annotations

import ctypes
import gzip
import json
import multiprocessing
import os
import signal
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from typing import Any

from csuite_async_obs.metrics import protobuf

from .fleet_workers import Worker, served_series

#: The hidden label a static target group carries: the shard's ``host:port``.
SHARD_LABEL = "__fleet_shard__"
#: Seconds a shard may take to prime its workers (1,000 peers x 50 names: about 20 s).
PRIME_TIMEOUT = 900.0


class _Shard:
    """What one shard process holds: its workers and the tallies ``/stats`` reports."""

    def __init__(self, workers: dict[str, Worker], tasks_per_scrape: int, native: bool) -> None:
        self.workers = workers
        self.tasks_per_scrape = tasks_per_scrape
        self.native = native
        self.bytes: dict[str, list[int]] = {}
        self.errors = 0
        self.lock = threading.Lock()

    def metrics(self, worker_id: str, accept: str) -> tuple[bytes, str] | None:
        worker = self.workers.get(worker_id)
        if worker is None:
            with self.lock:
                self.errors += 1
            return None
        with worker.lock:
            worker.work(self.tasks_per_scrape)
            body, content_type = worker.render(accept)
        kind = "protobuf" if content_type == protobuf.CONTENT_TYPE else "text"
        with self.lock:
            entry = self.bytes.setdefault(kind, [0, 0])
            entry[0] += len(body)
            entry[1] += 1
        return body, content_type

    def stats(self, final: bool) -> dict[str, Any]:
        with self.lock:
            out: dict[str, Any] = {
                "cpu_s": time.process_time(),
                "bytes": {kind: list(entry) for kind, entry in self.bytes.items()},
                "errors": self.errors,
            }
        if final:
            out["served_series"] = sum(served_series(w, self.native) for w in self.workers.values())
            first = next(iter(self.workers.values()))
            with first.lock:
                body, content_type = first.render(
                    protobuf.CONTENT_TYPE if self.native else "text/plain"
                )
            out["body_bytes"] = len(body)
            out["body_gzip1_bytes"] = len(gzip.compress(body, compresslevel=1))
            out["format"] = "protobuf" if content_type == protobuf.CONTENT_TYPE else "text"
        return out


def _handler(shard: _Shard) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(parts.query)
            if parts.path == "/stats":
                self._send(json.dumps(shard.stats("final" in query)).encode(), "application/json")
                return
            answer = shard.metrics((query.get("worker") or [""])[0], self.headers.get("Accept", ""))
            if answer is None:
                self.send_error(404)
                return
            self._send(*answer)

        def _send(self, body: bytes, content_type: str) -> None:
            try:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # Prometheus gave up (timeout) or is stopping

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def _serve_shard(
    case: str,
    names: Sequence[str],
    slice_: Sequence[tuple[str, int]],
    failure_ratio: float,
    tasks_per_scrape: int,
    ready: Connection,
) -> None:
    """A shard process: prime its workers, bind a free port, say which, serve."""
    _die_with_parent()
    try:
        started = time.monotonic()
        workers = {wid: Worker(case, names, seed, failure_ratio) for wid, seed in slice_}
        shard = _Shard(workers, tasks_per_scrape, native=case == "native")
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(shard))
        httpd.daemon_threads = True
        ready.send(("ready", httpd.server_address[1], time.monotonic() - started))
    except BaseException as exc:  # reported to the parent, which fails the cell
        ready.send(("error", repr(exc), 0.0))
        raise
    ready.close()
    httpd.serve_forever()


def _die_with_parent() -> None:
    """SIGKILL this process when its parent dies (Linux; elsewhere nothing)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl
        os._exit(1)


class FleetServer:
    """``processes`` shards serving ``ids`` (worker ``ids[i]`` seeded with ``i``)."""

    def __init__(
        self,
        case: str,
        ids: Sequence[str],
        names: Sequence[str],
        *,
        failure_ratio: float,
        tasks_per_scrape: int,
        processes: int,
    ) -> None:
        self.case = case
        self.ids = list(ids)
        self.names = list(names)
        self.failure_ratio = failure_ratio
        self.tasks_per_scrape = tasks_per_scrape
        count = max(1, min(processes, len(self.ids)))
        seeded = list(zip(self.ids, range(len(self.ids)), strict=True))
        size = -(-len(seeded) // count)
        self.slices = [seeded[i : i + size] for i in range(0, len(seeded), size)]
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.addresses: list[str] = []

    def start(self) -> FleetServer:
        # fork: the shards need nothing pickled, and the parent holds no threads yet.
        context = multiprocessing.get_context("fork")
        pipes: list[Connection] = []
        try:
            self._fork(context, pipes)
            for parent in pipes:
                if not parent.poll(PRIME_TIMEOUT):
                    raise RuntimeError(f"a fleet shard did not start in {PRIME_TIMEOUT:g} s")
                status, value, _seconds = parent.recv()
                if status != "ready":
                    raise RuntimeError(f"a fleet shard failed to start: {value}")
                self.addresses.append(f"127.0.0.1:{value}")
        except BaseException:
            self.stop()
            raise
        finally:
            for parent in pipes:
                parent.close()
        return self

    def _fork(self, context: Any, pipes: list[Connection]) -> None:
        for slice_ in self.slices:
            parent, child = context.Pipe(duplex=False)
            process = context.Process(
                target=_serve_shard,
                args=(
                    self.case,
                    self.names,
                    slice_,
                    self.failure_ratio,
                    self.tasks_per_scrape,
                    child,
                ),
                daemon=True,
            )
            pipes.append(parent)
            process.start()
            child.close()
            self.processes.append(process)

    def static_configs(self) -> list[dict[str, Any]]:
        """Prometheus target groups: each shard's worker names, its address as a label."""
        return [
            {"targets": [wid for wid, _ in slice_], "labels": {SHARD_LABEL: address}}
            for slice_, address in zip(self.slices, self.addresses, strict=True)
        ]

    def stats(self, final: bool = False) -> dict[str, Any]:
        """Every shard's ``/stats``, summed: CPU seconds, bytes and count per format, errors
        (and with ``final`` the series served and shard 0's sample body)."""
        total: dict[str, Any] = {"cpu_s": 0.0, "bytes": {}, "errors": 0}
        query = "?final=1" if final else ""
        for index, address in enumerate(self.addresses):
            with urllib.request.urlopen(f"http://{address}/stats{query}", timeout=600) as r:
                shard = json.loads(r.read())
            total["cpu_s"] += shard["cpu_s"]
            total["errors"] += shard["errors"]
            for kind, (size, count) in shard["bytes"].items():
                entry = total["bytes"].setdefault(kind, [0, 0])
                entry[0] += size
                entry[1] += count
            if final:
                total["served_series"] = total.get("served_series", 0) + shard["served_series"]
                if index == 0:
                    for key in ("body_bytes", "body_gzip1_bytes", "format"):
                        total[key] = shard[key]
        return total

    def stop(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, 9)
                process.join(timeout=5)
