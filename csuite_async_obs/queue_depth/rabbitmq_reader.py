"""Queue depth on RabbitMQ: every queue of the vhost in one management API request.

``GET /api/queues/<vhost>?columns=...`` answers, for every queue at once,
``messages_ready`` (the length), ``messages_unacknowledged`` (delivered to a
consumer, not acked: prefetched, running and countdown/ETA messages, which a
passive declare cannot see), ``consumers`` and ``head_message_timestamp``.  One
request whatever the number of queues, and one snapshot of RabbitMQ's statistics.

**Freshness.**  The management plugin serves counts that RabbitMQ's queues
emitted at their last statistics interval and that its collector sampled: up
to ``collect_statistics_interval`` (5 s by default) plus the smallest
``management.sample_retention_policies`` interval (5 s) old.  A
``rabbitmqctl list_queues`` is live; the API is not, by design of the plugin.

**Oldest message.**  ``head_message_timestamp`` is the AMQP ``timestamp``
property of the queue's head message, which the package sets at publish on AMQP
(:mod:`csuite_async_obs.instrumentation.hooks`), in whole seconds; the age is
therefore up to 1 s more than the truth.  The head is the next message RabbitMQ
would deliver: on a priority queue (``x-max-priority``) that is the oldest
message of the highest non-empty priority, not the oldest message of all (on
Redis the age is the oldest of every priority).  A non-empty queue whose head
has no timestamp (published without this package) has no age.

**Missing queues.**  A queue the API does not list, or lists without statistics
yet (just declared), is unknown, never 0.

**Discovery.**  The same response gives the vhost's queue names for glob
entries; Celery's own per-process queues (pidbox, reply, event and RPC result
queues: ``auto_delete`` or exclusive) are left out.

The API is reached without the environment's HTTP proxy: it is an internal
endpoint, and a proxy set for package downloads would not reach it.
"""

from __future__ import annotations

import base64
import json
import math
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from .reading import BrokerReader, Reading

__all__ = ["ManagementAPI", "RabbitMQReader", "management_api_for"]

#: The management plugin's port; the issue of TLS is the scheme's, not the port's.
DEFAULT_PORT = 15672
_COLUMNS = (
    "name",
    "messages_ready",
    "messages_unacknowledged",
    "consumers",
    "head_message_timestamp",
    "auto_delete",
    "exclusive",
)
#: A response older than this is not reused by the read that follows a discovery.
_REUSE_SECONDS = 1.0


class ManagementAPIError(OSError):
    """The management API could not be used (refused, timed out, 4xx/5xx, bad JSON)."""


