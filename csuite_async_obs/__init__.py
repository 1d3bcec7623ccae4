"""csuite-async-obs: the C-Suite task API on Celery, observable from inside the worker.

Task API: :func:`get_celery_app`, :func:`async_task`, :func:`delay_task`,
:func:`get_task_result`, :func:`wait_for_task`.  Observability:
:func:`instrument` (one line for any Celery app; apps from
:func:`get_celery_app` are instrumented already) and :func:`metrics_asgi_app`
for processes that only publish.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .instrument import Instrumentation, instrument, instrumentation_for
from .metrics import METRICS, MetricSpec, TaskMetrics
from .publish import metrics_asgi_app, metrics_wsgi_app
from .settings import CelerySettings, ConfigError, ObsSettings
from .task_api import (
    async_task,
    create_celery_app,
    delay_task,
    get_celery_app,
    get_task_result,
    reset_celery_app,
    wait_for_task,
)

try:
    __version__ = version("csuite-async-obs")
except PackageNotFoundError:  # pragma: no cover -- running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "METRICS",
    "CelerySettings",
    "ConfigError",
    "Instrumentation",
    "MetricSpec",
    "ObsSettings",
    "TaskMetrics",
    "__version__",
    "async_task",
    "create_celery_app",
    "delay_task",
    "get_celery_app",
    "get_task_result",
    "instrument",
    "instrumentation_for",
    "metrics_asgi_app",
    "metrics_wsgi_app",
    "reset_celery_app",
    "wait_for_task",
]
