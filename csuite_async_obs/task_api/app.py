"""The process's one Celery app, configured from the ``CELERY_*`` variables.

``get_celery_app()`` builds it from
:class:`~csuite_async_obs.config.celery_settings.CelerySettings` and instruments
it.  Broker socket timeouts are short, so that "the broker cannot take the
task" is known in seconds (see :mod:`.publishing`).
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from celery import Celery

from ..compat import install_result_backend, loading_celery_app
from ..config.celery_settings import CelerySettings
from ..config.errors import ConfigError
from ..instrumentation.instrument import instrument
from .redis_backend import RedisResultBackend, wants_redis_backend
from .rpc_backend import RPCResultBackend, wants_rpc_backend

__all__ = ["create_celery_app", "get_celery_app", "reset_celery_app"]

_SOCKET_TIMEOUTS = {"socket_connect_timeout": 1.5, "socket_timeout": 3.0}

_APP: Celery | None = None
_APP_LOCK = threading.Lock()


def create_celery_app(settings: CelerySettings | None = None, **instrument_options: Any) -> Celery:
    """A new Celery app configured from ``settings`` (default: the environment), instrumented."""
    settings = settings or CelerySettings.from_env()
    app = Celery("csuite_async_obs")
    app.conf.update(settings.celery_config())
    backend_class = _backend_class(settings.result_backend)
    if backend_class is not None:
        # The backend class wins over the URL's scheme; the URL still comes
        # from app.conf.result_backend.
        install_result_backend(app, backend_class)
    broker_options = {**_SOCKET_TIMEOUTS}
    if not settings.broker_url.startswith(("redis", "rediss", "sentinel")):
        broker_options = {}
    app.conf.update(
        broker_transport_options=broker_options,
        broker_connection_timeout=2.0,
        redis_socket_connect_timeout=_SOCKET_TIMEOUTS["socket_connect_timeout"],
        broker_connection_retry_on_startup=True,
    )
    instrument(app, **instrument_options)
    return app


def _backend_class(url: str) -> type | None:
    """The task API's backend class for ``url`` (queued versus unknown, see
    :mod:`.known_states`), or ``None`` to leave Celery's."""
    if wants_redis_backend(url):
        return RedisResultBackend
    if wants_rpc_backend(url):
        return RPCResultBackend
    if url.partition("://")[0].startswith("db+"):
        # Imported only here: it needs sqlalchemy, which other backends do not.
        from .database_backend import DatabaseResultBackend

        return DatabaseResultBackend
    return None


def get_celery_app() -> Celery:
    """The process's one Celery app, configured from the ``CELERY_*`` variables.

    Raises:
        ConfigError: a ``CELERY_*`` or ``CSUITE_*`` variable has a bad value.
            When the ``celery`` command is loading the ``-A`` module that
            calls this, the error is printed as one line and the command
            exits with status 2 instead.
    """
    global _APP
    if _APP is None:
        with _APP_LOCK:
            if _APP is None:
                try:
                    _APP = create_celery_app()
                except ConfigError as exc:
                    if loading_celery_app():
                        # `celery -A module worker|beat|flower` is loading a module
                        # that calls this: one line, as the package's own entry
                        # gives, instead of Celery's traceback of the import.
                        print(f"csuite-async-obs: {exc}", file=sys.stderr)
                        raise SystemExit(2) from None
                    raise
    return _APP


def reset_celery_app() -> None:
    """Forget the process's app so the next :func:`get_celery_app` re-reads the environment."""
    global _APP
    with _APP_LOCK:
        _APP = None
