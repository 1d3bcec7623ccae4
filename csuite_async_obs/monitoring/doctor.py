"""``csuite-async-obs doctor``: checks a live deployment end to end through Prometheus's API.

Each check reads what Prometheus has -- its targets, series and the rule groups it
loaded (``/api/v1/rules``: what is loaded, not what a file says) -- and gives one
:class:`Check`: a name, whether it passed, what was seen, and a fix when it failed.

- **targets**: every worker target (``up{<worker selector>}``; with no selector, the
  targets of every job that served ``celery_worker_up`` in the last day) is up and
  serves ``celery_worker_up`` and ``csuite_async_obs_instrumentation_errors_total``.
  A target up without them is the wrong port or an app that was never instrumented;
  a job that never served them is found only through a selector.
- **queue-depth poll**: ``time() - celery_queue_length_last_success_timestamp_seconds``
  of every poller (workers and standalone exporters) is under ``max_poll_age``
  (60 s by default, the staleness the rules use; at least 2 x poll interval + poll
  timeout); no poller at all fails too, as every queue alert is then blind.
- **rules**: the groups named ``<group_prefix>.recording``, ``<group_prefix>.recording.long``
  and ``<group_prefix>.alerts`` are loaded; every group of ours has health ``ok`` on each
  rule, no ``lastError``, was evaluated within 3 intervals (+10 s) of Prometheus's own
  clock (or, not evaluated yet, was loaded less than an interval + 10 s ago: pending,
  not failing), and its last evaluation took no longer than its interval (a group
  slower than that falls behind and skips evaluations).
- **alert series**: for each alerting rule of our groups, whether its expression can
  produce a result with the series this Prometheus has.  The expression is split at its
  top-level ``or`` (either side suffices), ``and`` (both needed) and ``unless`` (only the
  left side needed: the right is what the alert looks for the absence of); each other
  operand needs every metric it names, except inside ``absent()``; a recording rule's
  name stands for its own expression, recursively.  A needed raw metric with no series
  makes the alert one that cannot fire, reported with the metric (and, for the
  catalog's broker-dependent metrics, which brokers give it).  ``or``/``and``/``unless``
  inside a function's argument are not split (the operand needs both sides).  An alert
  that needs a metric served by celery beat (the catalog's ``process="beat"``) is not
  applicable, and passes, where no target matches ``selectors.beat`` (with no selector:
  no target served ``celery_beat_up`` in the last day); beat's metrics count as present
  when they had a series in the last day, so a dead beat's alert is not "never fires".
- **label overflow**, **instrumentation errors**, **clocks**: the increase over
  ``window`` (1 h) of ``csuite_async_obs_label_overflow_total``,
  ``csuite_async_obs_instrumentation_errors_total`` and
  ``celery_task_queue_wait_clamped_total`` (queue waits that came out negative -- a
  publisher's clock ahead of the worker's -- and were recorded as 0) is 0 on every
  worker.  The count reported is exact, summed from the raw samples between scrapes
  (a counter reset adds its new value), not PromQL's ``increase()``, which
  extrapolates to the window's edges (one clamped wait showed as 2).  No worker serving the clamp counter fails the clock check: it cannot tell.
- **series per worker**: ``count by (job, instance)`` of our series
  (``celery_.*|csuite_.*``) is reported, and fails above ``max_series`` (10000).

The check runs against Prometheus's clock (``time()``), not the host's.  A request
that cannot reach Prometheus raises :class:`PrometheusUnreachable`; a query that
Prometheus refuses fails the check that sent it.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from ..metrics.catalog import SPECS
from .config import MonitoringConfig
from .rules import recording_groups

__all__ = [
    "Check",
    "Connection",
    "DoctorLimits",
    "PrometheusAPI",
    "PrometheusQueryError",
    "PrometheusUnreachable",
    "needed_metrics",
    "run_checks",
]


@dataclass(frozen=True)
class Check:
    """One check's result: ``fix`` says what to do when ``ok`` is false."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        """The one line ``doctor`` prints for it."""
        text = f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"
        return text if self.ok or not self.fix else f"{text} -- fix: {self.fix}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Connection:
    """How to reach Prometheus: its base URL (a path prefix is kept) and credentials.

    ``username``/``password`` send basic auth, ``bearer_token`` an Authorization
    header (not both); ``ca_file`` verifies TLS against that CA, ``insecure`` skips
    verification; ``client_cert``/``client_key`` present a client certificate.
    """

    url: str
    timeout: float = 10.0
    username: str | None = None
    password: str | None = None
    bearer_token: str | None = None
    ca_file: str | None = None
    insecure: bool = False
    client_cert: str | None = None
    client_key: str | None = None


