"""Configuration: the ``CELERY_*`` and ``CSUITE_*`` settings, parsed once, failing fast.

:mod:`.errors` holds :class:`~.errors.ConfigError`, :mod:`.parse` the value
parsers, :mod:`.celery_settings` the task API's Celery configuration and
:mod:`.options` the instrumentation's options.  Nothing here imports Celery's
worker, the metrics or the exporter; everything above imports from here.
"""
