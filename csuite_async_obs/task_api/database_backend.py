"""Celery's database result backend (``db+sqlite://``, ``db+postgresql://`` ...), plus queued markers.

Queued versus unknown: Celery answers an id without a row with a made-up
``PENDING`` state that carries the id, so a row's existence is what tells the
two apart: :meth:`DatabaseResultBackend.read_state` returns ``None`` when the
id has no row.

The PENDING row is *inserted if absent after* the publish, never written
before it: the task table's ``task_id`` is unique, so the database decides
which insert wins.  If the worker stored a state first, the marker's insert
fails and is dropped; if the marker is first, the worker's own insert fails
and Celery's ``retry`` around ``_store_result`` reads the row again and
updates it (the states a worker stores always win).  Writing before the
publish and deleting on a failed publish would leave a PENDING row for good
when the process dies between the two, and a delete after an ambiguous
publish failure could remove a state the worker stored meanwhile.

sqlalchemy is imported with this module only, so apps on other backends do
not need it.
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.backends.database import DatabaseBackend, session_cleanup
from sqlalchemy.exc import IntegrityError

from .known_states import KnownStates

__all__ = ["DatabaseResultBackend", "database_url"]


def database_url(url: str) -> str:
    """The SQLAlchemy URL inside a ``db+<sqlalchemy URL>`` result backend URL."""
    return url.split("+", 1)[1] if url.partition("://")[0].startswith("db+") else url


class DatabaseResultBackend(KnownStates, DatabaseBackend):  # type: ignore[misc]
    """Celery's database backend; an id without a row reads as unknown."""

    def __init__(self, *args: Any, url: str | None = None, app: Any = None, **kwargs: Any) -> None:
        # Installed as backend_cls, Celery passes no URL: read it from the
        # configuration (CELERY_RESULT_BACKEND may have overridden it).
        if url is None and app is not None:
            url = database_url(app.conf.result_backend)
        super().__init__(*args, url=url, app=app, **kwargs)

    def mark_queued(self, task_id: str) -> None:
        session = self.ResultSession()
        with session_cleanup(session):
            row = self.task_cls(task_id)
            row.status = states.PENDING
            row.date_done = None  # the model's default is a time, not "not done"
            session.add(row)
            try:
                session.commit()
            except IntegrityError:
                # The worker stored a state first: it stays.
                session.rollback()

    def read_state(self, task_id: str) -> dict[str, Any] | None:
        meta: dict[str, Any] = self.get_task_meta(task_id)
        if meta.get("status") == states.PENDING and not self._has_row(task_id):
            return None
        return meta

    def _has_row(self, task_id: str) -> bool:
        session = self.ResultSession()
        with session_cleanup(session):
            column = self.task_cls.task_id
            return session.query(column).filter(column == task_id).first() is not None