@dataclass(frozen=True)
class DoctorLimits:
    """The bounds of the checks (defaults in the module docstring)."""

    max_poll_age: float = 60.0
    window: str = "1h"
    max_series: int = 10000


class PrometheusUnreachable(RuntimeError):
    """Prometheus did not answer, refused the credentials, or is not Prometheus's API."""


class PrometheusQueryError(RuntimeError):
    """Prometheus answered a request with an error (its type and text in the message)."""


class PrometheusAPI:
    """GET requests to ``/api/v1`` with the standard library."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.base = connection.url.rstrip("/")
        self._headers: dict[str, str] = {"Accept": "application/json"}
        if connection.bearer_token:
            self._headers["Authorization"] = f"Bearer {connection.bearer_token}"
        elif connection.username is not None:
            pair = f"{connection.username}:{connection.password or ''}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        self._context: ssl.SSLContext | None = None
        if self.base.startswith("https:"):
            context = ssl.create_default_context(cafile=connection.ca_file)
            if connection.insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if connection.client_cert:
                context.load_cert_chain(connection.client_cert, connection.client_key)
            self._context = context

    def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """``data`` of ``GET /api/v1/<path>``.

        Raises:
            PrometheusUnreachable: no answer, HTTP 401/403, or an answer that is not the API's.
            PrometheusQueryError: the API's own error (bad query, timeout of a query).
        """
        query = urllib.parse.urlencode(params or {})
        url = f"{self.base}/api/v1/{path}" + (f"?{query}" if query else "")
        request = urllib.request.Request(url, headers=self._headers)
        try:
            with urllib.request.urlopen(
                request, timeout=self.connection.timeout, context=self._context
            ) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise PrometheusUnreachable(
                    f"{self.base}: HTTP {exc.code}: check --username/--password or "
                    "--bearer-token-file"
                ) from None
            raw = exc.read()
            if not raw:
                raise PrometheusUnreachable(f"{url}: HTTP {exc.code}") from None
        except (OSError, ValueError) as exc:  # URLError, timeouts, TLS errors, bad URLs
            reason = getattr(exc, "reason", exc)
            raise PrometheusUnreachable(f"{self.base}: {reason}") from None
        try:
            body = json.loads(raw)
        except ValueError:
            raise PrometheusUnreachable(
                f"{url}: the answer is not JSON: is this Prometheus's URL?"
            ) from None
        if not isinstance(body, dict) or "status" not in body:
            raise PrometheusUnreachable(f"{url}: not a Prometheus API answer")
        if body["status"] != "success":
            raise PrometheusQueryError(f"{body.get('errorType')}: {body.get('error')}")
        return body.get("data")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The samples of an instant query (a scalar comes back as one sample without labels)."""
        data = self.get("query", {"query": expr})
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def values(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """(labels, value) of each sample of ``expr``."""
        return [(s["metric"], float(s["value"][1])) for s in self.query(expr)]

    def now(self) -> float:
        """Prometheus's clock."""
        return float(self.query("time()")[0]["value"][1])


# --------------------------------------------------------------------------- selectors


def _select(metric: str, matchers: str) -> str:
    return f"{metric}{{{matchers}}}" if matchers else metric


def _queue_matchers(config: MonitoringConfig) -> list[str]:
    """Matchers of every queue-depth poller: workers and exporters (empty selects all)."""
    selectors = config.selectors
    if not selectors.worker or not selectors.exporter:
        return [""]
    return list(dict.fromkeys((selectors.worker, selectors.exporter)))


def _any_of(metric: str, matchers: Sequence[str]) -> str:
    return " or ".join(_select(metric, m) for m in matchers)


def _target(labels: Mapping[str, str]) -> str:
    return f"{labels.get('instance', '?')} (job {labels.get('job', '?')})"


# --------------------------------------------------------------------------- the checks


def check_targets(api: PrometheusAPI, config: MonitoringConfig) -> Check:
    """Every worker target up and serving this package's metrics."""
    sel = config.selectors.worker
    if sel:
        targets = api.values(f"up{{{sel}}}")
    else:
        targets = api.values(
            "up and on (job) group by (job) (last_over_time(celery_worker_up[1d]))"
        )
    if not targets:
        where = f"up{{{sel}}}" if sel else "any job that served celery_worker_up in the last day"
        return Check(
            "targets",
            False,
            f"no worker target found ({where})",
            "scrape every worker's exporter port (CSUITE_METRICS_PORT, 9808 by default), "
            "and give --selector the matchers of the worker targets",
        )
    serving: dict[str, set[tuple[str, str]]] = {}
    for metric in ("celery_worker_up", "csuite_async_obs_instrumentation_errors_total"):
        rows = api.values(f"group by (job, instance) ({_select(metric, sel)})")
        serving[metric] = {(r.get("job", ""), r.get("instance", "")) for r, _ in rows}
    errors = _scrape_errors(api)
    down, bare = [], []
    for labels, value in sorted(targets, key=lambda t: _target(t[0])):
        key = (labels.get("job", ""), labels.get("instance", ""))
        if value != 1:
            reason = errors.get(key)
            down.append(_target(labels) + (f": {reason}" if reason else ""))
        else:
            missing = [m for m, keys in serving.items() if key not in keys]
            if missing:
                bare.append(f"{_target(labels)} up without {', '.join(missing)}")
    if not down and not bare:
        return Check("targets", True, f"{len(targets)} worker target(s) up and serving our metrics")
    fixes = []
    if down:
        fixes.append(
            "a down target: start the worker, or make its exporter port reachable from "
            "Prometheus (the scrape error says which)"
        )
    if bare:
        fixes.append(
            "a target up without our metrics: point the scrape at the worker's "
            "CSUITE_METRICS_PORT, or instrument the app (csuite_async_obs.instrument(app) or "
            "`celery -A csuite_async_obs.worker`)"
        )
    detail = "; ".join([*(f"{d} down" for d in down), *bare])
    return Check(
        "targets", False, f"{len(down) + len(bare)} of {len(targets)} failing: {detail}",
        "; ".join(fixes),
    )  # fmt: skip


def _scrape_errors(api: PrometheusAPI) -> dict[tuple[str, str], str]:
    """(job, instance) -> the last scrape error Prometheus recorded (best effort)."""
    try:
        data = api.get("targets", {"state": "active"})
    except PrometheusQueryError:
        return {}
    out = {}
    for target in data.get("activeTargets", []):
        labels = target.get("labels", {})
        if target.get("lastError"):
            out[(labels.get("job", ""), labels.get("instance", ""))] = str(target["lastError"])
    return out


def check_poll(api: PrometheusAPI, config: MonitoringConfig, limits: DoctorLimits) -> Check:
    """Every queue-depth poller's last success is recent."""
    metric = "celery_queue_length_last_success_timestamp_seconds"
    rows = api.values(f"time() - ({_any_of(metric, _queue_matchers(config))})")
    if not rows:
        return Check(
            "queue-depth poll",
            False,
            f"no process reports queue depth ({metric} absent): every queue alert is blind",
            "leave CSUITE_QUEUE_DEPTH on in the workers (the default), or run "
            "`csuite-async-obs exporter` against the broker and scrape it",
        )
    stale = []
    for labels, age in sorted(rows, key=lambda r: _target(r[0])):
        if age > limits.max_poll_age:
            # A timestamp of 0 (never succeeded) gives an age of ~ the epoch.
            said = "never succeeded" if age > 1e9 else f"last success {age:.0f}s ago"
            stale.append(f"{_target(labels)} {said}")
    if not stale:
        oldest = max(age for _, age in rows)
        return Check(
            "queue-depth poll",
            True,
            f"{len(rows)} poller(s), the oldest last success {oldest:.0f}s ago "
            f"(bound {limits.max_poll_age:.0f}s)",
        )
    return Check(
        "queue-depth poll",
        False,
        f"{len(stale)} of {len(rows)} stale (bound {limits.max_poll_age:.0f}s): "
        + "; ".join(stale),
        "the broker is down, unreachable or slower than CSUITE_QUEUE_POLL_TIMEOUT from "
        "these processes: see their log (queue_depth_poll_failed) and "
        "celery_queue_length_poll_errors_total",
    )


def _parse_time(text: str) -> float | None:
    """An RFC 3339 time of the rules API (nanoseconds allowed); None for Go's zero time."""
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", text)
    if not match:
        return None
    stamp = datetime.fromisoformat(match.group(1) + match.group(3).replace("Z", "+00:00"))
    if stamp.year < 1971:
        return None
    return stamp.replace(tzinfo=stamp.tzinfo or timezone.utc).timestamp() + float(
        "0." + (match.group(2) or "0")
    )


def _config_loaded_at(api: PrometheusAPI) -> float | None:
    """When Prometheus last loaded its configuration and rules (None if it cannot say)."""
    try:
        info = api.get("status/runtimeinfo")
    except (PrometheusQueryError, PrometheusUnreachable):  # e.g. a ruler without the endpoint
        return None
    return _parse_time(str(info.get("lastConfigTime", ""))) if isinstance(info, dict) else None


def our_groups(groups: Iterable[Mapping[str, Any]], config: MonitoringConfig) -> list[Any]:
    """The loaded rule groups whose names start with the config's prefix."""
    return [g for g in groups if str(g.get("name", "")).startswith(config.group_prefix + ".")]


def check_rules(
    groups: Sequence[Mapping[str, Any]],
    config: MonitoringConfig,
    now: float,
    loaded_at: float | None = None,
) -> Check:
    """Our rule groups are loaded, healthy and evaluating.

    ``loaded_at``: when Prometheus last loaded its configuration (``lastConfigTime``), if
    known.  A group first runs at its next interval boundary, so one not evaluated yet
    within an interval (+10 s) of that is pending, not failing: a check run right
    after a reload passes.
    """
    ours = our_groups(groups, config)
    expected = [g.name for g in recording_groups(config)] + [f"{config.group_prefix}.alerts"]
    missing = [name for name in expected if name not in {g["name"] for g in ours}]
    if missing:
        return Check(
            "rules",
            False,
            f"rule group(s) {', '.join(missing)} not loaded"
            + (f" (loaded: {', '.join(g['name'] for g in groups)})" if groups else ""),
            "add alerts/recording.rules.yml and alerts/alerts.rules.yml (or the generated "
            "files) to rule_files, then reload Prometheus (SIGHUP or POST /-/reload); "
            "`promtool check config` names a file it refused",
        )
    problems = []
    pending = []
    count = 0
    for group in ours:
        interval = float(group.get("interval") or 60)
        last = _parse_time(str(group.get("lastEvaluation", "")))
        waiting = last is None and loaded_at is not None and now - loaded_at <= interval + 10
        if waiting:
            pending.append(str(group["name"]))
        elif last is None:
            problems.append(f"{group['name']} not evaluated yet")
        elif now - last > 3 * interval + 10:
            problems.append(f"{group['name']} last evaluated {now - last:.0f}s ago")
        took = group.get("evaluationTime")
        # A group whose evaluation outlasts its interval falls behind, and Prometheus
        # skips the slots it missed (prometheus_rule_group_iterations_missed_total).
        if isinstance(took, (int, float)) and took > interval:
            problems.append(
                f"{group['name']}'s last evaluation took {took:.1f}s, over its {interval:g}s "
                "interval"
            )
        for rule in group.get("rules", []):
            count += 1
            name = rule.get("name", "?")
            if rule.get("lastError"):
                problems.append(f"{name}: {rule['lastError']}")
            elif rule.get("health") not in ("ok", None) and not (
                waiting and rule.get("health") == "unknown"  # not run yet
            ):
                problems.append(f"{name}: health {rule.get('health')}")
    if problems:
        return Check(
            "rules",
            False,
            "; ".join(problems),
            "a rule's error is in its text (e.g. many-to-many matching: two targets with "
            "the same labels); a group not evaluating, or slower than its interval: "
            "Prometheus is overloaded (see prometheus_rule_group_iterations_missed_total): "
            "give it more CPU, or the group a longer interval (long_window_interval in the "
            "monitoring config, or the global evaluation_interval)",
        )
    detail = f"{len(ours)} group(s), {count} rules, healthy and evaluating"
    if pending:
        detail += (
            f" ({', '.join(pending)} not evaluated yet: the configuration was loaded "
            f"{now - float(loaded_at or now):.0f}s ago, within the group's interval)"
        )
    return Check("rules", True, detail)


# --------------------------------------------------------------------------- alert series

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_TOKEN = re.compile(r"\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[a-z]*|([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan", "Inf", "NaN", "atan2",
})  # fmt: skip
_OPEN, _CLOSE = "([{", ")]}"


