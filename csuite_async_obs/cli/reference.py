"""The README's reference tables, generated from the one place each is defined.

``tests/test_readme.py`` fails when the README's copy differs, so the tables
cannot drift from the code: regenerate with ``csuite-async-obs options
--markdown`` and ``csuite-async-obs metrics --markdown``.
"""

from __future__ import annotations

from ..config.options import OBS_OPTIONS, default_text
from ..metrics.catalog import METRICS

__all__ = ["metrics_table", "options_table"]


def options_table() -> str:
    rows = [
        "| `instrument()` keyword | variable | `celery worker` flag | `celery beat` | default "
        "| meaning |",
        "|---|---|---|---|---|---|",
    ]
    for option in OBS_OPTIONS:
        help_text = option.help.replace("|", "\\|")
        beat = "yes" if option.beat else "no"
        rows.append(
            f"| `{option.attr}` | `{option.env}` | `{option.flag}` | {beat} "
            f"| `{default_text(option.attr)}` | {help_text} |"
        )
    return "\n".join(rows)


def metrics_table() -> str:
    rows = [
        "| metric | type | labels | meaning | series at 0 from start | served by | brokers |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec in METRICS:
        labels = ", ".join(f"`{label}`" for label in spec.labels) or "(none)"
        help_text = spec.help.replace("|", "\\|")
        zero = spec.zero_initialised.replace("|", "\\|")
        brokers = (spec.brokers or "all").replace("|", "\\|")
        rows.append(
            f"| `{spec.name}` | {spec.type} | {labels} | {help_text} | {zero} | {spec.process} "
            f"| {brokers} |"
        )
    return "\n".join(rows)
