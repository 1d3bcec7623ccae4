"""csuite-async-obs: the C-Suite task API on Celery, observable from inside the worker.

Task API: :func:`get_celery_app`, :func:`async_task`, :func:`delay_task`,
:func:`get_task_result`, :func:`wait_for_task`.  Observability:
:func:`instrument` (one line for any Celery app; apps from
:func:`get_celery_app` are instrumented already), :func:`uninstrument`, and
:func:`metrics_asgi_app` for processes that only publish.

Everything not named in ``__all__`` is private; ``ARCHITECTURE.md`` says which
subpackage holds what.  The names are loaded on first use, so that a program
that needs one part (the standalone exporter, a web process) does not import
Celery's worker with the rest.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config.celery_settings import CelerySettings
    from .config.errors import ConfigError
    from .config.options import ObsSettings
    from .instrumentation.instrument import (
        Instrumentation,
        instrument,
        instrumentation_for,
        uninstrument,
    )
    from .metrics.catalog import METRICS, MetricSpec
    from .metrics.task_metrics import TaskMetrics
    from .task_api.app import create_celery_app, get_celery_app, reset_celery_app
    from .task_api.metrics_apps import metrics_asgi_app, metrics_wsgi_app
    from .task_api.publishing import async_task, delay_task
    from .task_api.results import TaskStatus, get_task_result, wait_for_task

try:
    __version__ = version("csuite-async-obs")
except PackageNotFoundError:  # pragma: no cover -- running from a source tree
    __version__ = "0.0.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "METRICS": "metrics.catalog",
    "CelerySettings": "config.celery_settings",
    "ConfigError": "config.errors",
    "Instrumentation": "instrumentation.instrument",
    "MetricSpec": "metrics.catalog",
    "ObsSettings": "config.options",
    "TaskMetrics": "metrics.task_metrics",
    "TaskStatus": "task_api.results",
    "async_task": "task_api.publishing",
    "create_celery_app": "task_api.app",
    "delay_task": "task_api.publishing",
    "get_celery_app": "task_api.app",
    "get_task_result": "task_api.results",
    "instrument": "instrumentation.instrument",
    "instrumentation_for": "instrumentation.instrument",
    "metrics_asgi_app": "task_api.metrics_apps",
    "metrics_wsgi_app": "task_api.metrics_apps",
    "reset_celery_app": "task_api.app",
    "uninstrument": "instrumentation.instrument",
    "wait_for_task": "task_api.results",
}

__all__ = [
    "METRICS",
    "CelerySettings",
    "ConfigError",
    "Instrumentation",
    "MetricSpec",
    "ObsSettings",
    "TaskMetrics",
    "TaskStatus",
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
    "uninstrument",
    "wait_for_task",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
