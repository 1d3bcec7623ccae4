"""How the fleet benchmark plans its cells: the scrape interval a cell gets from what
its fleet server cost at the previous size, and the cells it skips for time or memory.

Pure functions over recorded cells; the quick run in ``test_benchmark_fleet.py`` has a
single size, so it never reaches them.
"""

from __future__ import annotations

from benchmarks.fleet import INTERVAL_STEPS, Settings, _skip_reason, cell_interval


def _cell(workers: int, per_scrape: float | None, **extra: object) -> dict[str, object]:
    return {"workers": workers, "server_cpu_s_per_scrape": per_scrape, "prime_s": 1.0, **extra}


def test_the_first_size_of_a_case_scrapes_at_the_run_interval() -> None:
    assert cell_interval(1000, Settings(interval=10.0), []) == (10.0, None)


def test_a_server_within_its_cores_keeps_the_interval() -> None:
    # 2 ms a scrape x 1,000 targets = 2 CPU s a round: 0.2 cores at 10 s.
    assert cell_interval(1000, Settings(interval=10.0), [_cell(100, 0.002)]) == (10.0, None)


def test_a_busy_server_scrapes_at_the_first_step_that_fits() -> None:
    settings = Settings(interval=10.0, server_cores=0.5)
    # Native: 9.7 ms a scrape -> 9.7 CPU s a round: 0.97 cores at 10 s, 0.49 at 20 s.
    interval, reason = cell_interval(1000, settings, [_cell(100, 0.0097)])
    assert interval == 20.0
    assert reason is not None and "every 20 s, not 10" in reason and "9.7 ms" in reason
    # Peer: 41 ms -> 41 CPU s: 0.68 cores at 60 s, 0.46 at 90 s.
    assert cell_interval(1000, settings, [_cell(100, 0.041)])[0] == 90.0
    # The last cell measured decides, not the first.
    assert cell_interval(1000, settings, [_cell(10, 0.041), _cell(100, 0.002)])[0] == 10.0


def test_a_server_too_slow_for_every_step_gets_the_longest_and_says_so() -> None:
    settings = Settings(interval=10.0, server_cores=0.5)
    interval, reason = cell_interval(1000, settings, [_cell(100, 1.0)])
    assert interval == 10.0 * INTERVAL_STEPS[-1]
    assert reason is not None and "still 8.33 cores at 120 s, the longest step" in reason


def test_a_cell_past_the_time_budget_is_skipped_with_its_longer_interval_counted() -> None:
    settings = Settings(interval=10.0, duration=60.0, budget_minutes=10.0)
    measured = [_cell(100, 0.041)]
    # 60 s measured at 10 s; at 90 s, 4 intervals (360 s) plus start-up: about 11 min.
    assert _skip_reason(1000, settings, measured, 0.0, 10.0) is None
    reason = _skip_reason(1000, settings, measured, 0.0, 90.0)
    assert reason is not None and "about 11.1 min" in reason and "10-minute" in reason


def test_a_cell_whose_prometheus_would_pass_the_memory_budget_is_skipped() -> None:
    settings = Settings(rss_budget_gib=1.0)
    shape = {"per_target": 1000}
    measured = [
        _cell(10, 0.001, rss_bytes=200 * 2**20, head_series=10_000, shape=shape),
        _cell(100, 0.001, rss_bytes=500 * 2**20, head_series=100_000, shape=shape),
    ]
    # The slope: 300 MiB per 90,000 series; 1,000 workers x 1,000 series -> about 3.4 GiB.
    reason = _skip_reason(1000, settings, measured, 0.0, 10.0)
    assert reason is not None and "1,000,000 series" in reason and "3.4 GiB" in reason
    assert _skip_reason(120, settings, measured, 0.0, 10.0) is None
