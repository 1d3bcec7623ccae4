"""The one error a bad setting raises, whatever its source."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration value was refused; ``str()`` is one line for the user.

    Attributes:
        variable: what was set (``CELERY_TASK_TIME_LIMIT``, ``--metrics-port``,
            ``instrument(metrics_port=...)``).
        value: the value given.
        accepted: what would have been accepted.
    """

    def __init__(self, variable: str, value: object, accepted: str) -> None:
        self.variable = variable
        self.value = value
        self.accepted = accepted
        super().__init__(f"{variable}={value!r} is not valid: expected {accepted}")
