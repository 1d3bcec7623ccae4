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

from ..config.errors import ConfigError
from ..config.options import OBS_OPTIONS
from .hooks import worker_booting
from .registry import instrumentation_for

if TYPE_CHECKING:
    from celery import Celery

__all__ = [
    "ConsumerHealthStep",
    "MetricsStep",
    "add_worker_steps",
    "beat_flags",
    "remove_worker_steps",
]


def _kwarg(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


class MetricsStep(bootsteps.StartStopStep):
    """Instruments the worker's requests and serves ``/metrics``."""

    label = "csuite-async-obs metrics"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.instrumentation = instrumentation_for(worker.app)
        if self.instrumentation is None:
            return
        worker_booting()
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
        instrumentation = instrumentation_for(consumer.app)
        if instrumentation is not None:
            instrumentation.consumer_running = True

    def stop(self, consumer: Any) -> None:
        instrumentation = instrumentation_for(consumer.app)
        if instrumentation is not None:
            instrumentation.consumer_running = False

    def shutdown(self, consumer: Any) -> None:
        self.stop(consumer)

    terminate = stop


def add_worker_steps(app: Celery) -> None:
    """Add the bootsteps and the ``--metrics-*`` options to ``app``'s workers, and
    the options that apply to beat to ``celery beat`` (idempotent)."""
    if MetricsStep in app.steps["worker"]:
        return
    app.steps["worker"].add(MetricsStep)
    app.steps["consumer"].add(ConsumerHealthStep)
    for option in OBS_OPTIONS:
        for command in ("worker", "beat") if option.beat else ("worker",):
            app.user_options[command].add(
                click.Option(
                    [option.flag],
                    default=None,
                    metavar=option.metavar,
                    help=f"{option.help_text()} [env {option.env}]",
                )
            )


def remove_worker_steps(app: Celery) -> None:
    """Undo :func:`add_worker_steps` (for workers started after the call)."""
    app.steps["worker"].discard(MetricsStep)
    app.steps["consumer"].discard(ConsumerHealthStep)
    flags = {option.flag for option in OBS_OPTIONS}
    for command in ("worker", "beat"):
        options = app.user_options[command]
        for option in [o for o in options if set(getattr(o, "opts", ())) & flags]:
            options.discard(option)


def beat_flags() -> dict[str, Any]:
    """The ``--metrics-*`` flags given to the running ``celery beat`` command.

    Celery passes a beat's user options to ``Beat`` (which drops them), not to the
    scheduler or the ``beat_init`` signal: they are read from click's context of
    the command, which is the current one while ``beat_init`` is sent.
    """
    context = click.get_current_context(silent=True)
    params = context.params if context is not None and context.info_name == "beat" else {}
    return {option.attr: params.get(_kwarg(option.flag)) for option in OBS_OPTIONS if option.beat}