def _names(expr: str) -> set[str]:
    """Metric names an operand selects (strings, matchers, ranges, groupings stripped)."""
    text = _STRING.sub('""', expr)
    text = _BRACES.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _TOKEN.finditer(text):
        name, call = match.group(1), match.group(2)
        if name and not call and name not in _KEYWORDS:
            names.add(name)
    return names


def _top_level(expr: str) -> list[tuple[int, int, str]]:
    """(start, end, word) of each ``or``/``and``/``unless`` outside brackets and strings."""
    found = []
    depth = 0
    i = 0
    while i < len(expr):
        char = expr[i]
        if char in "\"'`":
            match = _STRING.match(expr, i)
            i = match.end() if match else len(expr)
            continue
        if char in _OPEN:
            depth += 1
        elif char in _CLOSE:
            depth -= 1
        elif depth == 0 and char.isalpha():
            match = re.compile(r"[A-Za-z_][A-Za-z0-9_:]*").match(expr, i)
            assert match is not None
            word = match.group(0)
            if word in ("or", "and", "unless") and (i == 0 or not expr[i - 1].isalnum()):
                found.append((i, match.end(), word))
            i = match.end()
            continue
        i += 1
    return found


_CALL_WORD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*$")
_GROUPING_WORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_ABSENT_CALLS = frozenset({"absent", "absent_over_time"})


