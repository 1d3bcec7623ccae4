"""The instrumentation's options: one table for keywords, variables, flags and docs.

Each option can be given three ways -- an ``instrument()`` keyword, a
``CSUITE_*`` environment variable, a ``celery worker`` flag -- and the
deployment overrides the code (keyword < variable < flag).  :data:`OBS_OPTIONS`
is the one table that the settings, the worker flags, the standalone
exporter's flags and the README are built from; defaults live only in
:class:`ObsSettings` and every help text is given its default from there.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

from .errors import ConfigError
from .parse import (
    parse_address,
    parse_api_url,
    parse_bool,
    parse_buckets,
    parse_choice,
    parse_int,
    parse_labels,
    parse_list,
    parse_seconds,
)

__all__ = [
    "DEFAULT_QUEUE_WAIT_BUCKETS",
    "DEFAULT_RUNTIME_BUCKETS",
    "FULL_QUEUE_WAIT_BUCKETS",
    "FULL_RUNTIME_BUCKETS",
    "NATIVE_MODES",
    "OBS_OPTIONS",
    "OPTIONS_BY_ATTR",
    "PROFILES",
    "ObsOption",
    "ObsSettings",
    "default_text",
]

# The default profile's buckets, one series a bucket per task, queue (and state).
# Runtimes, nine bounds: Celery tasks run from milliseconds (a cache write, an
# e-mail handed to a relay) to minutes (a report), up to the package's 300 s hard
# limit; the bounds are the latency objectives people set for them (100 ms,
# 500 ms, 1 s, 5 s, 30 s, 2 min, the limit), with 10 ms and 50 ms below for the
# fast ones.  Waits, seven: a healthy queue hands a message over in milliseconds
# (10 ms, 100 ms), a busy one in seconds; 60 s is the queue-wait alert's
# threshold and 5 minutes of backlog the on-call engineer's next question.  Longer
# waits are the oldest-message age's to tell (celery_queue_oldest_message_age_seconds
# has no bucket limit); one bound fewer keeps a task that failed with one exception
# class at 50 series.
DEFAULT_RUNTIME_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 300.0)
DEFAULT_QUEUE_WAIT_BUCKETS = (0.01, 0.1, 1.0, 5.0, 30.0, 60.0, 300.0)
# The full profile's (and the package's before 0.3): sixteen bounds.
_SHORT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
FULL_RUNTIME_BUCKETS = (*_SHORT_BUCKETS, 120.0, 300.0, 900.0)
FULL_QUEUE_WAIT_BUCKETS = (*_SHORT_BUCKETS, 300.0, 900.0, 3600.0)
PROFILES = ("default", "full")
NATIVE_MODES = ("native", "both", "off")


@dataclass(frozen=True)
class ObsOption:
    """One instrumentation option: its keyword, variable, worker flag and parser.

    ``help`` says what the option does, without its default: :meth:`help_text`
    adds the default, read from :class:`ObsSettings` (or given by a command
    whose default differs).
    """

    attr: str
    env: str
    flag: str
    parse: Callable[[str, str], Any]
    help: str
    metavar: str = "VALUE"
    #: Also a ``celery beat`` flag: the options that mean something in beat (its
    #: exporter, its labels, its publishes and its schedule entries).
    beat: bool = False

    def from_raw(self, raw: str, source: str | None = None) -> Any:
        return self.parse(source or self.env, raw)

    def help_text(self, default: str | None = None, help: str | None = None) -> str:
        """``help`` (or an override) followed by the default."""
        return f"{help or self.help} Default: {default or default_text(self.attr)}."


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
        "Port of the /metrics exporter (of the worker, or of beat); 0 turns it off.",
        "PORT",
        beat=True,
    ),
    ObsOption(
        "metrics_addr",
        "CSUITE_METRICS_ADDR",
        "--metrics-addr",
        parse_address,
        "Address the exporter binds to (0.0.0.0: all interfaces).",
        "ADDR",
        beat=True,
    ),
    ObsOption(
        "runtime_buckets",
        "CSUITE_RUNTIME_BUCKETS",
        "--metrics-runtime-buckets",
        parse_buckets,
        "Buckets (seconds, comma-separated) of celery_task_runtime_seconds (the full "
        "profile's default: 0.005 to 900 s, sixteen bounds).",
        "LIST",
    ),
    ObsOption(
        "queue_wait_buckets",
        "CSUITE_QUEUE_WAIT_BUCKETS",
        "--metrics-queue-wait-buckets",
        parse_buckets,
        "Buckets (seconds, comma-separated) of celery_task_queue_wait_seconds (the full "
        "profile's default: 0.005 to 3600 s, sixteen bounds).",
        "LIST",
    ),
    ObsOption(
        "metrics_profile",
        "CSUITE_METRICS_PROFILE",
        "--metrics-profile",
        lambda v, r: parse_choice(v, r, PROFILES),
        "Which task series exist from start: default (every counter, the runtime of "
        "succeeded and failed runs, nine and seven buckets: 49 series per task and queue, "
        "50 once it failed with one exception class) "
        "or full (the runtime of every outcome from start, sixteen buckets).",
        "PROFILE",
    ),
    ObsOption(
        "native_histograms",
        "CSUITE_NATIVE_HISTOGRAMS",
        "--metrics-native-histograms",
        lambda v, r: parse_choice(v, r, NATIVE_MODES),
        "When Prometheus asks for the protobuf exposition (--enable-feature="
        "native-histograms): native serves the runtime and queue-wait histograms as native "
        "histograms only, both adds their classic buckets, off serves classic ones only. "
        "The text formats are always classic.",
        "MODE",
    ),
    ObsOption(
        "const_labels",
        "CSUITE_CONST_LABELS",
        "--metrics-const-labels",
        parse_labels,
        "Labels added to every series, as key=value,key2=value2.",
        "PAIRS",
        beat=True,
    ),
    ObsOption(
        "max_task_names",
        "CSUITE_MAX_TASK_NAMES",
        "--metrics-max-task-names",
        _positive,
        "Distinct task names per metric before the rest are reported as 'other'.",
        "N",
        beat=True,
    ),
    ObsOption(
        "max_queue_names",
        "CSUITE_MAX_QUEUE_NAMES",
        "--metrics-max-queue-names",
        _positive,
        "Distinct queue names per task metric before the rest are reported as 'other'; "
        "also the most queues the queue-depth poller reports (glob matches past it are "
        "left out, and logged).",
        "N",
        beat=True,
    ),
    ObsOption(
        "max_beat_entries",
        "CSUITE_MAX_BEAT_ENTRIES",
        "--metrics-max-beat-entries",
        _positive,
        "Distinct beat schedule entries before the rest are reported as 'other' (celery "
        "beat only).",
        "N",
        beat=True,
    ),
    ObsOption(
        "max_exceptions",
        "CSUITE_MAX_EXCEPTIONS",
        "--metrics-max-exceptions",
        _positive,
        "Distinct exception classes before the rest are reported as 'other'.",
        "N",
    ),
    ObsOption(
        "task_log",
        "CSUITE_TASK_LOG",
        "--metrics-task-log",
        parse_bool,
        "Log one structured event per task lifecycle step.",
        "BOOL",
    ),
    ObsOption(
        "log_task_args",
        "CSUITE_LOG_TASK_ARGS",
        "--metrics-log-task-args",
        parse_bool,
        "Include task arguments in the lifecycle events.",
        "BOOL",
    ),
    ObsOption(
        "log_format",
        "CSUITE_LOG_FORMAT",
        "--metrics-log-format",
        lambda v, r: parse_choice(v, r, ("console", "json")),
        "Rendering of the package's structured logs: console or json.",
        "FORMAT",
        beat=True,
    ),
    ObsOption(
        "queue_depth",
        "CSUITE_QUEUE_DEPTH",
        "--metrics-queue-depth",
        parse_bool,
        "Poll and report queue depth from this worker; in a fleet, turn it off and run "
        "one `csuite-async-obs exporter`.",
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
        "Seconds between two queue-depth polls.",
        "SECONDS",
    ),
    ObsOption(
        "queue_poll_timeout",
        "CSUITE_QUEUE_POLL_TIMEOUT",
        "--metrics-queue-poll-timeout",
        parse_seconds,
        "Seconds one queue-depth poll may take before it counts as failed.",
        "SECONDS",
    ),
    ObsOption(
        "rabbitmq_api_url",
        "CSUITE_RABBITMQ_API_URL",
        "--metrics-rabbitmq-api-url",
        parse_api_url,
        "RabbitMQ management API for queue depth, e.g. https://user:secret@mq:15672; empty: "
        "the broker URL's host, user and password on port 15672 (https for amqps); none: "
        "passive declares only (no oldest-message age or unacked counts).",
        "URL",
    ),
    ObsOption(
        "web_config",
        "CSUITE_WEB_CONFIG",
        "--metrics-web-config",
        lambda v, r: r.strip(),
        "Path of a Prometheus exporter web-config file (TLS, basic auth).",
        "PATH",
        beat=True,
    ),
)

OPTIONS_BY_ATTR = {option.attr: option for option in OBS_OPTIONS}


@dataclass(frozen=True)
class ObsSettings:
    """Options of the instrumentation (see :data:`OBS_OPTIONS`); the defaults are here only."""

    metrics_port: int = 9808
    metrics_addr: str = "0.0.0.0"
    metrics_profile: str = "default"
    native_histograms: str = "native"
    runtime_buckets: tuple[float, ...] = DEFAULT_RUNTIME_BUCKETS
    queue_wait_buckets: tuple[float, ...] = DEFAULT_QUEUE_WAIT_BUCKETS
    const_labels: tuple[tuple[str, str], ...] = field(default=())
    max_task_names: int = 500
    max_queue_names: int = 100
    max_beat_entries: int = 500
    max_exceptions: int = 50
    task_log: bool = False
    log_task_args: bool = False
    log_format: str = "console"
    queue_depth: bool = True
    queues: tuple[str, ...] = ()
    queue_exclude: tuple[str, ...] = ()
    queue_poll_interval: float = 5.0
    queue_poll_timeout: float = 3.0
    rabbitmq_api_url: str = ""
    web_config: str = ""

    @property
    def runtime_bounds(self) -> tuple[float, ...]:
        """The runtime buckets in use: the full profile's finer ones unless set."""
        if self.metrics_profile == "full" and self.runtime_buckets == DEFAULT_RUNTIME_BUCKETS:
            return FULL_RUNTIME_BUCKETS
        return self.runtime_buckets

    @property
    def queue_wait_bounds(self) -> tuple[float, ...]:
        """The queue-wait buckets in use: the full profile's finer ones unless set."""
        if self.metrics_profile == "full" and self.queue_wait_buckets == DEFAULT_QUEUE_WAIT_BUCKETS:
            return FULL_QUEUE_WAIT_BUCKETS
        return self.queue_wait_buckets

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


def default_text(attr: str) -> str:
    """The default of an :class:`ObsSettings` field, as a user would type it."""
    spec = next(f for f in fields(ObsSettings) if f.name == attr)
    value = spec.default if spec.default is not MISSING else None
    if isinstance(value, tuple):
        if value and isinstance(value[0], float):
            return ",".join(f"{v:g}" for v in value)
        return "(none)" if not value else ",".join(map(str, value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value) if value not in ("", None) else "(none)"


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
