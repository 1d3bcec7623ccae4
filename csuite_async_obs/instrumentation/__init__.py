"""The Celery integration: ``instrument(app)`` and everything it wires into a worker.

:mod:`.instrument` (the one-line entry, :class:`~.instrument.Instrumentation`),
:mod:`.registry` (which app is instrumented by what), :mod:`.hooks` (shared
state, publish side), :mod:`.request` (the worker's per-task hooks),
:mod:`.bootsteps` (worker steps and ``--metrics-*`` options),
:mod:`.worker_collector` (the ``celery_worker_*`` gauges).
"""
