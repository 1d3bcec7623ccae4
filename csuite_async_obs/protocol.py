"""The message headers the package stamps at publish, read by the worker and queue depth.

Both are seconds since the epoch (floats): :data:`PUBLISHED_AT_HEADER` when the
message was published, :data:`DUE_AT_HEADER` its ETA or countdown when later.
The worker measures queue wait from them, the queue-depth reader the age of the
oldest waiting message; neither needs Celery events.
"""

from __future__ import annotations

__all__ = ["DUE_AT_HEADER", "PUBLISHED_AT_HEADER"]

PUBLISHED_AT_HEADER = "csuite_published_at"
DUE_AT_HEADER = "csuite_due_at"
