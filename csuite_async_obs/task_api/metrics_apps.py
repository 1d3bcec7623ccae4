"""``/metrics`` for processes that only publish tasks (a FastAPI app, beat).

One call: ``fastapi_app.mount("/metrics", metrics_asgi_app())``.  It serves the
registry of the instrumented Celery app (``celery_task_sent_total`` and the
zero series), in the text format or OpenMetrics as the scraper asks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import make_asgi_app, make_wsgi_app

from ..instrumentation.instrument import instrument
from .app import get_celery_app

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["metrics_asgi_app", "metrics_wsgi_app"]


def _registry(app: Celery | None) -> Any:
    return instrument(app if app is not None else get_celery_app()).registry


def metrics_asgi_app(app: Celery | None = None) -> Any:
    """An ASGI app serving the metrics of ``app`` (default: :func:`get_celery_app`'s)."""
    return make_asgi_app(registry=_registry(app))


def metrics_wsgi_app(app: Celery | None = None) -> Any:
    """A WSGI app serving the metrics of ``app`` (default: :func:`get_celery_app`'s)."""
    return make_wsgi_app(registry=_registry(app))
