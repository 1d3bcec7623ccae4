"""One test per defect the layout review found (issue 13)."""

from __future__ import annotations

import ast
import gc
import logging
import socket
import ssl
import subprocess
import sys
import threading
import uuid
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from csuite_async_obs import ConfigError, instrument, instrumentation_for, uninstrument
from csuite_async_obs.cli.main import main as cli
from csuite_async_obs.config.options import OBS_OPTIONS, OPTIONS_BY_ATTR, ObsSettings
from csuite_async_obs.config.parse import parse_labels
from csuite_async_obs.http.server import start_exporter
from csuite_async_obs.instrumentation.bootsteps import ConsumerHealthStep, MetricsStep
from csuite_async_obs.logs import LOGGER_NAME
from csuite_async_obs.metrics.catalog import INSTRUMENTATION_HOOKS, METRICS
from csuite_async_obs.metrics.task_metrics import TaskMetrics
from csuite_async_obs.queue_depth.standalone import ExporterNotStarted, run_standalone_exporter

from .support import ROOT, base_env

PACKAGE = ROOT / "csuite_async_obs"


def _memory_app(name: str) -> Celery:
    app = Celery(name, broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.task_default_queue = f"{name}-{uuid.uuid4().hex[:8]}"

    @app.task(name="shared.task", shared=False)
    def shared_task() -> None:
        return None

    return app


@pytest.fixture()
def no_env_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    # Celery lets these variables override any app's configuration.
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)


@pytest.fixture()
def package_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    # The package's logger does not propagate (it leaves the application's alone).
    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


def test_each_app_counts_only_its_own_publishes(no_env_broker: None) -> None:
    first, second = _memory_app("first"), _memory_app("second")
    registries = {app.main: CollectorRegistry() for app in (first, second)}
    for app in (first, second):
        instrument(app, registry=registries[app.main], metrics_port=0)
    try:
        for _ in range(3):
            first.tasks["shared.task"].delay()
        for _ in range(5):
            second.tasks["shared.task"].apply_async()
        second.send_task("shared.task")
        sent = {
            app.main: registries[app.main].get_sample_value(
                "celery_task_sent_total",
                {"name": "shared.task", "queue_name": app.conf.task_default_queue},
            )
            for app in (first, second)
        }
        assert sent == {"first": 3.0, "second": 6.0}
        # Neither counted the other's queue at all.
        other = registries["first"].get_sample_value(
            "celery_task_sent_total",
            {"name": "shared.task", "queue_name": second.conf.task_default_queue},
        )
        assert other is None
    finally:
        uninstrument(first)
        uninstrument(second)


def test_every_hook_exists_at_zero_and_every_reported_hook_is_known() -> None:
    registry = CollectorRegistry()
    TaskMetrics(registry, ObsSettings())
    for hook in INSTRUMENTATION_HOOKS:
        value = registry.get_sample_value(
            "csuite_async_obs_instrumentation_errors_total", {"hook": hook}
        )
        assert value == 0, hook
    assert "log" in INSTRUMENTATION_HOOKS
    # Every hook name the package reports an error under is one created at zero.
    reported: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if (
                name in ("fail", "report", "error")
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and len(node.args) == 2
            ):
                reported.add(first.value)
    assert reported, "no reported hook found: the scan is broken"
    assert reported <= set(INSTRUMENTATION_HOOKS), reported - set(INSTRUMENTATION_HOOKS)


def test_a_dropped_app_is_freed_and_uninstrument_undoes_everything(no_env_broker: None) -> None:
    app = _memory_app("dropped")
    instrument(app, registry=CollectorRegistry(), metrics_port=0)
    ref = weakref.ref(app)
    del app
    gc.collect()
    assert ref() is None, gc.get_referrers(ref()) if ref() is not None else None

    app = _memory_app("undone")
    registry = CollectorRegistry()
    instrumentation = instrument(app, registry=registry, metrics_port=0)
    labels = {"name": "shared.task", "queue_name": app.conf.task_default_queue}
    app.tasks["shared.task"].delay()
    assert registry.get_sample_value("celery_task_sent_total", labels) == 1
    assert uninstrument(app) is True
    assert instrumentation_for(app) is None
    assert "send_task" not in app.__dict__
    assert MetricsStep not in app.steps["worker"]
    assert ConsumerHealthStep not in app.steps["consumer"]
    flags = {o.flag for o in OBS_OPTIONS}
    assert not [o for o in app.user_options["worker"] if set(o.opts) & flags]
    app.tasks["shared.task"].delay()
    # Not counted, and its metrics are off the registry (which is the caller's).
    assert instrumentation.metrics.task("shared.task", labels["queue_name"]).sent._value.get() == 1
    assert registry.get_sample_value("celery_task_sent_total", labels) is None
    assert uninstrument(app) is False
    # Instrumented again on the same (caller's) registry: the old metrics are gone from it.
    again = instrument(app, registry=registry, metrics_port=0)
    assert again is not instrumentation and instrumentation_for(app) is again
    app.tasks["shared.task"].delay()
    assert registry.get_sample_value("celery_task_sent_total", labels) == 1
    uninstrument(app)

    # A send_task wrapper of someone else's, set before instrumenting, is given back.
    def theirs(*args: Any, **kwargs: Any) -> Any:
        return Celery.send_task(app, *args, **kwargs)

    app.send_task = theirs  # type: ignore[method-assign]
    instrument(app, registry=CollectorRegistry(), metrics_port=0)
    assert app.__dict__["send_task"] is not theirs
    uninstrument(app)
    assert app.__dict__["send_task"] is theirs