@dataclass(frozen=True)
class ManagementAPI:
    """Where and how to reach one vhost's queues on the management API."""

    base_url: str  # scheme://host:port[/prefix], no trailing slash, no credentials
    username: str
    password: str
    vhost: str
    timeout: float = 3.0
    ssl_context: ssl.SSLContext | None = None

    @property
    def queues_url(self) -> str:
        vhost = urllib.parse.quote(self.vhost, safe="")
        return f"{self.base_url}/api/queues/{vhost}?columns={','.join(_COLUMNS)}"

    def _opener(self) -> urllib.request.OpenerDirector:
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if self.ssl_context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=self.ssl_context))
        return urllib.request.build_opener(*handlers)

    def get_queues(self) -> list[dict[str, Any]]:
        """The vhost's queues with :data:`_COLUMNS`; raises :class:`ManagementAPIError`."""
        request = urllib.request.Request(self.queues_url, headers={"Accept": "application/json"})
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        try:
            with self._opener().open(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            raise ManagementAPIError(f"HTTP {exc.code} from {self.queues_url}") from exc
        except (OSError, ValueError) as exc:  # refused, timed out, TLS, bad URL
            raise ManagementAPIError(f"{type(exc).__name__}: {exc} ({self.queues_url})") from exc
        try:
            rows = json.loads(body)
        except ValueError as exc:
            raise ManagementAPIError(f"not JSON from {self.queues_url}") from exc
        if not isinstance(rows, list):
            raise ManagementAPIError(f"not a list of queues from {self.queues_url}")
        return [row for row in rows if isinstance(row, dict)]


def _ssl_context(use_ssl: Any) -> ssl.SSLContext:
    # The broker connection's trust settings apply to its management API as well.
    context = ssl.create_default_context()
    if isinstance(use_ssl, Mapping):
        ca = use_ssl.get("ca_certs") or use_ssl.get("cafile")
        if ca:
            context.load_verify_locations(cafile=str(ca))
        if use_ssl.get("cert_reqs") == ssl.CERT_NONE:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        cert, key = use_ssl.get("certfile"), use_ssl.get("keyfile")
        if cert:
            context.load_cert_chain(str(cert), str(key) if key else None)
    return context


def management_api_for(conn: Any, override: str = "", timeout: float = 3.0) -> ManagementAPI:
    """The management API of a kombu AMQP connection's broker.

    Without ``override``: the broker's host, user and password, port 15672,
    https when the connection uses TLS (``amqps://``).  ``override`` is a URL
    (``https://user:secret@mq.internal:15671/rabbitmq``): its scheme, host, port
    and path prefix are used, and its credentials when it has them.  The vhost
    is always the broker URL's.
    """
    use_ssl = getattr(conn, "ssl", None)
    username = str(conn.userid or "guest")
    password = str(conn.password or "guest")
    if override:
        parts = urllib.parse.urlsplit(override)
        host = parts.hostname or "localhost"
        netloc = f"[{host}]" if ":" in host else host
        if parts.port:
            netloc += f":{parts.port}"
        base = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"
        if parts.username is not None:
            username = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
        https = parts.scheme == "https"
    else:
        host = str(conn.hostname or "localhost")
        netloc = f"[{host}]" if ":" in host else host
        https = _uses_tls(conn)
        base = f"{'https' if https else 'http'}://{netloc}:{DEFAULT_PORT}"
    vhost = str(conn.virtual_host or "/")
    return ManagementAPI(
        base_url=base,
        username=username,
        password=password,
        vhost=vhost,
        timeout=timeout,
        ssl_context=_ssl_context(use_ssl) if https else None,
    )


#: kombu's transport aliases that are AMQP over TLS (``amqps://``; kombu 5.4 to 5.7).
_TLS_TRANSPORTS = frozenset({"amqps"})


def _uses_tls(conn: Any) -> bool:
    # A bare amqps:// URL sets ``conn.ssl`` only once kombu has built the transport
    # (SSLTransport's __init__), which the poller's fresh connection has not: the URL's
    # transport name tells it before that.
    return bool(getattr(conn, "ssl", None)) or str(conn.transport_cls) in _TLS_TRANSPORTS


def _count(row: Mapping[str, Any], key: str) -> int | None:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _is_time(value: Any) -> TypeGuard[float]:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


class RabbitMQReader(BrokerReader):
    """Reads every queue of the vhost from the management API in one request."""

    def __init__(self, api: ManagementAPI, log: Any = None) -> None:
        super().__init__(None, None, log)
        self.api = api
        self._last: tuple[float, list[dict[str, Any]]] | None = None

    def _rows(self, reuse: bool) -> list[dict[str, Any]]:
        now = time.monotonic()
        if reuse and self._last is not None and now - self._last[0] <= _REUSE_SECONDS:
            rows = self._last[1]
            self._last = None  # a discovery's response serves one read
            return rows
        self.round_trips += 1
        rows = self.api.get_queues()
        # Only a discovery's response is kept: a read's own would serve the next
        # read (a poll a second later) with numbers a poll old.
        self._last = None if reuse else (now, rows)
        return rows

    def _read(self, queues: Sequence[str]) -> Reading:
        by_name = {str(row.get("name")): row for row in self._rows(reuse=True)}
        lengths: dict[str, int] = {}
        unacked: dict[str, int] = {}
        consumers: dict[str, int] = {}
        oldest: dict[str, float] = {}
        unknown: list[str] = []
        for name in queues:
            row = by_name.get(name)
            ready = _count(row, "messages_ready") if row is not None else None
            if row is None or ready is None:
                unknown.append(name)  # no such queue, or no statistics yet
                continue
            lengths[name] = ready
            count = _count(row, "messages_unacknowledged")
            if count is not None:
                unacked[name] = count
            count = _count(row, "consumers")
            if count is not None:
                consumers[name] = count
            stamp = row.get("head_message_timestamp")
            if ready and _is_time(stamp):
                oldest[name] = float(stamp)
        return Reading(
            lengths, oldest, unacked=unacked, consumers=consumers, unknown=tuple(unknown)
        )

    def discover(self) -> list[str]:
        """The vhost's queues, without Celery's per-process (auto-delete, exclusive) ones."""
        return sorted(
            str(row["name"])
            for row in self._rows(reuse=False)
            if row.get("name") and not row.get("auto_delete") and not row.get("exclusive")
        )

    def close(self) -> None:
        self._last = None
