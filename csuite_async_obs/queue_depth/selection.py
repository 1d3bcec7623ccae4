"""Which queues to poll: the app's, the worker's, named ones and glob matches.

The app's ``task_queues`` (fanout/broadcast queues are left out: on Redis they
are pub/sub channels, never lists) and ``task_default_queue``, the queues the
worker consumes, and the ``queues`` option.  Entries of ``queues`` with a glob
character (``*?[``) are matched against the queues the broker's reader
discovers.  ``queue_exclude`` globs remove queues from all of these.  Named
queues are always polled; glob matches are added in name order up to
``max_queue_names`` queues in all, to keep the label bounded.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["QueueSelection", "configured_queues", "is_glob"]

_GLOB_CHARS = frozenset("*?[")


def is_glob(pattern: str) -> bool:
    return any(ch in _GLOB_CHARS for ch in pattern)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


# --------------------------------------------------------------------------- which queues


def configured_queues(app: Celery) -> list[str]:
    """Names of the app's ``task_queues`` (without broadcast queues) and its default queue."""
    names: list[str] = []
    queues = app.conf.task_queues or ()
    # Celery also accepts the old dict form {name: options}.
    items = list(queues.items()) if isinstance(queues, Mapping) else [(q, None) for q in queues]
    for item, options in items:
        if isinstance(item, str):
            exchange_type = (options or {}).get("exchange_type")
            name = item
        else:
            exchange_type = getattr(getattr(item, "exchange", None), "type", None)
            name = str(getattr(item, "name", "") or "")
        if name and exchange_type != "fanout":
            names.append(name)
    default = app.conf.task_default_queue
    if default:
        names.append(str(default))
    return names


@dataclass(frozen=True)
class QueueSelection:
    """Which queues to poll: named ones, glob patterns, exclusions, and a bound."""

    names: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    limit: int = 100

    @classmethod
    def build(
        cls,
        app: Celery | None,
        queues: Iterable[str] = (),
        exclude: Iterable[str] = (),
        limit: int = 100,
    ) -> QueueSelection:
        """The app's configured queues plus ``queues`` (names and globs), minus ``exclude``."""
        explicit = tuple(queues)
        names = (configured_queues(app) if app is not None else []) + [
            q for q in explicit if not is_glob(q)
        ]
        return cls(
            names=tuple(dict.fromkeys(names)),
            patterns=tuple(q for q in explicit if is_glob(q)),
            exclude=tuple(exclude),
            limit=limit,
        )

    def resolve(self, consumed: Iterable[str], discovered: Iterable[str]) -> tuple[list[str], int]:
        """Sorted queue names to poll, and how many glob matches the bound left out."""
        named = {q for q in (*self.names, *consumed) if q and not _matches(q, self.exclude)}
        matched = sorted(
            q
            for q in set(discovered)
            if q not in named and _matches(q, self.patterns) and not _matches(q, self.exclude)
        )
        room = max(0, self.limit - len(named))
        return sorted(named | set(matched[:room])), max(0, len(matched) - room)
