"""Write the default config's Grafana dashboards: the committed copies of the generator's output.

    python dashboards/generate.py           # (re)write dashboards/*.json and the package's copies
    python dashboards/generate.py --check   # exit 1 if a committed file differs

The dashboards are code in the package (``csuite_async_obs/monitoring/boards.py``,
one function per row; see :mod:`csuite_async_obs.monitoring.dashboards`), built
from a monitoring config.  The default config's output is committed twice: here,
for a source checkout, and in ``csuite_async_obs/monitoring/default_dashboards/``,
shipped in the wheel for installations without the Grafana Foundation SDK.  For
another config, use ``csuite-async-obs export``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PACKAGE_COPY = ROOT / "csuite_async_obs" / "monitoring" / "default_dashboards"

# This checkout's package, also when it is not the one installed.
sys.path.insert(0, str(ROOT))

from csuite_async_obs.monitoring import dashboards  # noqa: E402


def render() -> dict[str, str]:
    """File name -> JSON text of every default dashboard, made by the generator.

    Raises:
        ImportError: no Grafana Foundation SDK (render() would give the shipped copies).
    """
    import csuite_async_obs.monitoring.boards  # noqa: F401 -- the generator, not the copies

    return dashboards.render()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if a committed file differs from the generated one",
    )
    args = parser.parse_args(argv)
    try:
        rendered = render()
    except ImportError as exc:
        print(f"{exc}: {dashboards.INSTALL_HINT}", file=sys.stderr)
        return 2
    stale = []
    for folder in (HERE, PACKAGE_COPY):
        for name, text in rendered.items():
            path = folder / name
            current = path.read_text() if path.exists() else None
            if current == text:
                continue
            if args.check:
                stale.append(str(path))
            else:
                path.write_text(text)
                print(f"wrote {path}")
    if stale:
        print(
            f"out of date: {', '.join(stale)}; run python dashboards/generate.py", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
