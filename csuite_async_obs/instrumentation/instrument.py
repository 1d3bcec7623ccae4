"""``instrument(app)``: the one line that makes a Celery app observable.

It connects the publish-side signal handlers at once (a web process that
only publishes gets ``celery_task_sent_total``), and adds a worker bootstep and
the ``--metrics-*`` worker options, so that a worker started on the app
instruments its requests and serves ``/metrics`` from its main process.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from celery import signals
from celery.utils.imports import symbol_by_name
from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from .. import compat
from ..config.errors import ConfigError
from ..config.options import ObsSettings
from ..http.server import Exporter, Renderer, start_exporter
from ..http.webconfig import WebSecurity, load_web_config
from ..metrics.exposition import make_renderer
from ..metrics.task_metrics import TaskMetrics
from ..queue_depth.poller import QueueDepthPoller, start_queue_depth
from .beat import BeatHooks
from .beat_collector import BeatCollector, BeatState
from .bootsteps import add_worker_steps, beat_flags, remove_worker_steps
from .hooks import TaskHooks, publishing
from .registry import forget, instrumentation_for, remember
from .request import instrumented_request_class
from .worker_collector import WorkerStateCollector

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["Instrumentation", "instrument", "instrumentation_for", "uninstrument"]

_LOCK = threading.Lock()
_UIDS = itertools.count(1)


class Instrumentation:
    """The metrics, hooks and (in a worker) exporter of one instrumented app."""

    def __init__(
        self,
        app: Celery,
        keywords: dict[str, Any],
        registry: CollectorRegistry | None = None,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.app = app
        self.keywords = dict(keywords)
        self._environ = environ
        self.settings = ObsSettings.resolve(self.keywords, environ)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = TaskMetrics(self.registry, self.settings)
        # The worker's scrape-time collectors (worker state, queue depth) live in
        # a registry of their own, seen through ``registry``; the exporter renders
        # the task metrics with the fast renderer and this one with prometheus_client.
        self.extra_registry = CollectorRegistry()
        self._view = _RegistryView(self.extra_registry)
        self.registry.register(self._view)
        self._own_registry = registry is None
        self.hooks = TaskHooks(app, self.metrics, self.settings)
        self.exporter: Exporter | None = None
        # Read when the settings are resolved, so that a bad file stops start-up.
        self.security: WebSecurity | None = None
        self.consumer_running = False
        self.worker: Any = None
        self._worker_collector: WorkerStateCollector | None = None
        self._queue_depth: QueueDepthPoller | None = None
        self.beat: BeatHooks | None = None
        self._beat_collector: BeatCollector | None = None
        self._original_requests: dict[str, Any] = {}
        self._send_task: tuple[Any, Any] | None = None
        self._own_send_task = False
        # Not id(self): a freed instrumentation's id is reused, and Celery keeps a
        # dead weak receiver's dispatch_uid until it cleans up, refusing the new one.
        self._uid = f"csuite_async_obs:{next(_UIDS)}"

    # ------------------------------------------------------------------ wiring

    def _signals(self) -> list[tuple[Any, Callable[..., None], str]]:
        wanted: list[tuple[Any, Callable[..., None], str]] = [
            (signals.before_task_publish, self.hooks.before_publish, ":before"),
            (signals.after_task_publish, self.hooks.after_publish, ":after"),
            (signals.task_unknown, self._on_unknown, ":unknown"),
            (signals.beat_init, self._on_beat_init, ":beat"),
        ]
        if not compat.uses_private("announce_revoked"):
            wanted.append((signals.task_revoked, self.hooks.on_task_revoked, ":revoked"))
        return wanted

    def connect_signals(self) -> None:
        """Connect the publish and worker signals, and mark this app's publishes.

        Receivers are held weakly by Celery: they go when the app goes.
        """
        for signal, receiver, suffix in self._signals():
            signal.connect(receiver, weak=True, dispatch_uid=self._uid + suffix)
        send_task = self.app.send_task
        self._own_send_task = "send_task" in self.app.__dict__  # someone else's wrapper

        @functools.wraps(send_task)
        def send_task_marked(*args: Any, **kwargs: Any) -> Any:
            with publishing(self.app):
                return send_task(*args, **kwargs)

        # An instance attribute, so that Task.apply_async, retries, canvas and
        # beat (which all call app.send_task) publish through it.
        self._send_task = (send_task, send_task_marked)
        self.app.send_task = send_task_marked  # type: ignore[method-assign]

    def disconnect_signals(self) -> None:
        for signal, _receiver, suffix in self._signals():
            signal.disconnect(dispatch_uid=self._uid + suffix)
        if self._send_task is None:
            return
        original, marked = self._send_task
        self._send_task = None
        if self.app.__dict__.get("send_task") is marked:
            if self._own_send_task:
                self.app.send_task = original  # type: ignore[method-assign]
            else:
                del self.app.__dict__["send_task"]

    def _on_unknown(self, sender: Any = None, **kwargs: Any) -> None:
        if getattr(sender, "app", self.app) is self.app:
            self.hooks.on_unknown_task(**kwargs)

    # ------------------------------------------------------------------ worker life

    def reconfigure(self, flags: dict[str, Any]) -> None:
        """Apply ``celery worker`` flags; rebuild the metrics if they change them."""
        settings = ObsSettings.resolve(self.keywords, self._environ, flags)
        if settings.metrics_port:
            source = "--metrics-web-config" if flags.get("web_config") else "CSUITE_WEB_CONFIG"
            self.security = load_web_config(settings.web_config, variable=source)
        if settings == self.settings:
            return
        self.settings = settings
        self.metrics.unregister()
        self.metrics = TaskMetrics(self.registry, settings)
        self.hooks.metrics = self.metrics
        self.hooks.settings = settings
        self.hooks.task_log = settings.task_log
        self.hooks.log_args = settings.log_task_args

    def install_request_classes(self) -> None:
        """Give every registered task a Request class that reports to these hooks."""
        for task in list(self.app.tasks.values()):
            self._original_requests.setdefault(task.name, task.Request)
            base = symbol_by_name(task.Request)
            task.Request = instrumented_request_class(base, self.hooks)

    def restore_request_classes(self) -> None:
        for name, original in self._original_requests.items():
            task = self.app.tasks.get(name)
            if task is not None:
                task.Request = original
        self._original_requests.clear()

    def worker_started(self, worker: Any) -> None:
        self.worker = worker
        self.hooks.queues.attach(worker)
        # The text format exposes every counter's _created sample as a gauge
        # series of its own: twice the series for nothing an alert uses.  The
        # worker process is ours, so we switch them off for it.
        disable_created_metrics()
        compat.log_paths(self.hooks.log)
        self.install_request_classes()
        self.hooks.prime()
        collector = WorkerStateCollector(
            worker,
            lambda: self.consumer_running,
            self.settings.const_labels,
            on_error=lambda exc: self.hooks.fail("collect", exc),
        )
        self.extra_registry.register(collector)
        self._worker_collector = collector
        if self.settings.queue_depth:
            try:
                self._queue_depth = start_queue_depth(
                    self.app,
                    self.extra_registry,
                    self.settings,
                    consumed_queues=lambda: _consumed_queues(worker),
                    on_error=lambda exc: self.hooks.fail("collect", exc),
                )
            except Exception as exc:  # noqa: BLE001 -- the worker runs on without queue depth
                self.hooks.fail("collect", exc)
        self._start_exporter(self.health, "The worker keeps running without its exporter.")

    def _start_exporter(
        self, health: Callable[[], tuple[bool, dict[str, Any]]], fallback: str
    ) -> None:
        if not self.settings.metrics_port:
            return
        security = self.security or load_web_config(self.settings.web_config)
        self.exporter = start_exporter(
            self.registry,
            port=self.settings.metrics_port,
            addr=self.settings.metrics_addr,
            health=health,
            authenticate=security.authenticate,
            ssl_context=security.ssl_context,
            renderer=self.renderer(),
            on_error=lambda exc: self.hooks.fail("exporter", exc),
            log_format=self.settings.log_format,
            on_bind_failure=fallback,
        )
        if self.exporter is not None:
            self.hooks.log.info(
                "metrics_exporter_started",
                url=self.exporter.url,
                basic_auth=security.basic_auth,
                pid=os.getpid(),
            )

    # ------------------------------------------------------------------ beat life

    def _on_beat_init(self, sender: Any = None, **_: Any) -> None:
        """``celery beat`` starts on this app: its flags, its scheduler, its exporter."""
        if getattr(sender, "app", None) is not self.app or self.beat is not None:
            return
        try:
            self.reconfigure(beat_flags())
        except ConfigError as exc:
            # A bad flag or variable stops beat with one line, as it stops a worker.
            raise SystemExit(f"csuite-async-obs: {exc}") from None
        try:
            self.beat_started(sender.scheduler)
        except Exception as exc:  # noqa: BLE001 -- beat runs on uninstrumented
            self.hooks.fail("beat", exc)

    def beat_started(self, scheduler: Any) -> BeatHooks:
        """Instrument a beat scheduler instance and serve its ``/metrics``."""
        disable_created_metrics()
        metrics = self.metrics
        state = BeatState(
            guard_entry=metrics.guard("entry", self.settings.max_beat_entries),
            guard_task=metrics.guard_name,
            on_error=lambda exc: self.hooks.fail("beat", exc),
        )
        self._beat_collector = BeatCollector(state, self.settings.const_labels)
        self.extra_registry.register(self._beat_collector)
        self.beat = BeatHooks(scheduler, state, self.hooks.fail, on_close=self.beat_stopped)
        self.beat.install()
        self._start_exporter(self.beat_health, "Beat keeps running without its exporter.")
        return self.beat

    def beat_stopped(self) -> None:
        if self.exporter is not None:
            self.exporter.stop()
            self.exporter = None

    def beat_health(self) -> tuple[bool, dict[str, Any]]:
        beat = self.beat
        if beat is None:
            return False, {"beat_running": False}
        state = beat.state
        return state.running, {
            "beat_running": state.running,
            "seconds_since_tick": round(time.time() - state.last_tick, 3),
            "entries": state.size,
        }

    def worker_stopped(self) -> None:
        if self._queue_depth is not None:
            self._queue_depth.stop()
            self._queue_depth = None
        if self.exporter is not None:
            self.exporter.stop()
            self.exporter = None
        if self._worker_collector is not None:
            self.extra_registry.unregister(self._worker_collector)
            self._worker_collector = None
        self.consumer_running = False

    def unregister(self) -> None:
        """Take every metric of this instrumentation off its registry (which may be the
        caller's), so that the app can be instrumented on it again."""
        self.metrics.unregister()
        with contextlib.suppress(KeyError):
            self.registry.unregister(self._view)

    def renderer(self) -> Renderer | None:
        """The exporter's fast ``/metrics`` renderer, or ``None`` to use the registry as is.

        Only when this instrumentation owns its registry: a registry passed in
        may hold the application's own metrics, which the renderer would miss.
        """
        if not self._own_registry:
            return None
        return make_renderer(self.metrics.exposition(), self.extra_registry)

    def health(self) -> tuple[bool, dict[str, Any]]:
        hostname = getattr(self.worker, "hostname", None)
        detail: dict[str, Any] = {
            "consumer_running": self.consumer_running,
            "hostname": hostname,
        }
        poller = self._queue_depth
        if poller is not None:
            # Queue depth does not decide the worker's health; it is reported.
            fresh, queue_depth = poller.health()
            detail["queue_depth_absent_metrics"] = queue_depth["absent_metrics"]
            detail["queue_depth"] = {"fresh": fresh, **queue_depth}
        return self.consumer_running, detail


class _RegistryView(Collector):
    """Exposes another registry's metrics through the one it is registered on."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        return self._registry.collect()


def _consumed_queues(worker: Any) -> list[str]:
    """Queue names the worker consumes: the live consumer's, else its -Q selection."""
    task_consumer = getattr(getattr(worker, "consumer", None), "task_consumer", None)
    if task_consumer is not None:
        return [queue.name for queue in task_consumer.queues]
    # Before the consumer starts (worker_started runs first): -Q, or every app queue.
    return list(worker.app.amqp.queues.consume_from)


def instrument(
    app: Celery,
    *,
    registry: CollectorRegistry | None = None,
    **options: Any,
) -> Instrumentation:
    """Instrument ``app``: publish-side metrics now, worker metrics and exporter in workers.

    Args:
        app: the Celery app.  Call this before the worker starts (at import of
            the module named by ``celery -A``).
        registry: where to register the metrics; a new one by default, so that
            two apps, or tests, never share state.
        **options: any of :data:`csuite_async_obs.settings.OBS_OPTIONS`
            (``metrics_port=9808``, ``runtime_buckets=[...]``,
            ``const_labels={"team": "x"}`` ...).  The matching ``CSUITE_*``
            variable and ``celery worker`` flag override a keyword.

    Returns:
        The :class:`Instrumentation`; calling again for the same app returns it.

    Raises:
        ConfigError: an option or variable has a bad value.
    """
    with _LOCK:
        existing = instrumentation_for(app)
        if existing is not None:
            return existing
        instrumentation = Instrumentation(app, options, registry)
        instrumentation.connect_signals()
        add_worker_steps(app)
        remember(app, instrumentation)
        return instrumentation


def uninstrument(app: Celery) -> bool:
    """Undo :func:`instrument`: ``app`` publishes and runs tasks as if never instrumented.

    Disconnects the signal handlers, stops a running exporter and queue-depth
    poller, gives the tasks back their own Request classes and removes the
    bootsteps and ``--metrics-*`` options (for workers started afterwards).

    Returns:
        Whether ``app`` was instrumented.
    """
    with _LOCK:
        instrumentation = instrumentation_for(app)
        if instrumentation is None:
            return False
        instrumentation.worker_stopped()
        instrumentation.beat_stopped()
        if instrumentation.beat is not None:
            instrumentation.beat.uninstall()
        instrumentation.disconnect_signals()
        instrumentation.restore_request_classes()
        instrumentation.unregister()
        remove_worker_steps(app)
        forget(app)
        return True
