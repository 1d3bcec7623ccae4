"""Starting, waiting for and stopping the processes the demo and the tests run.

Every process is started in a session of its own (``start_new_session``), so
that a Ctrl-C reaches only the program that started it, which then stops it in
order; :func:`stop_process` also kills what is left of its process group (a
worker's pool children share it), so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

__all__ = ["ProcessError", "free_port", "stop_process", "wait_until_ready", "worker_command"]


class ProcessError(RuntimeError):
    """A process exited or did not become ready in time (the message says which)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until_ready(
    process: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    log: Callable[[], str] = lambda: "",
) -> None:
    """Poll ``ready()`` until it is true; raise :class:`ProcessError` if ``process``
    exits first or ``timeout`` seconds pass (the message ends with the tail of ``log()``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log()[-3000:]
            raise ProcessError(f"{what} exited with status {process.returncode}" + (
                f":\n{tail}" if tail else ""))  # fmt: skip
        if ready():
            return
        time.sleep(interval)
    tail = log()[-3000:]
    raise ProcessError(f"{what} was not ready in {timeout:g}s" + (f":\n{tail}" if tail else ""))


def stop_process(
    process: subprocess.Popen[bytes] | None,
    sig: int = signal.SIGTERM,
    timeout: float = 10.0,
    *,
    group: bool = True,
) -> int | None:
    """Send ``sig``, wait up to ``timeout`` s, then SIGKILL (the whole process group
    when ``group``: a worker's pool children share it); return the exit status."""
    if process is None:
        return None
    if process.poll() is None:
        with contextlib.suppress(OSError):
            process.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    if group:
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGKILL)
    elif process.poll() is None:
        process.kill()
    if process.poll() is None:
        process.wait(timeout=10)
    return process.returncode


def worker_command(
    app: str = "csuite_async_obs.worker",
    *,
    pool: str = "solo",
    concurrency: int = 1,
    hostname: str | None = None,
    metrics_port: int | None = None,
    metrics_addr: str = "127.0.0.1",
    loglevel: str = "INFO",
    extra: Sequence[str] = (),
    python: str = sys.executable,
) -> list[str]:
    """The ``celery -A app worker`` command line of an instrumented worker."""
    cmd = [python, "-m", "celery", "-A", app, "worker", "-P", pool, "-c", str(concurrency)]
    if hostname:
        cmd += ["-n", hostname]
    cmd += ["-l", loglevel]
    if metrics_port is not None:
        cmd += ["--metrics-port", str(metrics_port), "--metrics-addr", metrics_addr]
    return [*cmd, *extra]
