"""The Grafana dashboards of a monitoring config, as JSON text: :func:`render`.

The dashboards are code (:mod:`.boards`, one function per row, on the panel
builders of :mod:`.panels` and the PromQL of :mod:`.queries`), built with the
Grafana Foundation SDK.  The SDK is an optional dependency (the ``dashboards``
extra, Python 3.11+), imported only here and only when a dashboard is built, so
that the package imports and exports its rules without it.

Without the SDK the default config's dashboards still come out: the wheel ships
them (``default_dashboards/*.json``, the same bytes as the committed
``dashboards/*.json``; a test compares them with the generator's output) and
:func:`render` returns those when no dashboard-relevant setting differs from its
default.  Any other config raises :class:`DashboardsUnavailable`.
"""

from __future__ import annotations

import importlib
import json
from importlib import resources
from typing import Any

from .config import DashboardSettings, MonitoringConfig, Selectors

__all__ = [
    "DASHBOARD_FILES",
    "INSTALL_HINT",
    "DashboardsUnavailable",
    "render",
    "shipped_defaults",
    "uses_default_dashboards",
]

#: The files :func:`render` always returns (``slo.json`` besides when the config has SLOs).
DASHBOARD_FILES = ("overview.json", "task.json")
INSTALL_HINT = "pip install 'csuite-async-obs[dashboards]' (Python 3.11+)"
_SDK = "grafana_foundation_sdk"


class DashboardsUnavailable(RuntimeError):
    """The config's dashboards need the Grafana Foundation SDK, which is not installed."""


def uses_default_dashboards(config: MonitoringConfig) -> bool:
    """Whether ``config``'s overview and task dashboards are the shipped default ones.

    They depend on the selectors, the cluster label and the dashboard settings only.
    """
    return (
        config.selectors == Selectors()
        and config.cluster_label is None
        and config.dashboards == DashboardSettings()
    )


def _text(data: dict[str, Any]) -> str:
    """JSON text exactly as committed: sorted keys, two-space indent, a final newline."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def shipped_defaults() -> dict[str, str]:
    """File name -> JSON text of the default dashboards shipped in the package."""
    folder = resources.files(__package__) / "default_dashboards"
    return {name: (folder / name).read_text(encoding="utf-8") for name in DASHBOARD_FILES}


def _missing_sdk(exc: ImportError) -> bool:
    return (exc.name or "").split(".")[0] == _SDK


def render(config: MonitoringConfig | None = None) -> dict[str, str]:
    """Build the dashboards of ``config`` (the defaults when ``None``).

    Returns:
        File name -> JSON text: ``overview.json``, ``task.json``, and ``slo.json``
        when the SLO generator gives a dashboard for the config's objectives.

    Raises:
        DashboardsUnavailable: the Grafana Foundation SDK is not installed and the
            config is not the default one (the message says what to install).
    """
    config = config or MonitoringConfig()
    try:
        from .boards import Board, overview, task_dashboard
        from .panels import finish
    except ImportError as exc:
        if not _missing_sdk(exc):
            raise
        if not uses_default_dashboards(config):
            raise DashboardsUnavailable(
                "dashboards for a config other than the default need the Grafana Foundation "
                f"SDK, which is not installed: {INSTALL_HINT}"
            ) from None
        out = shipped_defaults()
    else:
        board = Board.from_config(config)
        out = {
            "overview.json": _text(finish(overview(board))),
            "task.json": _text(finish(task_dashboard(board))),
        }
    slo = _slo_dashboard(config)
    if slo is not None:
        out["slo.json"] = _text(slo)
    return out


def _slo_dashboard(config: MonitoringConfig) -> dict[str, Any] | None:
    """The SLO dashboard, when the SLO generator (``slo.py``) exists and makes one."""
    try:
        module = importlib.import_module(f"{__package__}.slo")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.slo":
            raise
        return None
    make = getattr(module, "slo_dashboard", None)
    if make is None:
        return None
    try:
        data = make(config)
    except ImportError as exc:
        if not _missing_sdk(exc):
            raise
        raise DashboardsUnavailable(
            f"the SLO dashboard needs the Grafana Foundation SDK: {INSTALL_HINT}"
        ) from None
    return data if isinstance(data, dict) else None
