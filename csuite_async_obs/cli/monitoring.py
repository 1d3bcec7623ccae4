"""``csuite-async-obs monitoring``: the rules and dashboards, generated from a config.

``export`` writes them (plain rule files, a PrometheusRule manifest, Grafana JSON and
a provisioning file) from the installed package, so a wheel install needs no source
checkout; ``config`` prints a commented example config or checks one.  A bad config
ends the command with one line naming the key and the value, and exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from ..monitoring.config import MonitoringConfig

__all__ = ["monitoring"]


@click.group()
def monitoring() -> None:
    """Prometheus rules and Grafana dashboards generated from a monitoring config."""


def _load(path: Path | None) -> MonitoringConfig:
    from ..monitoring.config import MonitoringConfigError, load_config
    from ..monitoring.rules import validate

    try:
        config = load_config(path)
        validate(config)
    except MonitoringConfigError as exc:
        click.echo(f"csuite-async-obs: {exc}", err=True)
        sys.exit(2)
    return config


@monitoring.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Monitoring config (YAML, or TOML on Python 3.11+); the defaults without it.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write into: prometheus/, kubernetes/, grafana/ under it.",
)
@click.option(
    "--format",
    "formats",
    type=click.Choice(["rules", "operator", "grafana", "all"]),
    multiple=True,
    default=("all",),
    show_default=True,
    help="What to write; repeat for several.  `all` skips Grafana (with a warning) "
    "when the dashboards cannot be generated here.",
)
@click.option("--manifest-name", default="csuite-async-obs", show_default=True,
              help="metadata.name of the PrometheusRule.")  # fmt: skip
@click.option("--manifest-namespace", default="", help="metadata.namespace of the PrometheusRule.")
@click.option(
    "--manifest-label",
    "manifest_labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="A metadata.label of the PrometheusRule (what your ruleSelector matches); repeatable.",
)
@click.option(
    "--grafana-dashboards-path",
    default=None,
    help="Where Grafana reads the dashboard JSON, written into the provisioning file "
    "[default: /var/lib/grafana/dashboards/csuite-async-obs].",
)
@click.option("--grafana-folder", default="Celery", show_default=True,
              help="Grafana folder of the dashboards.")  # fmt: skip
def export(
    config_path: Path | None,
    out: Path,
    formats: tuple[str, ...],
    manifest_name: str,
    manifest_namespace: str,
    manifest_labels: tuple[str, ...],
    grafana_dashboards_path: str | None,
    grafana_folder: str,
) -> None:
    """Write the rules, the PrometheusRule and the Grafana files for a config.

    Prints each file written.  Exit status 1 when Grafana output was asked for
    by name (--format grafana) and cannot be generated.
    """
    from ..monitoring.export import (
        FORMATS,
        GRAFANA_DASHBOARDS_PATH,
        ExportError,
        ExportOptions,
        export,
    )

    labels = {}
    for item in manifest_labels:
        key, sep, value = item.partition("=")
        if not sep or not key:
            click.echo(f"csuite-async-obs: --manifest-label {item!r}: expected KEY=VALUE", err=True)
            sys.exit(2)
        labels[key] = value
    config = _load(config_path)
    options = ExportOptions(
        manifest_name=manifest_name,
        manifest_namespace=manifest_namespace,
        manifest_labels=labels,
        grafana_dashboards_path=grafana_dashboards_path or GRAFANA_DASHBOARDS_PATH,
        grafana_folder=grafana_folder,
    )
    wanted = list(FORMATS) if "all" in formats else [f for f in FORMATS if f in formats]
    written = []
    try:
        written = export(config, out, [f for f in wanted if f != "grafana"], options)
        if "grafana" in wanted:
            written += export(config, out, ["grafana"], options)
    except ExportError as exc:
        if "all" in formats:
            click.echo(f"csuite-async-obs: grafana skipped: {exc}", err=True)
        else:
            for path in written:
                click.echo(str(path))
            click.echo(f"csuite-async-obs: {exc}", err=True)
            sys.exit(1)
    for path in written:
        click.echo(str(path))


@monitoring.command("config")
@click.option("--example", is_flag=True, help="Print a commented config of every default.")
@click.option(
    "--check",
    "check_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Load and check a config: exit status 2 and the bad key when it is wrong.",
)
def config_command(example: bool, check_path: Path | None) -> None:
    """Print an example monitoring config, or check one."""
    from ..monitoring.export import example_config, groups_summary

    if example == (check_path is not None):
        raise click.UsageError("give one of --example or --check FILE")
    if example:
        click.echo(example_config(), nl=False)
        return
    config = _load(check_path)
    for name, count in groups_summary(config):
        click.echo(f"{name}: {count} rules")
    click.echo(f"{check_path}: ok")
