"""Configuration read once from the environment into frozen settings objects.

Two groups live here because they share one parsing and error-reporting path:

* :class:`CelerySettings` -- the ``CELERY_*`` variables the task API configures
  its Celery app from;
* :class:`ObsSettings` -- the ``CSUITE_*`` options of the instrumentation.  Each
  option can be given three ways (an ``instrument()`` keyword, an environment
  variable, a ``celery worker`` flag); :data:`OBS_OPTIONS` is the one table that
  the settings, the worker flags and the README are built from.

Every bad value raises :class:`ConfigError`, whose message is one line naming the
variable, the value given and what is accepted.
"""

from __future__ import annotations

import ipaddress
import itertools
import math
import os
import re
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

__all__ = [
    "OBS_OPTIONS",
    "CelerySettings",
    "ConfigError",
    "ObsOption",
    "ObsSettings",
]


class ConfigError(ValueError):
    """A configuration value was refused; ``str()`` is one line for the user."""

    def __init__(self, variable: str, value: object, accepted: str) -> None:
        self.variable = variable
        self.value = value
        self.accepted = accepted
        super().__init__(f"{variable}={value!r} is not valid: expected {accepted}")


# --------------------------------------------------------------------------- parsers

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_bool(variable: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(variable, raw, "one of true/false, 1/0, yes/no, on/off")


def parse_int(variable: str, raw: str, *, minimum: int, maximum: int | None = None) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        value = None
    if value is None or value < minimum or (maximum is not None and value > maximum):
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise ConfigError(variable, raw, f"an integer >= {minimum}{upper}")
    return value


def parse_seconds(variable: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(variable, raw, "a number of seconds greater than 0")
    return value


def parse_list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def parse_buckets(variable: str, raw: str) -> tuple[float, ...]:
    accepted = "a comma-separated, strictly increasing list of positive numbers of seconds"
    try:
        values = tuple(float(item) for item in parse_list(raw))
    except ValueError:
        raise ConfigError(variable, raw, accepted) from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise ConfigError(variable, raw, accepted)
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise ConfigError(variable, raw, accepted)
    return values


_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# Labels the package sets itself; a constant label may not shadow them.
RESERVED_LABELS = frozenset(
    {"name", "queue_name", "state", "exception", "kind", "hostname", "hook", "label", "le"}
)


def parse_labels(variable: str, raw: str) -> tuple[tuple[str, str], ...]:
    accepted = (
        "comma-separated key=value pairs with Prometheus label names "
        f"(not starting with __, not one of {', '.join(sorted(RESERVED_LABELS))})"
    )
    pairs: list[tuple[str, str]] = []
    for item in parse_list(raw):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not _LABEL_NAME.match(key) or key.startswith("__"):
            raise ConfigError(variable, raw, accepted)
        if key in RESERVED_LABELS or key in dict(pairs):
            raise ConfigError(variable, raw, accepted)
        pairs.append((key, value.strip()))
    return tuple(pairs)


def parse_choice(variable: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in choices:
        raise ConfigError(variable, raw, "one of " + ", ".join(choices))
    return value


def parse_address(variable: str, raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ConfigError(variable, raw, "an IP address or host name to bind to")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not re.match(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$", value):
            raise ConfigError(variable, raw, "an IP address or host name to bind to") from None
    return value


# --------------------------------------------------------------------------- Celery

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


# --------------------------------------------------------------------------- instrumentation

_SHORT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Runtimes up to the default hard limit and beyond; waits up to an hour of backlog.
DEFAULT_RUNTIME_BUCKETS = (*_SHORT_BUCKETS, 120.0, 300.0, 900.0)
DEFAULT_QUEUE_WAIT_BUCKETS = (*_SHORT_BUCKETS, 300.0, 900.0, 3600.0)


@dataclass(frozen=True)
class ObsOption:
    """One instrumentation option: its keyword, variable, worker flag and parser."""

    attr: str
    env: str
    flag: str
    parse: Callable[[str, str], Any]
    help: str
    metavar: str = "VALUE"

    def from_raw(self, raw: str, source: str | None = None) -> Any:
        return self.parse(source or self.env, raw)


def _port(v: str, r: str) -> int:
    return parse_int(v, r, minimum=0, maximum=65535)


def _positive(v: str, r: str) -> int:
    return parse_int(v, r, minimum=1)


OBS_OPTIONS: tuple[ObsOption, ...] = (
    ObsOption(
        "metrics_port",
        "CSUITE_METRICS_PORT",
        "--metrics-port",
        _port,
        "Port of the worker's /metrics exporter; 0 turns the exporter off. Default 9808.",
        "PORT",
    ),
    ObsOption(
        "metrics_addr",
        "CSUITE_METRICS_ADDR",
        "--metrics-addr",
        parse_address,
        "Address the exporter binds to. Default 0.0.0.0 (all interfaces).",
        "ADDR",
    ),
    ObsOption(
        "runtime_buckets",
        "CSUITE_RUNTIME_BUCKETS",
        "--metrics-runtime-buckets",
        parse_buckets,
        "Buckets (seconds, comma-separated) of celery_task_runtime_seconds.",
        "LIST",
    ),
    ObsOption(
        "queue_wait_buckets",
        "CSUITE_QUEUE_WAIT_BUCKETS",
        "--metrics-queue-wait-buckets",
        parse_buckets,
        "Buckets (seconds, comma-separated) of celery_task_queue_wait_seconds.",
        "LIST",
    ),
    ObsOption(
        "const_labels",
        "CSUITE_CONST_LABELS",
        "--metrics-const-labels",
        parse_labels,
        "Labels added to every series, as key=value,key2=value2.",
        "PAIRS",
    ),
    ObsOption(
        "max_task_names",
        "CSUITE_MAX_TASK_NAMES",
        "--metrics-max-task-names",
        _positive,
        "Distinct task names per metric before the rest are reported as 'other'. Default 500.",
        "N",
    ),
    ObsOption(
        "max_queue_names",
        "CSUITE_MAX_QUEUE_NAMES",
        "--metrics-max-queue-names",
        _positive,
        "Distinct queue names per metric before the rest are reported as 'other'. Default 100.",
        "N",
    ),
    ObsOption(
        "max_exceptions",
        "CSUITE_MAX_EXCEPTIONS",
        "--metrics-max-exceptions",
        _positive,
        "Distinct exception classes before the rest are reported as 'other'. Default 50.",
        "N",
    ),
    ObsOption(
        "task_log",
        "CSUITE_TASK_LOG",
        "--metrics-task-log",
        parse_bool,
        "Log one structured event per task lifecycle step. Default false.",
        "BOOL",
    ),
    ObsOption(
        "log_task_args",
        "CSUITE_LOG_TASK_ARGS",
        "--metrics-log-task-args",
        parse_bool,
        "Include task arguments in the lifecycle events. Default false.",
        "BOOL",
    ),
    ObsOption(
        "log_format",
        "CSUITE_LOG_FORMAT",
        "--metrics-log-format",
        lambda v, r: parse_choice(v, r, ("console", "json")),
        "Rendering of the package's structured logs: console or json. Default console.",
        "FORMAT",
    ),
    ObsOption(
        "queue_depth",
        "CSUITE_QUEUE_DEPTH",
        "--metrics-queue-depth",
        parse_bool,
        "Poll and report queue depth from this worker. Default true; in a fleet, turn it "
        "off and run one `csuite-async-obs exporter`.",
        "BOOL",
    ),
    ObsOption(
        "queues",
        "CSUITE_QUEUES",
        "--metrics-queues",
        lambda v, r: parse_list(r),
        "Queues to report besides the app's task_queues and the ones this worker consumes; "
        "comma-separated, shell globs match queues found on the broker.",
        "LIST",
    ),
    ObsOption(
        "queue_exclude",
        "CSUITE_QUEUE_EXCLUDE",
        "--metrics-queue-exclude",
        lambda v, r: parse_list(r),
        "Queues (shell globs, comma-separated) never to report.",
        "LIST",
    ),
    ObsOption(
        "queue_poll_interval",
        "CSUITE_QUEUE_POLL_INTERVAL",
        "--metrics-queue-poll-interval",
        parse_seconds,
        "Seconds between two queue-depth polls. Default 5.",
        "SECONDS",
    ),
    ObsOption(
        "queue_poll_timeout",
        "CSUITE_QUEUE_POLL_TIMEOUT",
        "--metrics-queue-poll-timeout",
        parse_seconds,
        "Seconds one queue-depth poll may take before it counts as failed. Default 3.",
        "SECONDS",
    ),
    ObsOption(
        "web_config",
        "CSUITE_WEB_CONFIG",
        "--metrics-web-config",
        lambda v, r: r.strip(),
        "Path of a Prometheus exporter web-config file (TLS, basic auth). Default none.",
        "PATH",
    ),
)

OPTIONS_BY_ATTR = {option.attr: option for option in OBS_OPTIONS}


@dataclass(frozen=True)
class ObsSettings:
    """Options of the instrumentation (see :data:`OBS_OPTIONS`)."""

    metrics_port: int = 9808
    metrics_addr: str = "0.0.0.0"
    runtime_buckets: tuple[float, ...] = DEFAULT_RUNTIME_BUCKETS
    queue_wait_buckets: tuple[float, ...] = DEFAULT_QUEUE_WAIT_BUCKETS
    const_labels: tuple[tuple[str, str], ...] = field(default=())
    max_task_names: int = 500
    max_queue_names: int = 100
    max_exceptions: int = 50
    task_log: bool = False
    log_task_args: bool = False
    log_format: str = "console"
    queue_depth: bool = True
    queues: tuple[str, ...] = ()
    queue_exclude: tuple[str, ...] = ()
    queue_poll_interval: float = 5.0
    queue_poll_timeout: float = 3.0
    web_config: str = ""

    @classmethod
    def resolve(
        cls,
        keywords: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        flags: Mapping[str, Any] | None = None,
    ) -> ObsSettings:
        """Merge the three sources: keyword < environment variable < worker flag.

        Keywords are the code's defaults; the deployment (environment, command
        line) overrides them.  Flags given as ``None`` are "not given".
        """
        env = os.environ if environ is None else environ
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in (keywords or {}).items():
            if key not in known:
                raise ConfigError(
                    f"instrument({key}=...)", value, "one of " + ", ".join(sorted(known))
                )
            values[key] = _coerce_keyword(key, value)
        for option in OBS_OPTIONS:
            raw = env.get(option.env)
            if raw is not None and raw.strip() != "":
                values[option.attr] = option.from_raw(raw)
        for key, value in (flags or {}).items():
            if value is None or key not in OPTIONS_BY_ATTR:
                continue
            option = OPTIONS_BY_ATTR[key]
            values[key] = option.from_raw(str(value), option.flag)
        return replace(cls(), **values)


def _coerce_keyword(key: str, value: Any) -> Any:
    """Accept natural Python values for keywords and check them like the text forms."""
    option = OPTIONS_BY_ATTR[key]
    source = f"instrument({key}=...)"
    if key == "const_labels" and isinstance(value, Mapping):
        text = ",".join(f"{k}={v}" for k, v in value.items())
    elif key.endswith("_buckets") and not isinstance(value, str):
        text = ",".join(repr(float(v)) for v in value)
    elif key in ("queues", "queue_exclude") and not isinstance(value, str):
        text = ",".join(str(v) for v in value)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value)
    return option.from_raw(text, source)
