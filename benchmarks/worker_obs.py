"""``celery -A benchmarks.worker_obs worker``: the same app with ``instrument(app)``."""

from __future__ import annotations

from benchmarks.apps import make_app
from csuite_async_obs import instrument

app = make_app("bench_obs")
instrumentation = instrument(app)