def _close(expr: str, start: int) -> int:
    """Index just past the bracket that closes the one at ``start``."""
    depth, i = 0, start
    while i < len(expr):
        char = expr[i]
        if char in "\"'`":
            match = _STRING.match(expr, i)
            i = match.end() if match else len(expr)
            continue
        depth += char in _OPEN
        depth -= char in _CLOSE
        i += 1
        if depth == 0:
            break
    return i


def _split_commas(expr: str) -> list[str]:
    parts, depth, last, i = [], 0, 0, 0
    while i < len(expr):
        char = expr[i]
        if char in "\"'`":
            match = _STRING.match(expr, i)
            i = match.end() if match else len(expr)
            continue
        depth += char in _OPEN
        depth -= char in _CLOSE
        if char == "," and depth == 0:
            parts.append(expr[last:i])
            last = i + 1
        i += 1
    return [*parts, expr[last:]]


def _operand(expr: str) -> tuple[str, list[str]]:
    """An operand's text outside its top-level parentheses, and what each pair holds.

    The contents of grouping clauses (``by (...)``, ``on (...)``) and of ``absent(...)``
    calls are dropped: they need no series.
    """
    outside: list[str] = []
    inner: list[str] = []
    i = 0
    while i < len(expr):
        char = expr[i]
        if char in "\"'`":
            match = _STRING.match(expr, i)
            i = match.end() if match else len(expr)
            outside.append('""')
            continue
        if char in "[{":
            end = _close(expr, i)
            outside.append(expr[i:end])
            i = end
            continue
        if char == "(":
            end = _close(expr, i)
            word = _CALL_WORD.search("".join(outside))
            outside.append("()")
            if not word or word.group(1) not in _GROUPING_WORDS | _ABSENT_CALLS:
                inner.extend(_split_commas(expr[i + 1 : end - 1]))
            i = end
            continue
        outside.append(char)
        i += 1
    return "".join(outside), inner


