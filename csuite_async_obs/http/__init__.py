"""The HTTP exporter and its web config; knows nothing of Celery or tasks.

:mod:`.server` (the running :class:`~.server.Exporter`, :func:`~.server.start_exporter`),
:mod:`.routes`, :mod:`.connections`, :mod:`.wire`, :mod:`.webconfig`.
"""
