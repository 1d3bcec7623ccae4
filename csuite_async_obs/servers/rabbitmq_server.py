"""A private ``rabbitmq-server`` node on free loopback ports, for the demo and for tests.

Runs Debian's (or any installed) RabbitMQ as the current user, as a node of its
own: its own node name, AMQP, management, distribution and Erlang port mapper
(``epmd``) ports, all on 127.0.0.1, and its data, logs and Erlang cookie in a
temporary folder removed on stop.  A system RabbitMQ on the standard ports is
left alone.  The management plugin is enabled, and its statistics are
refreshed every ``stats_interval_ms`` (RabbitMQ's default is 5,000 ms; the
management API's queue counts are that old at most).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from .processes import ProcessError, free_port, stop_process, wait_until_ready

__all__ = ["RabbitMQServer", "find_rabbitmq_server"]

#: Where Debian's package puts the scripts that run as any user (``/usr/sbin``
#: holds wrappers that switch to the ``rabbitmq`` user and the system node).
_SCRIPT_DIRS = ("/usr/lib/rabbitmq/bin", "/usr/local/lib/rabbitmq/bin")


def find_rabbitmq_server() -> str | None:
    """Folder holding ``rabbitmq-server`` and ``rabbitmqctl``, or ``None``."""
    for folder in _SCRIPT_DIRS:
        if os.access(os.path.join(folder, "rabbitmq-server"), os.X_OK):
            return folder
    found = shutil.which("rabbitmq-server")
    return os.path.dirname(found) if found else None


class RabbitMQServer:
    """Start with :meth:`start`, stop with :meth:`stop` (or use as a context manager).

    :meth:`stop` then :meth:`start` again keeps the ports and the data folder
    (durable queues and persistent messages survive, as on a real restart);
    :meth:`close` removes the folder.
    """

    def __init__(self, *, stats_interval_ms: int = 500, scripts: str | None = None) -> None:
        self.scripts = scripts or find_rabbitmq_server()
        self.port = free_port()
        self.management_port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.stats_interval_ms = stats_interval_ms
        self.node = f"csuite{self.port}@localhost"
        self.process: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None

    @property
    def url(self) -> str:
        """AMQP URL of the default vhost (RabbitMQ's ``guest`` user, allowed off loopback)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    def _env(self) -> dict[str, str]:
        assert self._dir is not None
        base = Path(self._dir)
        env = dict(os.environ)
        env.update(
            HOME=str(base),  # the Erlang cookie goes there
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_USE_LONGNAME="false",
            RABBITMQ_CONFIG_FILE=str(base / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
            RABBITMQ_LOG_BASE=str(base / "log"),
            RABBITMQ_PID_FILE=str(base / "pid"),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        env.pop("RABBITMQ_CONF_ENV_FILE", None)
        return env

    def _write_config(self) -> None:
        assert self._dir is not None
        base = Path(self._dir)
        (base / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            f"management.tcp.ip = 127.0.0.1\n"
            f"management.tcp.port = {self.management_port}\n"
            f"collect_statistics_interval = {self.stats_interval_ms}\n"
            "loopback_users = none\n"
            + "".join(
                f"management.sample_retention_policies.{section}.minute = 1\n"
                for section in ("global", "basic", "detailed")
            )
            +
            # The test machine's disk may be nearly full; the default limit (50 MB)
            # would block publishers for reasons no test is about.
            "disk_free_limit.absolute = 1MB\n"
        )
        (base / "enabled_plugins").write_text("[rabbitmq_management].\n")

    def start(self, timeout: float = 90.0) -> RabbitMQServer:
        if self.scripts is None:
            raise RuntimeError(
                "no rabbitmq-server found: install RabbitMQ (apt-get install rabbitmq-server)"
            )
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="csuite-rabbitmq-")
            self._write_config()
        self._start_epmd()
        log = open(os.path.join(self._dir, "server.out"), "ab")  # noqa: SIM115 -- the child owns it
        try:
            self.process = subprocess.Popen(
                [os.path.join(self.scripts, "rabbitmq-server")],
                env=self._env(),
                cwd=self._dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        try:
            wait_until_ready(
                self.process,
                self.ready,
                timeout=timeout,
                what=f"rabbitmq-server node {self.node} on port {self.port}",
            )
        except ProcessError:
            self.stop()
            raise
        return self

    def ctl(self, *args: str, timeout: float = 30.0) -> str:
        """Run ``rabbitmqctl`` against this node; its standard output."""
        assert self.scripts is not None
        done = subprocess.run(
            [os.path.join(self.scripts, "rabbitmqctl"), "-n", self.node, "-q", *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
        return done.stdout

    def list_queues(self, vhost: str = "/") -> dict[str, dict[str, int]]:
        """``rabbitmqctl list_queues``: per queue ready, unacked and consumers (live, no lag)."""
        out = self.ctl(
            "list_queues",
            "-p",
            vhost,
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
        )
        queues: dict[str, dict[str, int]] = {}
        for line in out.splitlines():
            parts = line.split("\t")
            if len(parts) != 4:
                continue
            name, ready, unacked, consumers = parts
            queues[name] = {
                "messages_ready": int(ready),
                "messages_unacknowledged": int(unacked),
                "consumers": int(consumers),
            }
        return queues

    def api(self, path: str) -> Any:
        """GET ``/api/<path>`` of the management plugin as ``guest``; the decoded JSON."""
        request = urllib.request.Request(f"{self.management_url}/api/{path.lstrip('/')}")
        token = base64.b64encode(b"guest:guest").decode()
        request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def ready(self) -> bool:
        """AMQP accepted and the management API answering."""
        try:
            self.api("overview")
        except OSError:
            return False
        return True

    def stop(self, kill: bool = False) -> None:
        """Stop the node (SIGKILL of its whole process group when ``kill``), keep its data."""
        process, self.process = self.process, None
        if process is None:
            return
        if not kill and process.poll() is None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.ctl("stop", timeout=60)
            deadline = time.monotonic() + 30
            while process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
        # The Erlang port programs share the node's process group.
        stop_process(process, signal.SIGKILL, group=True)
        stop_process(self._epmd, signal.SIGKILL, group=True)
        self._epmd = None

    @contextlib.contextmanager
    def paused(self) -> Any:
        """The node stopped (SIGSTOP of its process group) for the block, then continued:
        its sockets stay open and the kernel still accepts connections, but nothing
        answers, as with a hung or partitioned broker."""
        if self.process is None:
            raise ProcessError("the node is not running")
        os.killpg(self.process.pid, signal.SIGSTOP)
        try:
            yield self
        finally:
            os.killpg(self.process.pid, signal.SIGCONT)

    def _start_epmd(self) -> None:
        # Started by us, in the foreground: the node would start one that daemonises
        # out of reach and outlives it.
        if self._epmd is not None and self._epmd.poll() is None:
            return
        binary = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        self._epmd = subprocess.Popen(
            [binary, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def close(self, kill: bool = False) -> None:
        """Stop the node (see :meth:`stop`) and remove its folder."""
        self.stop(kill=kill)
        if self._dir and os.path.isdir(self._dir):
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None

    def __enter__(self) -> RabbitMQServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
