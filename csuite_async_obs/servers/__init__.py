"""Private servers and processes for the demo, the tests and the benchmarks.

:mod:`.processes` (free ports, waiting for a process to be ready, stopping a
process and its group, the ``celery worker`` command line), :mod:`.redis_server`,
:mod:`.prometheus_server`.  Nothing here imports the rest of the package.
"""
