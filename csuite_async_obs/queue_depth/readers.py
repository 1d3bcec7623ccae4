"""Picks and connects the reader for an app's broker: a new broker is one line here.

Redis: :class:`~.redis_reader.RedisReader`.  RabbitMQ: the management API
(:class:`~.rabbitmq_reader.RabbitMQReader`), and passive declares over AMQP when
the API cannot be reached.  Any other transport: passive declares.

The connection gets socket timeouts of the poll's timeout (kombu's Redis
default is none at all: a broker that stops answering would hold the poll
forever) and no connection retries.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..compat import redis_layout
from ..logs import get_logger
from .declare_reader import DeclareReader
from .rabbitmq_reader import ManagementAPIError, RabbitMQReader, management_api_for
from .reading import DISCOVERY_INTERVAL, BrokerReader, close_quietly
from .redis_reader import RedisReader

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["open_reader"]


def _connect(app: Celery, timeout: float) -> tuple[Any, Any]:
    probe = app.connection_for_read()
    driver = probe.transport.driver_name
    probe.release()
    options: dict[str, Any] = {}
    if driver == "redis":  # redis, rediss and sentinel
        # kombu's default is no socket timeout at all: a broker that stops
        # answering would hold the poll forever.
        configured = app.conf.broker_transport_options or {}
        for key in ("socket_timeout", "socket_connect_timeout"):
            value = configured.get(key)
            options[key] = min(value, timeout) if value else timeout
    elif driver == "py-amqp":
        options.update(read_timeout=timeout, write_timeout=timeout)
    conn = app.connection_for_read(connect_timeout=timeout, transport_options=options)
    try:
        # max_retries=0: Connection.connect() would retry once after sleeping 2 s.
        conn.ensure_connection(max_retries=0)
        channel: Any = conn.channel()
    except BaseException:
        close_quietly(conn)
        raise
    return conn, channel


def _rabbitmq_reader(app: Celery, timeout: float, api_url: str, log: Any) -> BrokerReader | None:
    """The management API reader when the API answers; ``None`` to fall back to AMQP."""
    probe = app.connection_for_read()
    try:
        api = management_api_for(probe, api_url, timeout)
    finally:
        probe.release()
    reader = RabbitMQReader(api, log=log)
    try:
        reader.discover()  # the probe's response serves the first read
    except ManagementAPIError as exc:
        (log or get_logger()).warning(
            "rabbitmq_management_api_unavailable",
            url=api.base_url,
            error=str(exc),
            hint="falling back to passive declares (no oldest-message age or unacked "
            "counts); enable the rabbitmq_management plugin or set CSUITE_RABBITMQ_API_URL",
        )
        return None
    return reader


def _exchange_types(app: Celery) -> dict[str, str]:
    """Type of every exchange the app's queues are bound to: what the worker that
    restores a message knows of it (kombu's Redis transport stores no types)."""
    types: dict[str, str] = {}
    for queue in app.amqp.queues.values():
        exchange = queue.exchange
        if exchange is not None and exchange.name and exchange.type:
            types[exchange.name] = exchange.type
    return types


def open_reader(
    app: Celery,
    timeout: float = 3.0,
    skip_exchanges: Iterable[str] = (),
    log: Any = None,
    rabbitmq_api_url: str = "",
    *,
    discovery_interval: float = DISCOVERY_INTERVAL,
) -> BrokerReader:
    """A connected reader for ``app``'s broker: the best one its transport allows.

    On AMQP: RabbitMQ's management API (``rabbitmq_api_url``; empty derives it from
    the broker URL, ``"none"`` never uses it), else passive declares over AMQP.
    ``discovery_interval``: seconds a reader may keep what it read of the
    broker's bindings.  Raises whatever connecting raises (the broker is down);
    nothing is left open then.
    """
    probe = app.connection_for_read()
    driver_type = probe.transport.driver_type
    probe.release()
    if driver_type == "amqp" and rabbitmq_api_url != "none":
        reader = _rabbitmq_reader(app, timeout, rabbitmq_api_url, log)
        if reader is not None:
            return reader
    conn, channel = _connect(app, timeout)
    try:
        layout = redis_layout(channel)
        if layout is not None:
            return RedisReader(conn, channel, layout, skip_exchanges=skip_exchanges,
                               exchange_types=_exchange_types(app),
                               binding_refresh=discovery_interval, log=log)  # fmt: skip
        virtual = getattr(conn.transport, "driver_type", "") == "redis"
        reader = DeclareReader(conn, channel, missing_is_empty=virtual, log=log)
        # A better reader may answer later (the management plugin restarted).
        reader.fallback = driver_type == "amqp" and rabbitmq_api_url != "none"
        return reader
    except BaseException:
        close_quietly(conn)
        raise
