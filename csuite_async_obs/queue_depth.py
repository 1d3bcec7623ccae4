"""Queue depth: the exact backlog of each queue, polled off the scrape path.

Three parts, each replaceable on its own:

* :class:`BrokerReader` reads the broker.  On Redis a queue is a list per
  priority step (``{queue}{sep}{step}``; step 0 is the bare name), so a queue's
  length is the sum over its sub-lists.  One Lua script (:data:`DEPTH_SCRIPT`,
  loaded when the reader connects, then one ``EVALSHA`` a poll) reads, for every
  queue and step, ``LLEN`` and the publish stamp of the oldest message, plus
  ``HLEN`` of the ``unacked`` hash, and replies with one total and one stamp per
  queue: a single round trip whatever the number of queues (one by one, 200
  queues x 4 steps is 800 round trips), and one atomic snapshot, so a message
  that a worker moves from a list into ``unacked`` is never counted twice or
  missed.  Where Redis refuses scripts (ACL, proxy) the same reads go in one
  ``MULTI``/``EXEC`` pipeline, as exact, with more client-side work.  Other
  brokers get a passive ``queue_declare`` per queue; a queue the broker cannot report
  (``NOT_FOUND``, an error) is *unknown*, never 0: it gets no sample and is
  listed in :meth:`QueueDepthPoller.health` (``/healthz``).
* :class:`QueueDepthPoller` polls on a daemon thread every ``interval`` seconds
  and keeps the last result in plain memory, as one immutable
  :class:`PollState` swapped in by a single assignment.  Nothing on the poll
  threads touches a prometheus_client metric: in the prefork main process a
  pool child can be forked at any instant, and a child that inherits a metric
  lock held by this thread hangs on it forever.
* :class:`QueueDepthCollector` turns the last state into metric families when
  Prometheus scrapes; the scrape reads memory only and never waits on the broker.

The broker I/O runs on a second thread so that the poll thread can give up on
it after ``timeout`` seconds (counted as a failed poll) without the scrape, or
the next poll, waiting for it.  The connection has socket timeouts as well and
is thrown away after any error, so a poll normally returns within the timeout
and the next one reconnects.

**Oldest message.**  Redis lists are filled with ``LPUSH`` and served with
``BRPOP``/``RPOP`` from the right, so the message at index -1 of each sub-list
is that sub-list's oldest.  A queue's oldest message is the one with the
earliest publish timestamp (the :data:`~csuite_async_obs.hooks.PUBLISHED_AT_HEADER`
header) among the tails of *all* its non-empty sub-lists -- not the next one the
worker would serve.  A low-priority message starving behind a busy
high-priority sub-list is exactly the staleness the age must show.  When a
non-empty queue has a tail without the header (published without this
package), its age is unknown and not reported.  A message restored to the far
end of a list (kombu's ``leftmost`` restore) is seen only once it reaches the
tail.  The age is computed at scrape time from the publish timestamp, so it
keeps growing between polls.

**Broker down.**  The last readings stay exposed, unchanged, while
``celery_queue_length_poll_errors_total`` rises and
``celery_queue_length_last_success_timestamp_seconds`` stops moving.  Dropping
the series instead would turn every graph and threshold alert into "no data"
at the moment the backlog matters most; staleness is an explicit signal
(``time() - celery_queue_length_last_success_timestamp_seconds``).  The first
good poll replaces the readings.

**Which queues.**  The app's ``task_queues`` (fanout/broadcast queues are left
out: on Redis they are pub/sub channels, never lists) and
``task_default_queue``, the queues the worker consumes, and the ``queues``
option.  Entries of ``queues`` with a glob character (``*?[``) are matched
against the queues found on the broker -- on Redis, the members of kombu's
binding sets ``_kombu.binding.<exchange>`` found with ``SCAN`` (re-read at most
every :data:`DISCOVERY_INTERVAL` seconds); Celery's own control, reply and
event exchanges are skipped, their queues are per process.  Globs match
nothing on other brokers.  ``queue_exclude`` globs remove queues from all of
these.  Named queues are always polled; glob matches are added in name order
up to ``max_queue_names`` queues in all, to keep the label bounded.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import math
import queue as queue_mod
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from kombu.exceptions import OperationalError
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from .hooks import PUBLISHED_AT_HEADER
from .logs import get_logger
from .metrics import SPECS

if TYPE_CHECKING:
    from celery import Celery

    from .settings import ObsSettings

__all__ = [
    "DEPTH_SCRIPT",
    "DISCOVERY_INTERVAL",
    "BrokerReader",
    "PollState",
    "QueueDepthCollector",
    "QueueDepthPoller",
    "QueueSelection",
    "Reading",
    "configured_queues",
    "start_queue_depth",
]

#: Seconds between two reads of the broker's queue list for glob entries.
DISCOVERY_INTERVAL = 60.0

_GLOB_CHARS = frozenset("*?[")
_LOG_REPEAT = 60.0

ConsumedQueues = Callable[[], Iterable[str]] | Iterable[str]


def _is_glob(pattern: str) -> bool:
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
            q for q in explicit if not _is_glob(q)
        ]
        return cls(
            names=tuple(dict.fromkeys(names)),
            patterns=tuple(q for q in explicit if _is_glob(q)),
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


# --------------------------------------------------------------------------- broker reads


@dataclass(frozen=True)
class Reading:
    """One successful read of the broker.

    ``lengths`` holds the queues whose length is known; ``unknown`` the queues
    the broker could not report.  ``oldest_published_at`` holds, for non-empty
    queues whose oldest message carries the publish header, that timestamp.
    ``unacked`` and ages are ``None``/absent where the broker cannot tell
    (``ages_supported`` is false off Redis).
    """

    lengths: Mapping[str, int]
    oldest_published_at: Mapping[str, float] = field(default_factory=dict)
    unacked: int | None = None
    unknown: tuple[str, ...] = ()
    ages_supported: bool = False
    round_trips: int = 0
    duration: float = 0.0
    taken_at: float = 0.0


def _published_at(raw: Any) -> float | None:
    """The publish timestamp header of one stored kombu message, if it has one."""
    try:
        payload = json.loads(raw)
        value = payload["headers"][PUBLISHED_AT_HEADER]
    except (ValueError, TypeError, KeyError):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


# One poll of every queue, run by Redis as a single command (atomic, like the
# MULTI/EXEC it replaces, but one reply per queue instead of two per sub-list):
# client-side packing and parsing of 1,600 pipelined commands cost 20 ms for 200
# queues, this costs about 1.
#
# KEYS: the sub-lists of each queue (ARGV[1] per queue, in queue order), then
# the unacked hash.  ARGV[2]: the publish header's key as it appears in a stored
# message ('"name":').  Reply: per queue its total length (-1 when a key is not
# a list) and the oldest tail's publish stamp as text ('' when unknown), then
# HLEN of the unacked hash (-1 on error).  The stamp is searched for after the
# message's "headers" key instead of decoding the message with cjson: a header
# value that is a string cannot match (its quotes are escaped), and the cost is
# a byte scan however large the message, which keeps Redis responsive.
DEPTH_SCRIPT = """
local steps = tonumber(ARGV[1])
local needle = ARGV[2]
local out = {}
local function stamp_of(tail)
  local h = string.find(tail, '"headers":', 1, true)
  if not h then return nil end
  local at = string.find(tail, needle, h, true)
  if not at then return nil end
  local text = string.match(tail, '^%s*(-?[%d%.]+[eE]?[-+]?%d*)', at + #needle)
  local value = text and tonumber(text)
  if value == nil or value ~= value or value == math.huge or value == -math.huge then
    return nil
  end
  return value
end
for q = 0, (#KEYS - 1) / steps - 1 do
  local total, oldest, aged, failed = 0, nil, true, false
  for s = 1, steps do
    local key = KEYS[q * steps + s]
    local n = redis.pcall('LLEN', key)
    if type(n) ~= 'number' then
      failed = true
    elseif n > 0 then
      total = total + n
      local tail = redis.call('LINDEX', key, -1)
      local stamp = tail and stamp_of(tail)
      if not stamp then
        aged = false
      elseif oldest == nil or stamp < oldest then
        oldest = stamp
      end
    end
  end
  if failed then
    out[#out + 1] = -1
    out[#out + 1] = ''
  else
    out[#out + 1] = total
    out[#out + 1] = (aged and oldest) and string.format('%.17g', oldest) or ''
  end
end
local unacked = redis.pcall('HLEN', KEYS[#KEYS])
if type(unacked) ~= 'number' then unacked = -1 end
out[#out + 1] = unacked
return out
"""
_SCRIPT_SHA = hashlib.sha1(DEPTH_SCRIPT.encode(), usedforsecurity=False).hexdigest()


def _no_script_error() -> type[Exception]:
    import redis.exceptions

    return redis.exceptions.NoScriptError


def _script_unavailable() -> type[Exception]:
    import redis.exceptions

    return redis.exceptions.ResponseError


def _redis_glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def _redis_channel_class() -> type[Any] | None:
    try:
        from kombu.transport.redis import Channel
    except ImportError:  # pragma: no cover -- redis is a dependency of the package
        return None
    return Channel


class BrokerReader:
    """Reads queue lengths from ``app``'s broker over one connection of its own.

    The connection is opened on first use with socket timeouts of ``timeout``
    seconds and no connection retries; after an error call :meth:`close` and
    use a new reader.  Not thread-safe: one thread owns a reader.
    """

    def __init__(
        self,
        app: Celery,
        timeout: float = 3.0,
        skip_exchanges: Iterable[str] = (),
        log: Any = None,
    ) -> None:
        self.app = app
        self.log = log or get_logger()
        #: False once Redis refused the poll script: the pipeline is used instead.
        self._script_ok = True
        self.timeout = timeout
        self.skip_exchanges = frozenset(skip_exchanges)
        #: Request batches sent to the broker by :meth:`read` and :meth:`discover`
        #: (a pipeline is one batch: one round trip).
        self.round_trips = 0
        self._conn: Any = None
        self._channel: Any = None
        self._redis: Any = None

    # ------------------------------------------------------------------ connection

    def _connect(self) -> None:
        if self._conn is not None:
            return
        probe = self.app.connection_for_read()
        driver = probe.transport.driver_name
        probe.release()
        options: dict[str, Any] = {}
        if driver == "redis":  # redis, rediss and sentinel
            # kombu's default is no socket timeout at all: a broker that stops
            # answering would hold the poll forever.
            configured = self.app.conf.broker_transport_options or {}
            for key in ("socket_timeout", "socket_connect_timeout"):
                value = configured.get(key)
                options[key] = min(value, self.timeout) if value else self.timeout
        elif driver == "py-amqp":
            options.update(read_timeout=self.timeout, write_timeout=self.timeout)
        conn = self.app.connection_for_read(connect_timeout=self.timeout, transport_options=options)
        try:
            # max_retries=0: Connection.connect() would retry once after sleeping 2 s.
            conn.ensure_connection(max_retries=0)
            channel: Any = conn.channel()
        except BaseException:
            _close_quietly(conn)
            raise
        self._conn, self._channel = conn, channel
        redis_channel = _redis_channel_class()
        if redis_channel is not None and isinstance(channel, redis_channel):
            import redis

            # A plain client on the channel's own pool (its timeouts, credentials,
            # TLS, Sentinel master), prefixing keys ourselves: kombu 5.7's prefixing
            # client covers LLEN and HLEN but not LINDEX or SCAN.
            self._redis = redis.Redis(connection_pool=channel.pool)
            # Part of the handshake, so that a poll is one EVALSHA from the first.
            if self._script_ok:
                try:
                    self._redis.script_load(DEPTH_SCRIPT)
                except _script_unavailable() as exc:
                    self._script_unavailable(exc)

    def close(self) -> None:
        """Close the connection; errors on the way are ignored (the broker may be gone)."""
        conn, self._conn, self._channel, self._redis = self._conn, None, None, None
        if conn is not None:
            _close_quietly(conn)

    # ------------------------------------------------------------------ reads

    def read(self, queues: Sequence[str]) -> Reading:
        """Read the lengths (and on Redis the oldest ages and unacked count) of ``queues``."""
        self._connect()
        start = time.monotonic()
        before = self.round_trips
        if self._redis is not None:
            reading = self._read_redis(queues)
        else:
            reading = self._read_declare(queues)
        return replace(
            reading,
            round_trips=self.round_trips - before,
            duration=time.monotonic() - start,
            taken_at=time.time(),
        )

    def _keys(self, name: str) -> list[str]:
        channel = self._channel
        prefix = channel.global_keyprefix or ""
        # kombu 5.7 (Channel._q_for_pri): step 0 is the bare name, the others
        # "{queue}{sep}{step}".  dict.fromkeys drops repeated steps, which
        # would otherwise be counted twice.
        steps = dict.fromkeys(channel.priority_steps)
        return [prefix + (f"{name}{channel.sep}{step}" if step else name) for step in steps]

    def _read_redis(self, queues: Sequence[str]) -> Reading:
        if self._script_ok:
            try:
                return self._read_redis_script(queues)
            except _script_unavailable() as exc:
                self._script_unavailable(exc)
        return self._read_redis_pipeline(queues)

    def _script_unavailable(self, exc: Exception) -> None:
        # Scripting refused (an ACL, a proxy without EVAL, scripting disabled):
        # this reader uses the pipeline, as exact but slower on the client side.
        self._script_ok = False
        self.log.warning("queue_depth_script_unavailable", error=f"{type(exc).__name__}: {exc}")

    def _read_redis_script(self, queues: Sequence[str]) -> Reading:
        channel = self._channel
        keys = [key for name in queues for key in self._keys(name)]
        steps = len(keys) // len(queues) if queues else 1
        keys.append((channel.global_keyprefix or "") + channel.unacked_key)
        args = (steps, f'"{PUBLISHED_AT_HEADER}":')
        client = self._redis
        try:
            self.round_trips += 1
            replies = client.evalsha(_SCRIPT_SHA, len(keys), *keys, *args)
        except _no_script_error():
            # First use on this server (or after a restart / SCRIPT FLUSH):
            # EVAL sends the body and caches it for the next EVALSHA.
            self.round_trips += 1
            replies = client.eval(DEPTH_SCRIPT, len(keys), *keys, *args)
        lengths: dict[str, int] = {}
        oldest: dict[str, float] = {}
        unknown: list[str] = []
        for i, name in enumerate(queues):
            length, stamp = replies[2 * i], replies[2 * i + 1]
            if length < 0:
                unknown.append(name)  # e.g. WRONGTYPE: that key is not a kombu queue
                continue
            lengths[name] = int(length)
            if length and stamp:
                value = float(stamp)
                if math.isfinite(value):
                    oldest[name] = value
        unacked_reply = int(replies[-1])
        unacked = None if unacked_reply < 0 else unacked_reply
        return Reading(lengths, oldest, unacked, tuple(unknown), ages_supported=True)

    def _read_redis_pipeline(self, queues: Sequence[str]) -> Reading:
        channel = self._channel
        keys = {name: self._keys(name) for name in queues}
        with self._redis.pipeline(transaction=True) as pipe:
            for name in queues:
                for key in keys[name]:
                    pipe.llen(key)
                    pipe.lindex(key, -1)
            pipe.hlen((channel.global_keyprefix or "") + channel.unacked_key)
            replies = pipe.execute(raise_on_error=False)
        self.round_trips += 1
        lengths: dict[str, int] = {}
        oldest: dict[str, float] = {}
        unknown: list[str] = []
        pos = 0
        for name in queues:
            total = 0
            stamps: list[float | None] = []
            failed = False
            for _key in keys[name]:
                length, tail = replies[pos], replies[pos + 1]
                pos += 2
                if isinstance(length, Exception) or isinstance(tail, Exception):
                    failed = True  # e.g. WRONGTYPE: that key is not a kombu queue
                    continue
                total += int(length)
                if length and tail is not None:
                    stamps.append(_published_at(tail))
            if failed:
                unknown.append(name)
                continue
            lengths[name] = total
            if total and stamps and all(s is not None for s in stamps):
                oldest[name] = min(s for s in stamps if s is not None)
        unacked_reply = replies[pos]
        unacked = None if isinstance(unacked_reply, Exception) else int(unacked_reply)
        return Reading(lengths, oldest, unacked, tuple(unknown), ages_supported=True)

    def _read_declare(self, queues: Sequence[str]) -> Reading:
        conn = self._conn
        lengths: dict[str, int] = {}
        unknown: list[str] = []
        for name in queues:
            self.round_trips += 1
            try:
                _, count, _ = self._channel.queue_declare(queue=name, passive=True)
            except conn.channel_errors:
                # NOT_FOUND and friends: AMQP closes the channel after one.
                unknown.append(name)
                _close_quietly(self._channel)
                self._channel = conn.channel()
                continue
            lengths[name] = int(count)
        return Reading(lengths, {}, None, tuple(unknown), ages_supported=False)

    def discover(self) -> list[str]:
        """Queues bound on the broker (Redis: kombu's binding sets); ``[]`` elsewhere."""
        self._connect()
        if self._redis is None:
            return []
        channel, client = self._channel, self._redis
        prefix = channel.global_keyprefix or ""
        table_prefix = prefix + channel.keyprefix_queue % ("",)
        pattern = _redis_glob_escape(table_prefix) + "*"
        tables: list[bytes] = []
        cursor: Any = 0
        while True:
            cursor, keys = client.scan(cursor, match=pattern, count=1000)
            self.round_trips += 1
            tables.extend(keys)
            if not int(cursor):
                break
        tables = [
            k
            for k in tables
            if k.decode(errors="replace")[len(table_prefix) :] not in self.skip_exchanges
        ]
        if not tables:
            return []
        with client.pipeline(transaction=False) as pipe:
            for key in tables:
                pipe.smembers(key)
            replies = pipe.execute(raise_on_error=False)
        self.round_trips += 1
        found: set[str] = set()
        sep = channel.sep
        for members in replies:
            if isinstance(members, Exception):
                continue
            for member in members:
                # member = routing_key{sep}pattern{sep}queue (kombu's _queue_bind).
                queue_name = member.decode(errors="replace").split(sep)[-1]
                if queue_name:
                    found.add(queue_name)
        return sorted(found)


def _close_quietly(resource: Any) -> None:
    # Closing a connection to a dead broker may raise anything.
    with contextlib.suppress(Exception):
        resource.close()


def _control_exchanges(app: Celery) -> list[str]:
    """Celery's own exchanges, whose queues are per process, not task backlogs."""
    control = app.conf.control_exchange or "celery"
    return [f"{control}.pidbox", f"reply.{control}.pidbox", app.conf.event_exchange or "celeryev"]


# --------------------------------------------------------------------------- poller


@dataclass(frozen=True)
class PollState:
    """What the collector and health check read: replaced whole after every poll."""

    reading: Reading | None = None
    errors: int = 0
    polls: int = 0
    last_success: float = 0.0
    last_error: str = ""
    failing: bool = False
    dropped: int = 0


class _Job:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: tuple[Reading, int] | None = None
        self.error: BaseException | None = None


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError):
        return False
    try:
        import redis.exceptions

        if isinstance(exc, redis.exceptions.ConnectionError):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, (OSError, OperationalError))


class QueueDepthPoller:
    """Polls queue depth on daemon threads; :attr:`state` is the last result.

    Args:
        app: the Celery app whose broker is read.
        selection: which queues (see :class:`QueueSelection`).
        consumed: the queues a worker consumes, or a callable returning them
            (evaluated at every poll, so queues added at run time count).
        interval: seconds between the starts of two polls.
        timeout: seconds a poll may take; a slower one counts as failed.
        log_format: rendering of the package's logs.
    """

    def __init__(
        self,
        app: Celery,
        selection: QueueSelection,
        *,
        consumed: ConsumedQueues = (),
        interval: float = 5.0,
        timeout: float = 3.0,
        log_format: str = "console",
        discovery_interval: float = DISCOVERY_INTERVAL,
    ) -> None:
        self.app = app
        self.selection = selection
        self.interval = interval
        self.timeout = timeout
        self.discovery_interval = discovery_interval
        self._consumed = consumed if callable(consumed) else tuple(consumed)
        self._last_consumed: tuple[str, ...] = ()
        self._skip_exchanges = _control_exchanges(app)
        self.log = get_logger(log_format)
        self._state = PollState()
        self._stop = threading.Event()
        self._poll_lock = threading.Lock()
        self._jobs: queue_mod.SimpleQueue[_Job | None] = queue_mod.SimpleQueue()
        self._job: _Job | None = None
        self._thread: threading.Thread | None = None
        self._io_thread: threading.Thread | None = None
        # Owned by the I/O thread only.
        self._reader: BrokerReader | None = None
        self._discovered: list[str] | None = None
        self._discovered_at = 0.0
        self._last_log = -_LOG_REPEAT
        self._attached: list[tuple[CollectorRegistry, QueueDepthCollector]] = []

    @classmethod
    def from_settings(
        cls, app: Celery, settings: ObsSettings, consumed: ConsumedQueues = ()
    ) -> QueueDepthPoller:
        """A poller configured by the ``queues``/``queue_*`` options of ``settings``."""
        selection = QueueSelection.build(
            app, settings.queues, settings.queue_exclude, settings.max_queue_names
        )
        return cls(
            app,
            selection,
            consumed=consumed,
            interval=settings.queue_poll_interval,
            timeout=settings.queue_poll_timeout,
            log_format=settings.log_format,
        )

    @property
    def state(self) -> PollState:
        """The last poll state (an immutable object; read it once per use)."""
        return self._state

    # ------------------------------------------------------------------ I/O thread

    def _consumed_names(self) -> tuple[str, ...]:
        if not callable(self._consumed):
            return self._consumed
        # Worker state read mid-change may raise: keep the last list then.
        with contextlib.suppress(Exception):
            self._last_consumed = tuple(str(q) for q in self._consumed())
        return self._last_consumed

    def _read(self, reader: BrokerReader) -> tuple[Reading, int]:
        if self.selection.patterns:
            now = time.monotonic()
            if self._discovered is None or now - self._discovered_at >= self.discovery_interval:
                self._discovered = reader.discover()
                self._discovered_at = now
        names, dropped = self.selection.resolve(self._consumed_names(), self._discovered or ())
        return reader.read(names), dropped

    def _collect(self) -> tuple[Reading, int]:
        reader = self._reader
        if reader is not None:
            try:
                return self._read(reader)
            except Exception as exc:
                self._close_reader()
                # A connection that worked at the last poll may have been cut by
                # a broker restart since: try once more on a new one.
                if not _is_connection_error(exc):
                    raise
        reader = self._reader = BrokerReader(self.app, self.timeout, self._skip_exchanges, self.log)
        try:
            return self._read(reader)
        except BaseException:
            self._close_reader()
            raise

    def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    def _io_loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                break
            try:
                job.result = self._collect()
            except Exception as exc:  # noqa: BLE001 -- handed to the poll thread, counted there
                job.error = exc
            finally:
                job.done.set()
        self._close_reader()

    def _ensure_io_thread(self) -> None:
        if self._io_thread is None or not self._io_thread.is_alive():
            self._io_thread = threading.Thread(
                target=self._io_loop, name="csuite-queue-depth-io", daemon=True
            )
            self._io_thread.start()

    # ------------------------------------------------------------------ polling

    def poll_once(self) -> bool:
        """Poll now, waiting at most ``timeout`` seconds; return whether it succeeded."""
        with self._poll_lock:
            self._ensure_io_thread()
            previous = self._job
            if previous is not None and not previous.done.is_set():
                # Still stuck on the broker past its timeout: no second request
                # piles up behind it, and this poll counts as failed too.
                return self._failed("the previous poll is still waiting on the broker")
            job = self._job = _Job()
            self._jobs.put(job)
            if not job.done.wait(self.timeout):
                return self._failed(f"poll took longer than {self.timeout:g}s")
            if job.error is not None or job.result is None:
                exc = job.error
                return self._failed(f"{type(exc).__name__}: {exc}" if exc else "no result")
            reading, dropped = job.result
            old = self._state
            self._state = PollState(
                reading=reading,
                errors=old.errors,
                polls=old.polls + 1,
                last_success=time.time(),
                dropped=dropped,
            )
        if old.failing:
            self.log.info("queue_depth_poll_recovered", failed_polls_total=old.errors,
                          queues=len(reading.lengths))  # fmt: skip
        if dropped and dropped != old.dropped:
            self.log.warning(
                "queue_depth_queues_dropped",
                dropped=dropped,
                hint="more queues match CSUITE_QUEUES globs than CSUITE_MAX_QUEUE_NAMES allows",
            )
        return True

    def _failed(self, error: str) -> bool:
        old = self._state
        self._state = replace(
            old, errors=old.errors + 1, polls=old.polls + 1, last_error=error, failing=True
        )
        now = time.monotonic()
        if not old.failing or now - self._last_log >= _LOG_REPEAT:
            self._last_log = now
            self.log.warning("queue_depth_poll_failed", error=error, failed_polls_total=old.errors + 1,
                             hint="queue metrics keep their last values until a poll succeeds")  # fmt: skip
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.poll_once()
            except Exception as exc:  # noqa: BLE001 -- the loop must outlive any bug of a poll
                self._failed(f"{type(exc).__name__}: {exc}")
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def start(self) -> QueueDepthPoller:
        """Start polling (the first poll at once) on a daemon thread."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="csuite-queue-depth", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop polling, close the broker connection and unregister attached collectors."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._io_thread is not None:
            self._jobs.put(None)
            # A thread stuck on a dead broker is a daemon: it is left behind.
            self._io_thread.join(timeout)
            self._io_thread = None
        for registry, collector in self._attached:
            with contextlib.suppress(KeyError):  # unregistered by someone else
                registry.unregister(collector)
        self._attached.clear()

    # ------------------------------------------------------------------ exposure

    def attach(
        self,
        registry: CollectorRegistry,
        const_labels: tuple[tuple[str, str], ...] = (),
        on_error: Callable[[BaseException], None] | None = None,
    ) -> QueueDepthCollector:
        """Register a :class:`QueueDepthCollector` of this poller on ``registry``."""
        collector = QueueDepthCollector(self, const_labels, on_error)
        registry.register(collector)
        self._attached.append((registry, collector))
        return collector

    def healthy(self, now: float | None = None) -> bool:
        """Whether a poll succeeded within two intervals plus the timeout."""
        state = self._state
        now = time.time() if now is None else now
        return bool(state.last_success) and now - state.last_success <= (
            2 * self.interval + self.timeout
        )

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``(ok, detail)`` for an exporter's ``/healthz``."""
        state = self._state
        reading = state.reading
        return self.healthy(), {
            "queue_depth_last_success": state.last_success or None,
            "queue_depth_poll_errors": state.errors,
            "queue_depth_last_error": state.last_error or None,
            "queues": len(reading.lengths) if reading else 0,
            "unknown_queues": list(reading.unknown) if reading else [],
        }


# --------------------------------------------------------------------------- collector


class QueueDepthCollector(Collector):
    """Yields the ``celery_queue_*`` metrics from a poller's last state at scrape time."""

    def __init__(
        self,
        poller: QueueDepthPoller,
        const_labels: tuple[tuple[str, str], ...] = (),
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._poller = poller
        self._const_names = [k for k, _ in const_labels]
        self._const_values = [v for _, v in const_labels]
        self._on_error = on_error or (lambda exc: None)

    def _family(self, name: str) -> GaugeMetricFamily | CounterMetricFamily:
        spec = SPECS[name]
        labels = [*spec.labels, *self._const_names]
        if spec.type == "counter":
            return CounterMetricFamily(name.removesuffix("_total"), spec.help, labels=labels)
        return GaugeMetricFamily(name, spec.help, labels=labels)

    _NAMES = (
        "celery_queue_length",
        "celery_queue_oldest_message_age_seconds",
        "celery_queue_unacked_messages",
        "celery_queue_length_poll_errors_total",
        "celery_queue_length_last_success_timestamp_seconds",
    )

    def describe(self) -> Iterator[Metric]:
        # Names only, so that a registry can refuse duplicates; never the broker.
        for name in self._NAMES:
            yield self._family(name)

    def collect(self) -> Iterator[Metric]:
        try:
            families = self._families(self._poller.state, time.time())
        except Exception as exc:  # noqa: BLE001 -- a scrape must not fail on our account
            self._on_error(exc)
            return
        yield from families

    def _families(self, state: PollState, now: float) -> list[Metric]:
        const = self._const_values
        length, age, unacked, errors, success = (self._family(n) for n in self._NAMES)
        reading = state.reading
        if reading is not None:
            for name in sorted(reading.lengths):
                count = reading.lengths[name]
                length.add_metric([name, *const], count)
                if not reading.ages_supported:
                    continue
                if count == 0:
                    age.add_metric([name, *const], 0.0)
                elif name in reading.oldest_published_at:
                    # Clock skew between publisher and exporter can make it negative.
                    age.add_metric(
                        [name, *const], max(0.0, now - reading.oldest_published_at[name])
                    )
            if reading.unacked is not None:
                unacked.add_metric(const, reading.unacked)
        errors.add_metric(const, state.errors)
        success.add_metric(const, state.last_success)
        return [length, age, unacked, errors, success]


# --------------------------------------------------------------------------- entry point


def start_queue_depth(
    app: Celery,
    registry: CollectorRegistry,
    settings: ObsSettings,
    consumed_queues: ConsumedQueues = (),
    on_error: Callable[[BaseException], None] | None = None,
) -> QueueDepthPoller:
    """Start polling ``app``'s broker and expose the queue metrics on ``registry``.

    Args:
        app: the Celery app.
        registry: where the collector is registered.
        settings: ``queues``, ``queue_exclude``, ``queue_poll_interval``,
            ``queue_poll_timeout``, ``max_queue_names``, ``const_labels`` and
            ``log_format`` are used.
        consumed_queues: the worker's consumed queue names, or a callable
            returning them (see :class:`QueueDepthPoller`).
        on_error: called with an exception raised while building a scrape.

    Returns:
        The running poller; its :meth:`~QueueDepthPoller.stop` also unregisters
        the collector.
    """
    poller = QueueDepthPoller.from_settings(app, settings, consumed_queues)
    poller.attach(registry, settings.const_labels, on_error)
    return poller.start()
