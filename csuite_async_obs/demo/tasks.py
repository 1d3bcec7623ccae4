"""Sample tasks for ``csuite-async-obs demo``: successes, failures, retries, a slow one."""

from __future__ import annotations

import random
import time
from typing import Any

from ..task_api.publishing import async_task


@async_task(name="demo.analyse_metrics")
def analyse_metrics(values: list[float]) -> dict[str, float]:
    """A quick success: summary statistics of a list of numbers."""
    return {"count": len(values), "mean": sum(values) / len(values) if values else 0.0}


@async_task(name="demo.send_email")
def send_email(address: str) -> str:
    """Fails about one time in five, as a flaky mail relay would."""
    if random.random() < 0.2:
        raise ConnectionError(f"mail relay refused {address}")
    return f"sent to {address}"


@async_task(name="demo.sync_crm", bind=True, max_retries=3, default_retry_delay=1)
def sync_crm(self: Any, record_id: int) -> int:
    """Retries once, then succeeds."""
    if self.request.retries == 0:
        raise self.retry(countdown=1)
    return record_id


@async_task(name="demo.generate_report", soft_time_limit=30, time_limit=40)
def generate_report(seconds: float = 2.0) -> str:
    """A slow task."""
    time.sleep(seconds)
    return "report ready"