def needed_metrics(
    expr: str, present: Callable[[str], bool], recorded: Mapping[str, str]
) -> set[str]:
    """The absent raw metrics that keep ``expr`` from ever returning a sample; empty if it can.

    ``present(name)`` says whether a raw metric has series; ``recorded`` maps each
    recording rule's name to its expression.
    """
    return {n for n in _missing(expr, present, recorded, frozenset()) if n not in recorded}


def _missing(
    expr: str, present: Callable[[str], bool], recorded: Mapping[str, str], seen: frozenset[str]
) -> set[str]:
    ops = _top_level(expr)
    for level in (("or",), ("and", "unless")):
        at = [op for op in ops if op[2] in level]
        if at:
            start, end, word = at[-1]  # left-associative: split at the last one
            left = _missing(expr[:start], present, recorded, seen)
            if word == "unless":
                return left
            right = _missing(expr[end:], present, recorded, seen)
            if word == "or":
                return left | right if left and right else set()
            return left | right
    outside, inner = _operand(expr)
    absent: set[str] = set()
    for part in inner:
        absent |= _missing(part, present, recorded, seen)
    for name in sorted(_names(outside)):
        if name in recorded:
            if name in seen:
                # A rule reading its own last value carries only what its other
                # operands recorded: the loop itself never supplies a sample.
                absent.add(name)
            else:
                absent |= _missing(recorded[name], present, recorded, seen | {name})
        elif not present(name):
            absent.add(name)
    return absent


