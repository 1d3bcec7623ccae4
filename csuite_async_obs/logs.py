"""Structured logging for the package, through structlog.

Events are rendered by structlog (JSON or console lines, chosen by
``CSUITE_LOG_FORMAT``) and written through the standard library logger
``csuite_async_obs``, which has a stderr handler of its own and does not
propagate: the application's logging and structlog configuration are left
alone.  The standard library re-initialises its handler locks in a forked
child, so a prefork pool child can never inherit a log lock held by one of the
worker's threads (structlog's own print loggers keep a lock that is not reset
at fork).  Task lifecycle events are off unless ``CSUITE_TASK_LOG`` is true:
rendering a line per task costs more than all of the task metrics together.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

__all__ = ["get_logger"]

_LOGGERS: dict[str, Any] = {}
LOGGER_NAME = "csuite_async_obs"


def _stdlib_logger() -> logging.Logger:
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(logging.INFO)
    return logger


def get_logger(log_format: str = "console") -> Any:
    """The package's bound logger, rendering ``console`` or ``json`` lines to stderr."""
    logger = _LOGGERS.get(log_format)
    if logger is None:
        renderer: Any
        if log_format == "json":
            renderer = structlog.processors.JSONRenderer()
        else:
            renderer = structlog.dev.ConsoleRenderer(colors=False)
        logger = structlog.wrap_logger(
            _stdlib_logger(),
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.format_exc_info,
                renderer,
            ],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        ).bind(logger=LOGGER_NAME)
        _LOGGERS[log_format] = logger
    return logger
