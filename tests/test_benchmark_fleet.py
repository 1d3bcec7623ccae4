"""The fleet benchmark runs end to end in ``--quick`` mode, and its series counts are exact.

A real Prometheus scrapes 5 simulated workers x 5 task names per case (default,
full, native, peer).  No timing is asserted; the counts are: the series
Prometheus holds for the fleet's targets equal workers x (series per task x
names + fixed series per target), where the shape is computed from what the
package's renderer serves (a worker with one name against one with two), and
equal what every simulated worker serves at the end plus Prometheus's synthetic
series.  The defaults' known sizes are checked too, so that a shape computed wrong
cannot pass by agreeing with itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.fleet import CASES, SYNTHETIC_PER_TARGET, series_shape

from .support import run_benchmark

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="needs the prometheus binary"
)


def test_series_shapes_match_the_profiles() -> None:
    # Each name failed once (the harness primes it), which adds its failed{exception} series.
    assert series_shape("default", 1)["per_task"] == 49 + 1
    assert series_shape("native", 1)["per_task"] == 18 + 1
    assert series_shape("peer", 1) == {
        "per_task": 50,
        "fixed_per_target": SYNTHETIC_PER_TARGET,
        "per_target": 50 + SYNTHETIC_PER_TARGET,
    }
    assert series_shape("full", 1)["per_task"] > 140


def test_quick_fleet_run_counts_exactly(tmp_path: Path) -> None:
    out = tmp_path / "fleet"
    proc = run_benchmark("benchmarks.fleet", "--quick", "--out", str(out), timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    markdown = (out / "results.md").read_text()
    assert data["stamp"]["command"] == f"python -m benchmarks.fleet --quick --out {out}"
    assert data["stamp"]["command"] in markdown
    assert data["stamp"]["git"] and data["stamp"]["machine"]["cores"]

    cells = {cell["case"]: cell for cell in data["cells"]}
    assert set(cells) == set(CASES)
    for case, cell in cells.items():
        assert "skipped" not in cell, cell
        workers, names = cell["workers"], cell["names"]
        assert (workers, names) == (5, 5)
        shape = series_shape(case, names)
        assert cell["shape"] == shape
        expected = workers * (shape["per_task"] * names + shape["fixed_per_target"])
        assert cell["expected_fleet_series"] == expected, case
        assert cell["served_series"] == expected, case
        assert cell["fleet_series"] == expected, case
        # Every target was scraped, and each scrape brought the whole body.
        assert cell["targets_up"] == workers, case
        assert cell["scrape_samples"]["max"] == shape["per_target"] - SYNTHETIC_PER_TARGET
        assert cell["scrape_samples"]["min"] == cell["scrape_samples"]["max"]
        # Measured from Prometheus itself: head series, RSS, scrape times, every rule group.
        assert cell["head_series"] > expected
        assert cell["rss_bytes"] > 0
        assert cell["scrape_duration_s"]["n"] >= workers
        assert {"csuite-async-obs.recording", "csuite-async-obs.alerts"} <= set(
            cell["rule_groups_s"]
        )
        assert all(q["n"] >= 1 for q in cell["rule_groups_s"].values())
        fmt = "protobuf" if case == "native" else "text"
        assert cell["format"] == fmt
        assert set(cell["responses"]) == {fmt}, cell["responses"]
        assert cell["responses"][fmt]["mean_bytes"] > 0
    # The scrape goal's short version: a real prefork worker, 20 names, 8 child restarts.
    scrape = data["scrape"]
    assert "error" not in scrape, scrape
    steps = scrape["steps"]
    assert [r["restarts"] for r in steps] == [0, 8]
    assert steps[-1]["tasks_succeeded"] == 8
    assert steps[0]["series"]["total"] == steps[-1]["series"]["total"]
    assert all(r["scrapes"] == 5 for r in steps)
    assert "measured up to 8 restarts only" in scrape["goal"]["verdict"]
    assert "## Scrape goal: a real worker after child churn" in markdown
    # The recording rules read the package's series.
    assert cells["default"]["rule_output_series"]
    assert "## Cost per 1,000 workers" in markdown
    assert [row["case"] for row in data["per_1000"]] == list(CASES)