def _is_beat(metric: str) -> bool:
    """Whether celery beat (not a worker) serves ``metric``."""
    spec = SPECS.get(metric)
    return spec is not None and spec.process == "beat"


def _beat_targets(api: PrometheusAPI, config: MonitoringConfig) -> tuple[bool, str]:
    """(any celery beat target in the last day, what was looked for)."""
    sel = config.selectors.beat
    if sel:
        return bool(api.query(f"count(last_over_time(up{{{sel}}}[1d]))")), f"up{{{sel}}}"
    found = bool(api.query("count(last_over_time(celery_beat_up[1d]))"))
    return found, "no selectors.beat, and no target served celery_beat_up in the last day"


def _fix_for(metric: str) -> str:
    spec = SPECS.get(metric) or SPECS.get(re.sub(r"_(bucket|sum|count)$", "", metric))
    if spec is not None and spec.process == "beat":
        return (
            f"{metric} comes from celery beat: scrape beat's exporter and give "
            "selectors.beat (--beat-selector) its matchers"
        )
    if spec is not None and spec.brokers:
        return f"{metric} comes from {spec.brokers}"
    if metric.startswith("celery_queue_"):
        return (
            f"{metric} comes from queue-depth polling: leave CSUITE_QUEUE_DEPTH on in the "
            "workers or run `csuite-async-obs exporter`"
        )
    return f"no target serves {metric}: check the scrape config and --selector"


