"""The C-Suite task API the platform codes against.

:mod:`.app` (``get_celery_app``), :mod:`.publishing` (``async_task``,
``delay_task``), :mod:`.results` (``get_task_result``, ``wait_for_task``),
:mod:`.known_states` (queued versus unknown) with one module per result backend
(:mod:`.redis_backend`, :mod:`.rpc_backend`, :mod:`.database_backend`),
:mod:`.metrics_apps` (``/metrics`` for web processes).
It sits on top of the instrumentation; nothing below imports it.
"""
