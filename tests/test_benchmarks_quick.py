"""The benchmark suite runs end to end in ``--quick`` mode, so that it cannot rot.

No timing is asserted here (timing goals are judged by the benchmark itself,
in its results); the test checks that one quick run writes its JSON, Markdown
and charts, and that every case and section is in them -- measured, or with
the reason it could not run.  The package's own cases (plain, fully on) must
be measured; the peers (Flower, OpenTelemetry) may report that they are not
installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .support import run_benchmark

POOLS = ("solo", "prefork", "threads")
CASES = ("plain", "package", "hooks", "events", "flower", "otel")
OURS = ("plain", "package", "hooks", "events")
PNG = b"\x89PNG\r\n\x1a\n"


def _measured_or_reason(section: dict[str, Any], *keys: str) -> bool:
    if any(k in section for k in keys):
        return True
    return bool(section.get("error") or section.get("skipped") or section.get("reason"))


def test_quick_run_writes_every_case(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = run_benchmark("benchmarks.run", "--quick", "--out", str(out), timeout=340)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    data = json.loads((out / "results.json").read_text())
    markdown = (out / "results.md").read_text()
    for chart in ("ab_cost.png", "scrape.png", "memory.png"):
        assert (out / chart).read_bytes().startswith(PNG), chart
    assert data["stamp"]["mode"] == "quick"
    assert data["stamp"]["command"] == f"python -m benchmarks.run --quick --out {out}"
    for field in ("cpu_model", "cores", "python", "celery", "redis_server"):
        assert data["stamp"]["machine"][field], field
    assert data["stamp"]["command"] in markdown

    # Every case in every pool, plus the sleeping tasks: measured, or the reason why not.
    rows = {(c["case"], c["pool"], c["task"]): c for c in data["ab"]}
    expected = [(case, pool, "noop") for pool in POOLS for case in CASES]
    expected += [
        ("package", pool, task)
        for pool in ("solo", "prefork")
        for task in ("sleep1ms", "sleep10ms")
    ]
    for key in expected:
        assert key in rows, key
        comp = rows[key]
        if key[0] in OURS:
            assert comp["cpu_ratio"] is not None, (key, comp["error"], comp["notes"])
            assert len(comp["rounds"]) == 2, key
        else:
            assert comp["cpu_ratio"] is not None or comp["error"], key
    package = rows[("package", "solo", "noop")]
    assert package["extra"]["queue_depth_poller"] is True
    assert "2. csuite-async-obs fully on" in markdown and "A/A" in markdown

    hook = data["hookpath"]
    assert hook["package_cost_us"]["n"] == hook["blocks"]
    assert hook["succeeded_counted"] == hook["tasks_per_variant"]
    assert set(hook["floor"]) == set(POOLS)
    for transport in ("redis", "memory"):
        assert "hook_cost_us" in data["publish"][transport], data["publish"][transport]
    assert _measured_or_reason(data["queuedepth"], "round_trips")
    # 200 RabbitMQ queues: one management API request, 200 passive declares.
    rabbitmq = data["rabbitmq"]
    assert _measured_or_reason(rabbitmq, "round_trips")
    if rabbitmq.get("available"):
        assert (rabbitmq["queues"], rabbitmq["reads"]) == (200, 5)
        assert (rabbitmq["api"]["round_trips"], rabbitmq["declare"]["round_trips"]) == (1, 200)
        assert (rabbitmq["api"]["ages"], rabbitmq["declare"]["ages"]) == (200, 0)
        assert "## Queue depth on RabbitMQ" in markdown

    scrape = data["scrape"]
    assert [r["names"] for r in scrape["by_names"]] == [10, 100, 500]
    assert all("latency_ms" in r for r in scrape["by_names"]), scrape["by_names"]
    assert [r["restarts"] for r in scrape["by_churn"]] == list(data["config"]["profile"]["churn"])
    assert scrape["series"]["per_exception"] >= 1
    assert len(scrape["fleet"]) >= 3

    memory = data["memory"]
    assert [s["tasks"] for s in memory["samples"]["package"]][-1] == memory["tasks"]
    assert "exporter_rss_cost_mib" in memory

    goals = {g["goal"] for g in data["goals"]}
    assert len(goals) >= 8
    assert all(g["verdict"] for g in data["goals"])
    assert "## Goals" in markdown


def test_render_benchmark_compares_both_value_paths() -> None:
    """``python -m benchmarks.inproc render`` (its committed run is in
    results/render/): both value paths measured, the same text, every render exact."""
    proc = run_benchmark(
        "benchmarks.inproc", "render", "--names", "20", "--renders", "3", timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    stored, objects = result["value_store"], result["value_objects"]
    assert (stored["stores_values"], objects["stores_values"]) == (True, False)
    assert stored["series"] == objects["series"] and stored["body_bytes"] == objects["body_bytes"]
    for row in (stored, objects):
        assert row["samples_equal_generate_latest"] is True
        assert set(row) >= {"unchanged", "10 tasks", "every name", "gzip"}