def check_alert_series(
    api: PrometheusAPI, groups: Sequence[Mapping[str, Any]], config: MonitoringConfig
) -> list[Check]:
    """One failed check per alert of ours that cannot fire for want of series; else one ok."""
    recorded = {
        str(rule["name"]): str(rule["query"])
        for group in groups
        for rule in group.get("rules", [])
        if rule.get("type") == "recording"
    }
    alerts = [
        rule
        for group in our_groups(groups, config)
        for rule in group.get("rules", [])
        if rule.get("type") == "alerting"
    ]
    if not alerts:
        return [
            Check(
                "alert series",
                False,
                "no alerting rule of ours is loaded, so none can fire",
                "load alerts/alerts.rules.yml (see the rules check)",
            )
        ]
    cache: dict[str, bool] = {}

    def present(name: str) -> bool:
        if name not in cache:
            if _is_beat(name):
                # A dead beat's alert can fire: its series count for a day.
                selected = _select(name, config.selectors.beat)
                cache[name] = bool(api.query(f"count(last_over_time({selected}[1d]))"))
                return cache[name]
            matchers = _queue_matchers(config) if name.startswith("celery_queue_") else [
                config.selectors.worker
            ]  # fmt: skip
            cache[name] = bool(api.query(f"count({_any_of(name, matchers)})"))
        return cache[name]

    # Alerts that need a series of celery beat (every metric absent: all they need).
    on_beat = {
        str(rule["name"])
        for rule in alerts
        if any(_is_beat(m) for m in needed_metrics(str(rule["query"]), lambda _: False, recorded))
    }
    inapplicable: list[str] = []
    where = ""
    if on_beat:
        has_beat, where = _beat_targets(api, config)
        if not has_beat:
            inapplicable = [str(rule["name"]) for rule in alerts if rule["name"] in on_beat]
    checks = []
    for rule in alerts:
        if rule["name"] in inapplicable:
            continue
        missing = needed_metrics(str(rule["query"]), present, recorded)
        if missing:
            names = ", ".join(sorted(missing))
            checks.append(
                Check(
                    "alert series",
                    False,
                    f"{rule['name']} can never fire: no series of {names}",
                    "; ".join(_fix_for(m) for m in sorted(missing))
                    + f"; or disable it (alerts: {{{rule['name']}: {{enabled: false}}}})",
                )
            )
    if checks:
        return checks
    if inapplicable:
        return [
            Check(
                "alert series",
                True,
                f"all {len(alerts) - len(inapplicable)} alerts that apply have the series "
                f"they read; not applicable without a celery beat target ({where}): "
                + ", ".join(inapplicable),
            )
        ]
    return [Check("alert series", True, f"all {len(alerts)} alerts have the series they read")]


# --------------------------------------------------------------------------- counters


def _increase_check(
    api: PrometheusAPI,
    config: MonitoringConfig,
    limits: DoctorLimits,
    name: str,
    metric: str,
    label: str | None,
    what: str,
    fix: str,
) -> Check:
    sel = config.selectors.worker
    if not api.query(f"count({_select(metric, sel)})"):
        return Check(
            name,
            False,
            f"no worker serves {metric}, so this cannot be told",
            "upgrade the workers' csuite-async-obs (and see the targets check)",
        )
    keys = ("job", "instance") + ((label,) if label else ())
    totals: dict[tuple[str, ...], float] = {}
    for series in api.query(f"{_select(metric, sel)}[{limits.window}]"):
        key = tuple(series["metric"].get(k, "") for k in keys)
        totals[key] = totals.get(key, 0.0) + _counted(series.get("values", []))
    rows = [(dict(zip(keys, key, strict=True)), n) for key, n in totals.items() if n > 0]
    if not rows:
        return Check(name, True, f"{metric} did not increase in {limits.window}")
    seen = "; ".join(
        f"{_target(labels)}{' ' + labels.get(label, '') if label else ''}: {value:.0f}"
        for labels, value in sorted(rows, key=lambda r: _target(r[0]))
    )
    return Check(name, False, f"{what} in {limits.window}: {seen}", fix)


def _counted(samples: list[Any]) -> float:
    """What a counter counted between its raw ``[time, value]`` samples: each rise,
    and after a reset (a restart) its new value."""
    total, previous = 0.0, None
    for _, raw in samples:
        value = float(raw)
        if previous is not None:
            total += value - previous if value >= previous else value
        previous = value
    return total


