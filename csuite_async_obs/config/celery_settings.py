"""The task API's Celery configuration, from the ``CELERY_*`` variables."""

from __future__ import annotations

import os
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .parse import parse_bool, parse_choice, parse_list, parse_seconds

__all__ = ["DEFAULT_REDIS_URL", "CelerySettings"]

# Serializers kombu registers by itself; yaml and msgpack need their libraries.
SERIALIZERS = ("json", "pickle", "yaml", "msgpack")
CONTENT_TYPES = {
    "application/json": "json",
    "application/x-python-serialize": "pickle",
    "application/x-yaml": "yaml",
    "application/x-msgpack": "msgpack",
}


def _broker_schemes() -> tuple[str, ...]:
    from kombu.transport import TRANSPORT_ALIASES

    return tuple(sorted(set(TRANSPORT_ALIASES) | {"sentinel"}))


def _backend_schemes() -> tuple[str, ...]:
    from celery.app.backends import BACKEND_ALIASES

    return tuple(
        sorted(set(BACKEND_ALIASES) | {"rediss", "sentinel", "db+sqlite", "db+postgresql"})
    )


def _url_scheme(variable: str, raw: str, schemes: tuple[str, ...]) -> str:
    value = raw.strip()
    scheme, sep, _ = value.partition("://")
    # Celery accepts "transport+dialect://" for some backends (db+postgresql://).
    if not sep or (scheme not in schemes and scheme.split("+", 1)[0] not in schemes):
        raise ConfigError(variable, raw, "a URL whose scheme is one of " + ", ".join(schemes))
    return value


def _serializer(variable: str, raw: str) -> str:
    return parse_choice(variable, raw, SERIALIZERS)


def _accept_content(variable: str, raw: str) -> tuple[str, ...]:
    items = parse_list(raw)
    accepted = "a comma-separated list of " + ", ".join(SERIALIZERS + tuple(CONTENT_TYPES))
    if not items:
        raise ConfigError(variable, raw, accepted)
    for item in items:
        if item.lower() not in SERIALIZERS and item.lower() not in CONTENT_TYPES:
            raise ConfigError(variable, raw, accepted)
    return tuple(item.lower() for item in items)


def _timezone(variable: str, raw: str) -> str:
    value = raw.strip()
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            variable, raw, "an IANA time zone name such as UTC or Europe/Berlin"
        ) from None
    return value


DEFAULT_REDIS_URL = "redis://localhost:6379/0"


@dataclass(frozen=True)
class CelerySettings:
    """The Celery app's configuration, from the ``CELERY_*`` variables."""

    broker_url: str = DEFAULT_REDIS_URL
    result_backend: str = DEFAULT_REDIS_URL
    task_serializer: str = "json"
    result_serializer: str = "json"
    accept_content: tuple[str, ...] = ("json",)
    timezone: str = "UTC"
    enable_utc: bool = True
    task_track_started: bool = True
    task_time_limit: float = 300.0
    task_soft_time_limit: float = 240.0
    imports: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.task_soft_time_limit >= self.task_time_limit:
            raise ConfigError(
                "CELERY_TASK_SOFT_TIME_LIMIT",
                _fmt_number(self.task_soft_time_limit),
                f"a number of seconds below CELERY_TASK_TIME_LIMIT ({_fmt_number(self.task_time_limit)})",
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CelerySettings:
        """Read the ``CELERY_*`` variables; raise :class:`ConfigError` on a bad one."""
        env = os.environ if environ is None else environ
        parsers: dict[str, tuple[str, Callable[[str, str], Any]]] = {
            "broker_url": ("CELERY_BROKER_URL", lambda v, r: _url_scheme(v, r, _broker_schemes())),
            "result_backend": (
                "CELERY_RESULT_BACKEND",
                lambda v, r: _url_scheme(v, r, _backend_schemes()),
            ),
            "task_serializer": ("CELERY_TASK_SERIALIZER", _serializer),
            "result_serializer": ("CELERY_RESULT_SERIALIZER", _serializer),
            "accept_content": ("CELERY_ACCEPT_CONTENT", _accept_content),
            "timezone": ("CELERY_TIMEZONE", _timezone),
            "enable_utc": ("CELERY_ENABLE_UTC", parse_bool),
            "task_track_started": ("CELERY_TASK_TRACK_STARTED", parse_bool),
            "task_time_limit": ("CELERY_TASK_TIME_LIMIT", parse_seconds),
            "task_soft_time_limit": ("CELERY_TASK_SOFT_TIME_LIMIT", parse_seconds),
            "imports": ("CELERY_IMPORTS", lambda v, r: parse_list(r)),
        }
        values: dict[str, Any] = {}
        for attr, (variable, parse) in parsers.items():
            raw = env.get(variable)
            if raw is not None and raw.strip() != "":
                values[attr] = parse(variable, raw)
        return cls(**values)

    def celery_config(self) -> dict[str, Any]:
        """The settings as Celery configuration keys."""
        return {
            "broker_url": self.broker_url,
            "result_backend": self.result_backend,
            "task_serializer": self.task_serializer,
            "result_serializer": self.result_serializer,
            "accept_content": list(self.accept_content),
            "timezone": self.timezone,
            "enable_utc": self.enable_utc,
            "task_track_started": self.task_track_started,
            "task_time_limit": self.task_time_limit,
            "task_soft_time_limit": self.task_soft_time_limit,
            "imports": list(self.imports),
        }


def _fmt_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
