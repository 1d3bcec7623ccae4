"""Queued versus unknown: the small interface each result backend of the task API answers.

Celery's ``get_task_meta`` answers ``PENDING`` both for a task that is queued
and for an id nobody ever published; some backends (the database one) even
give that made-up state the id.  The task API's own backend classes, one module
each (:mod:`.redis_backend`, :mod:`.rpc_backend`, :mod:`.database_backend`),
answer two questions instead:

- :meth:`KnownStates.mark_queued`: ``delay_task`` published this id; remember it
  as queued without ever writing over a state the worker stored.
- :meth:`KnownStates.read_state`: the state of an id as a Celery meta dict, or
  ``None`` when no state of it is visible to this caller.

Any other backend (a ``backend_cls`` of the user's, ``cache+``, ``mongodb``)
gets Celery's answer, with a bare ``PENDING`` (one without a ``task_id``) read
as unknown.
"""

from __future__ import annotations

from typing import Any

from celery import states

__all__ = ["KnownStates", "mark_queued", "read_state"]


class KnownStates:
    """A result backend that tells a queued task from an id it never saw."""

    def mark_queued(self, task_id: str) -> None:
        """Remember ``task_id`` as published and not started; never overwrite a state."""
        raise NotImplementedError

    def read_state(self, task_id: str) -> dict[str, Any] | None:
        """The task's meta dict (``status``, ``result``, ``date_done`` ...), or ``None``."""
        raise NotImplementedError


def read_state(backend: Any, task_id: str) -> dict[str, Any] | None:
    """``backend``'s state of ``task_id``, or ``None`` when it holds none visible here."""
    if isinstance(backend, KnownStates):
        return backend.read_state(task_id)
    meta: dict[str, Any] = backend.get_task_meta(task_id)
    if meta.get("status", states.PENDING) == states.PENDING and "task_id" not in meta:
        return None
    return meta


def mark_queued(backend: Any, task_id: str) -> None:
    """Tell ``backend`` that ``task_id`` was published (a no-op for other backends)."""
    if isinstance(backend, KnownStates):
        backend.mark_queued(task_id)