def check_label_overflow(
    api: PrometheusAPI, config: MonitoringConfig, limits: DoctorLimits
) -> Check:
    return _increase_check(
        api, config, limits, "label overflow", "csuite_async_obs_label_overflow_total",
        "label", "label values reported as 'other'",
        "raise CSUITE_MAX_TASK_NAMES / CSUITE_MAX_QUEUE_NAMES / CSUITE_MAX_EXCEPTIONS for "
        "that label, or find what makes so many distinct names (dynamic queue or task names)",
    )  # fmt: skip


def check_instrumentation_errors(
    api: PrometheusAPI, config: MonitoringConfig, limits: DoctorLimits
) -> Check:
    return _increase_check(
        api, config, limits, "instrumentation errors",
        "csuite_async_obs_instrumentation_errors_total", "hook",
        "errors caught in the instrumentation",
        "the worker's log has each one (instrumentation_error, with the hook and traceback); "
        "report it with the Celery and kombu versions",
    )  # fmt: skip


def check_clocks(api: PrometheusAPI, config: MonitoringConfig, limits: DoctorLimits) -> Check:
    return _increase_check(
        api, config, limits, "clocks", "celery_task_queue_wait_clamped_total", None,
        "queue waits clamped at 0 (a publisher's clock ahead of the worker's)",
        "synchronise the clocks of the publishers and these workers (NTP, chrony); until "
        "then their queue waits read too short",
    )  # fmt: skip


def check_series(api: PrometheusAPI, config: MonitoringConfig, limits: DoctorLimits) -> Check:
    """Our series per worker, failing above the bound."""
    sel = config.selectors.worker
    matchers = '__name__=~"celery_.*|csuite_.*"' + (f", {sel}" if sel else "")
    rows = api.values(f"count by (job, instance) ({{{matchers}}})")
    if not rows:
        return Check("series per worker", False, "no series of ours", "see the targets check")
    rows.sort(key=lambda r: -r[1])
    listed = ", ".join(f"{_target(labels)} {value:.0f}" for labels, value in rows[:10])
    more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
    over = [r for r in rows if r[1] > limits.max_series]
    if over:
        return Check(
            "series per worker",
            False,
            f"{len(over)} over {limits.max_series}: {listed}{more}",
            "lower CSUITE_MAX_TASK_NAMES / CSUITE_MAX_QUEUE_NAMES / CSUITE_MAX_EXCEPTIONS, use "
            "fewer CSUITE_RUNTIME_BUCKETS, or drop series with metric_relabel_configs",
        )
    return Check("series per worker", True, f"{listed}{more} (bound {limits.max_series})")


def run_checks(
    api: PrometheusAPI, config: MonitoringConfig, limits: DoctorLimits | None = None
) -> list[Check]:
    """Every check, in the order ``doctor`` prints them.

    Raises:
        PrometheusUnreachable: Prometheus could not be reached (at the first request, or later).
    """
    limits = limits or DoctorLimits()
    now = api.now()
    checks: list[Check] = []

    def guarded(name: str, run: Callable[[], Check | list[Check]]) -> None:
        try:
            result = run()
        except PrometheusQueryError as exc:
            result = Check(name, False, f"Prometheus refused a query: {exc}", "check --selector")
        checks.extend(result if isinstance(result, list) else [result])

    guarded("targets", lambda: check_targets(api, config))
    guarded("queue-depth poll", lambda: check_poll(api, config, limits))
    groups: list[Any] = []
    try:
        groups = list(api.get("rules").get("groups", []))
    except PrometheusQueryError as exc:
        checks.append(Check("rules", False, f"/api/v1/rules: {exc}", "a Prometheus >= 2.x"))
    else:
        checks.append(check_rules(groups, config, now, _config_loaded_at(api)))
    guarded("alert series", lambda: check_alert_series(api, groups, config))
    guarded("label overflow", lambda: check_label_overflow(api, config, limits))
    guarded("instrumentation errors", lambda: check_instrumentation_errors(api, config, limits))
    guarded("clocks", lambda: check_clocks(api, config, limits))
    guarded("series per worker", lambda: check_series(api, config, limits))
    return checks
