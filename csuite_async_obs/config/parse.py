"""Parsers of setting values: text in, a typed value or :class:`ConfigError` out.

Each takes the name of what was set (a variable, a flag, a keyword) so that its
error names it together with the value and what is accepted.
"""

from __future__ import annotations

import ipaddress
import itertools
import math
import re
import urllib.parse

from ..metrics.catalog import RESERVED_LABELS
from .errors import ConfigError

__all__ = [
    "parse_address",
    "parse_api_url",
    "parse_bool",
    "parse_buckets",
    "parse_choice",
    "parse_int",
    "parse_labels",
    "parse_list",
    "parse_seconds",
]

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


def parse_api_url(variable: str, raw: str) -> str:
    """An ``http(s)://`` URL, ``"none"`` (no HTTP API), or ``""`` (derived from the broker URL)."""
    value = raw.strip()
    if value.lower() in ("", "none"):
        return value.lower()
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(variable, raw, "an http:// or https:// URL with a host, or none")
    try:
        parts.port  # noqa: B018 -- raises on a port that is not a number
    except ValueError as exc:
        raise ConfigError(variable, raw, "an http:// or https:// URL with a valid port") from exc
    return value
