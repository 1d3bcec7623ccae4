"""Celery bootsteps and ``celery worker`` options added by :func:`instrument`.

* :class:`MetricsStep` (worker blueprint) runs in the worker's main process
  before the consumer starts -- Celery starts the ``Consumer`` step last -- so
  every task gets its instrumented Request class before the first message is
  turned into a request.  It starts the exporter and stops it at shutdown.
* :class:`ConsumerHealthStep` (consumer blueprint) tracks whether the consumer
  is running, for ``/healthz`` and ``celery_worker_consumer_up``; Celery stops
  and restarts the consumer blueprint when the broker connection is lost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
from celery import bootsteps

from .settings import OBS_OPTIONS, ConfigError

if TYPE_CHECKING:
    from celery import Celery

    from .instrument import Instrumentation

__all__ = ["ConsumerHealthStep", "MetricsStep", "add_worker_steps"]


def _kwarg(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _instrumentation(app: Celery) -> Instrumentation | None:
    from .instrument import instrumentation_for

    return instrumentation_for(app)


class MetricsStep(bootsteps.StartStopStep):
    """Instruments the worker's requests and serves ``/metrics``."""

    label = "csuite-async-obs metrics"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.instrumentation = _instrumentation(worker.app)
        if self.instrumentation is None:
            return
        flags = {option.attr: kwargs.get(_kwarg(option.flag)) for option in OBS_OPTIONS}
        try:
            self.instrumentation.reconfigure(flags)
        except ConfigError as exc:
            # A bad flag stops start-up with one line, like a bad variable.
            raise SystemExit(f"csuite-async-obs: {exc}") from None

    def start(self, worker: Any) -> None:
        if self.instrumentation is not None:
            self.instrumentation.worker_started(worker)

    def stop(self, worker: Any) -> None:
        if self.instrumentation is not None:
            self.instrumentation.worker_stopped()

    def shutdown(self, worker: Any) -> None:
        self.stop(worker)

    # A cold shutdown (and celery.contrib.testing) sends "terminate", not "stop".
    terminate = stop


class ConsumerHealthStep(bootsteps.StartStopStep):
    """Marks the consumer running once it consumes tasks, and not running when it stops."""

    label = "csuite-async-obs consumer health"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, consumer: Any) -> None:
        instrumentation = _instrumentation(consumer.app)
        if instrumentation is not None:
            instrumentation.consumer_running = True

    def stop(self, consumer: Any) -> None:
        instrumentation = _instrumentation(consumer.app)
        if instrumentation is not None:
            instrumentation.consumer_running = False

    def shutdown(self, consumer: Any) -> None:
        self.stop(consumer)

    terminate = stop


def add_worker_steps(app: Celery) -> None:
    """Add the bootsteps and the ``--metrics-*`` options to ``app``'s workers (idempotent)."""
    if MetricsStep not in app.steps["worker"]:
        app.steps["worker"].add(MetricsStep)
        app.steps["consumer"].add(ConsumerHealthStep)
        for option in OBS_OPTIONS:
            app.user_options["worker"].add(
                click.Option(
                    [option.flag],
                    default=None,
                    metavar=option.metavar,
                    help=f"{option.help} [env {option.env}]",
                )
            )
