"""Structured logging for the package, through structlog.

The package logs through its own structlog logger (``csuite_async_obs``) that
renders either JSON or console lines, chosen by ``CSUITE_LOG_FORMAT``.  It does
not configure structlog globally, so an application's own structlog setup is
left alone.  Task lifecycle events are off unless ``CSUITE_TASK_LOG`` is true:
rendering a line per task costs more than all of the task metrics together.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

__all__ = ["get_logger"]

_LOGGERS: dict[str, Any] = {}


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
            structlog.PrintLogger(sys.stderr),
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.format_exc_info,
                renderer,
            ],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            logger_name="csuite_async_obs",
        ).bind(logger="csuite_async_obs")
        _LOGGERS[log_format] = logger
    return logger
