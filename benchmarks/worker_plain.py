"""``celery -A benchmarks.worker_plain worker``: the baseline, no instrumentation at all."""

from __future__ import annotations

from benchmarks.apps import make_app

app = make_app("bench_plain")