def test_exporter_help_says_what_the_exporter_does() -> None:
    text = CliRunner().invoke(cli, ["exporter", "--help"], terminal_width=200).output
    port_help = text[text.index("--metrics-port") : text.index("--metrics-addr")]
    assert "Default: 9809" in port_help
    assert "0 is refused" in port_help
    assert "turns the exporter off" not in port_help
    assert "9808" not in port_help
    queue_help = text[text.index("--metrics-max-queue-names") :]
    assert "queue-depth poller reports" in queue_help


def test_every_default_is_written_once() -> None:
    for option in OBS_OPTIONS:
        assert "Default" not in option.help, option.attr
    interval = OPTIONS_BY_ATTR["queue_poll_interval"]
    assert interval.help_text().endswith("Default: 5.")
    # The worker flags carry the dataclass's defaults.
    app = Celery("flags", set_as_current=False)
    instrument(app, registry=CollectorRegistry(), metrics_port=0)
    try:
        helps = {o.opts[0]: o.help for o in app.user_options["worker"]}
        assert "Default: 9808." in helps["--metrics-port"]
        assert "Default: 100." in helps["--metrics-max-queue-names"]
    finally:
        uninstrument(app)


def test_standalone_bind_failure_says_it_exits(package_log: pytest.LogCaptureFixture) -> None:
    app = Celery("bind", broker="memory://", set_as_current=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ExporterNotStarted):
            run_standalone_exporter(app, ObsSettings(), port=port, addr="127.0.0.1")
    assert "The exporter exits." in package_log.text
    assert "The worker keeps running" not in package_log.text


def test_exporter_url_is_https_under_tls(package_log: pytest.LogCaptureFixture) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    exporter = start_exporter(CollectorRegistry(), port=0, addr="127.0.0.1", ssl_context=context)
    assert exporter is not None
    try:
        assert exporter.url == f"https://127.0.0.1:{exporter.port}/metrics"
    finally:
        exporter.stop()
    # The standalone exporter logs that URL.
    app = Celery("tls", broker="memory://", set_as_current=False)
    stop = threading.Event()
    started: list[str] = []

    def on_ready(exporter: Any, poller: Any) -> None:
        started.append(exporter.url)
        stop.set()

    run_standalone_exporter(
        app, ObsSettings(), port=0, addr="127.0.0.1", stop_event=stop, on_ready=on_ready,
        ssl_context=context,
    )  # fmt: skip
    assert started and started[0].startswith("https://")
    assert f"url={started[0]}" in package_log.text


@pytest.mark.parametrize("label", sorted({label for spec in METRICS for label in spec.labels}))
def test_constant_labels_may_not_shadow_a_metric_label(label: str) -> None:
    with pytest.raises(ConfigError, match="CSUITE_CONST_LABELS"):
        parse_labels("CSUITE_CONST_LABELS", f"{label}=x")


def test_seed_style_worker_module_prints_one_line(tmp_path: Path) -> None:
    (tmp_path / "celery_worker.py").write_text(
        "from csuite_async_obs import get_celery_app\n\ncelery_app = get_celery_app()\n"
    )
    env = base_env("redis://127.0.0.1:1/0", "redis://127.0.0.1:1/1")
    env["CELERY_TASK_TIME_LIMIT"] = "abc"
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    for command in ("worker", "beat"):
        out = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "celery_worker", command],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 2, out.stderr
        assert out.stderr.strip().splitlines() == [
            "csuite-async-obs: CELERY_TASK_TIME_LIMIT='abc' is not valid: "
            "expected a number of seconds greater than 0"
        ]
    # Outside the celery command, the same call raises ConfigError for the caller.
    code = "import celery_worker"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert out.returncode == 1 and "ConfigError" in out.stderr
