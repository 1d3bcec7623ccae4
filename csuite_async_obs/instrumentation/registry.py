"""Which instrumentation belongs to which Celery app.

The instrumentation is kept on the app object itself, so that it lives exactly
as long as the app: an app the program drops is freed with its metrics and
hooks (a module-level mapping from apps to instrumentations would keep both
alive, since the instrumentation refers to its app).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .instrument import Instrumentation

__all__ = ["forget", "instrumentation_for", "remember"]

_ATTRIBUTE = "_csuite_async_obs_instrumentation"


def instrumentation_for(app: Any) -> Instrumentation | None:
    """The instrumentation of ``app``, or ``None`` if it is not instrumented."""
    return app.__dict__.get(_ATTRIBUTE)  # type: ignore[no-any-return]


def remember(app: Any, instrumentation: Instrumentation) -> None:
    app.__dict__[_ATTRIBUTE] = instrumentation


def forget(app: Any) -> None:
    app.__dict__.pop(_ATTRIBUTE, None)
