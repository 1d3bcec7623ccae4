"""Worker entry point: ``celery -A csuite_async_obs.worker worker``.

The app is :func:`~csuite_async_obs.get_celery_app`'s, configured from the
``CELERY_*`` variables and instrumented.  The worker imports the task modules
listed in ``CELERY_IMPORTS`` (comma-separated); or point ``-A`` at a module of
your own that defines ``celery_app = get_celery_app()`` and imports your tasks.
A bad variable stops start-up with one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys

from .config.errors import ConfigError
from .task_api.app import get_celery_app

try:
    app = celery_app = get_celery_app()
except ConfigError as exc:  # imported outside the celery command
    print(f"csuite-async-obs: {exc}", file=sys.stderr)
    raise SystemExit(2) from None

__all__ = ["app", "celery_app"]
