"""The package's worker app with a short Redis visibility timeout
(``TESTS_VISIBILITY_TIMEOUT`` seconds): ``celery -A tests.visibility_app``.

kombu's Redis transport keeps a delivered, unacknowledged message in its
``unacked`` hash and restores it to the queue (flagged redelivered) once it is
older than the visibility timeout, 1 h by default; the broker-outage test makes
that happen in seconds to show how the restored messages are counted.
"""

from __future__ import annotations

import os

from csuite_async_obs import get_celery_app

from . import worker_tasks  # noqa: F401 -- registers the test tasks

celery_app = get_celery_app()
celery_app.conf.broker_transport_options = {
    "visibility_timeout": float(os.environ["TESTS_VISIBILITY_TIMEOUT"])
}
