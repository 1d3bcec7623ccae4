"""Queue depth on Redis: every queue's priority sub-lists and the unacked hash in one Lua script a poll.

On Redis a queue is a list per priority step (``{queue}{sep}{step}``; step 0
is the bare name), so a queue's length is the sum over its sub-lists.  One Lua
script (:data:`DEPTH_SCRIPT`, loaded when the reader connects, then one
``EVALSHA`` a poll) reads, for every queue and step, ``LLEN`` and the publish
stamp of the oldest message, plus the ``unacked`` hash, and replies with one
total and one stamp per queue and the unacked messages counted per (exchange,
routing key): a single round trip whatever the number of queues (one by one,
200 queues x 4 steps is 800 round trips), and one atomic snapshot, so a message
that a worker moves from a list into ``unacked`` is never counted twice or
missed.  Where Redis refuses scripts (ACL, proxy) the same reads go in one
``MULTI``/``EXEC`` pipeline, as exact, with more client-side work.  Where
kombu's channel does not expose its layout
(:func:`~csuite_async_obs.compat.redis_layout`), the declare reader is used.

**Oldest message.**  Redis lists are filled with ``LPUSH`` and served with
``BRPOP``/``RPOP`` from the right, so the message at index -1 of each sub-list
is that sub-list's oldest.  A queue's oldest message is the one with the
earliest publish timestamp (the
:data:`~csuite_async_obs.protocol.PUBLISHED_AT_HEADER` header) among the tails
of *all* its non-empty sub-lists -- not the next one the worker would serve.  A
low-priority message starving behind a busy high-priority sub-list is exactly
the staleness the age must show.  When a non-empty queue has a tail without the
header (published without this package), its age is unknown and not reported.
A message restored to the far end of a list (kombu's ``leftmost`` restore) is
seen only once it reaches the tail.

**Unacked, per queue.**  kombu's Redis transport keeps one ``unacked`` hash for
all queues (delivery tag -> JSON ``[message, exchange, routing_key]``, written
by ``QoS.append``), so a message's queue is not stored: it is the queue(s)
kombu would restore it to (``Channel._lookup(exchange, routing_key)``).  The
script reads only the end of each entry, where the exchange and routing key
are, and replies with a count per pair; the reader resolves pairs to queues
with kombu's binding tables, cached (read again every discovery interval, and
when a pair names an exchange not seen yet):

* the default exchange (``''``, Celery's own publishing on Redis): the queue
  named by the routing key;
* an exchange the app declares as ``fanout``: every queue bound to it;
* ``topic`` (declared so, or, for an exchange the app does not declare, a table
  whose bindings carry kombu's topic pattern): the queues whose stored pattern
  (``*``: one word, ``#``: any words) matches the routing key;
* otherwise ``direct``: the queues bound with that routing key;
* no queue at all: the routing key is taken as the queue name.  kombu itself
  would restore such a message nowhere (or to ``deadletter_queue``); Celery
  routes by queue name, so the routing key is the best name it has, and the
  count is not dropped from the total.

A message routed to several queues counts once in each.  The pipeline reads
the hash with ``HRANDFIELD`` (a ``MULTI`` cannot branch on its size), which
needs Redis 6.2: on older servers that path gives no unacked counts.  Above
:data:`UNACKED_LIMIT` entries the hash is not read: that poll has no per-queue
unacked counts at all (``UNACKED`` in ``Reading.absent``, logged once per
reader), never partial ones.

**Discovery.**  Glob entries are matched against the members of kombu's
binding sets ``_kombu.binding.<exchange>``, found with ``SCAN``; Celery's own
control, reply and event exchanges are skipped, their queues are per process.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..compat import RedisLayout
from ..protocol import PUBLISHED_AT_HEADER
from .reading import CONSUMERS, DISCOVERY_INTERVAL, UNACKED, BrokerReader, Reading

__all__ = ["DEPTH_SCRIPT", "UNACKED_LIMIT", "RedisReader"]

#: Unacked entries above which a poll does not attribute them to queues.  No
#: Redis command returns part of a hash value, so the script copies every entry
#: (a whole message) into Lua and scans its end: measured on a busy 2-core host,
#: about 5-8 us of Redis's one thread per entry of ~0.9 KB (HVALS most of it),
#: so 55-85 ms at this limit, paid by every poller at every poll.  A fleet's
#: prefetched and running tasks (prefetch x processes) stay well below it; many
#: ETA/countdown tasks may not, and then the metric is unknown rather than slow.
UNACKED_LIMIT = 10_000

#: How far from the end of an unacked entry its exchange and routing key are
#: looked for.  Both are short names (AMQP caps them at 255 bytes, 6 bytes per
#: character once JSON-escaped in the worst case); an entry whose pair does not
#: end within this window makes the poll's unacked counts unknown.
TAIL_WINDOW = 4096


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
# message ('"name":'); ARGV[3]: UNACKED_LIMIT; ARGV[4]: TAIL_WINDOW.  Reply: per
# queue its total length (-1 when a key is not a list) and the oldest tail's
# publish stamp as text ('' when unknown); then HLEN of the unacked hash (-1 on
# error), and, when it is within the limit, the number of entries whose
# exchange and routing key could not be read, then (exchange, routing key,
# count) for every pair, both as the JSON text stored (decoded by Python).
#
# The stamp is searched for after the message's "headers" key instead of
# decoding the message with cjson: a header value that is a string cannot match
# (its quotes are escaped), and the cost is a byte scan however large the
# message, which keeps Redis responsive.  For the same reason an unacked entry
# is read backwards from its end, where kombu's json.dumps put '..., "exchange",
# "routing_key"]': only those two JSON tokens are scanned, never the message.
DEPTH_SCRIPT = """
local steps = tonumber(ARGV[1])
local needle = ARGV[2]
local limit = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local byte, sub = string.byte, string.sub
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
-- The first byte of the JSON string (or null) whose last byte is at i, or nil.
-- Inside a JSON string a quote is always escaped: the opening quote is the
-- first one, going back, preceded by an even run of backslashes.
local function token_start(v, i, stop)
  if i < stop then return nil end
  local b = byte(v, i)
  if b == 108 then
    if i - 3 >= stop and sub(v, i - 3, i) == 'null' then return i - 3 end
    return nil
  end
  if b ~= 34 then return nil end
  for j = i - 1, stop, -1 do
    if byte(v, j) == 34 then
      local k = j - 1
      while k >= stop and byte(v, k) == 92 do k = k - 1 end
      if k < stop then return nil end
      if (j - 1 - k) % 2 == 0 then return j end
    end
  end
  return nil
end
local function skip_spaces(v, i, stop)
  while i >= stop and byte(v, i) == 32 do i = i - 1 end
  return i
end
-- The exchange and routing key tokens ending an entry '[message, ex, rk]'.
local function route_of(v)
  local stop = math.max(1, #v - window + 1)
  local i = skip_spaces(v, #v, stop)
  if i < stop or byte(v, i) ~= 93 then return nil end
  i = skip_spaces(v, i - 1, stop)
  local rk_at = token_start(v, i, stop)
  if not rk_at then return nil end
  local rk = sub(v, rk_at, i)
  i = skip_spaces(v, rk_at - 1, stop)
  if i < stop or byte(v, i) ~= 44 then return nil end
  i = skip_spaces(v, i - 1, stop)
  local ex_at = token_start(v, i, stop)
  if not ex_at then return nil end
  local before = skip_spaces(v, ex_at - 1, stop)
  if before < stop or byte(v, before) ~= 44 then return nil end
  return sub(v, ex_at, i), rk
end
local size = redis.pcall('HLEN', KEYS[#KEYS])
if type(size) ~= 'number' then
  out[#out + 1] = -1
  return out
end
out[#out + 1] = size
if size > limit then return out end
local counts, order, bad = {}, {}, 0
for _, v in ipairs(redis.call('HVALS', KEYS[#KEYS])) do
  local ex, rk = route_of(v)
  if ex then
    local per = counts[ex]
    if not per then
      per = {}
      counts[ex] = per
      order[#order + 1] = ex
    end
    per[rk] = (per[rk] or 0) + 1
  else
    bad = bad + 1
  end
end
out[#out + 1] = bad
for _, ex in ipairs(order) do
  for rk, n in pairs(counts[ex]) do
    out[#out + 1] = ex
    out[#out + 1] = rk
    out[#out + 1] = n
  end
end
return out
"""
_SCRIPT_SHA = hashlib.sha1(DEPTH_SCRIPT.encode(), usedforsecurity=False).hexdigest()


def _token_start(raw: bytes, i: int, stop: int) -> int | None:
    """Python twin of the script's ``token_start`` (0-based): where the JSON
    string or ``null`` ending at byte ``i`` begins."""
    if i < stop:
        return None
    if raw[i] == 0x6C:  # l
        return i - 3 if i - 3 >= stop and raw[i - 3 : i + 1] == b"null" else None
    if raw[i] != 0x22:  # "
        return None
    j = raw.rfind(b'"', stop, i)
    while j >= stop:
        k = j - 1
        while k >= stop and raw[k] == 0x5C:  # backslash
            k -= 1
        if k < stop:
            return None
        if (j - 1 - k) % 2 == 0:
            return j
        j = raw.rfind(b'"', stop, j)
    return None


def _skip_spaces(raw: bytes, i: int, stop: int) -> int:
    while i >= stop and raw[i] == 0x20:
        i -= 1
    return i


def _route_tokens(raw: bytes, window: int = TAIL_WINDOW) -> tuple[bytes, bytes] | None:
    """Python twin of the script's ``route_of``: the exchange and routing key
    tokens (JSON text) ending an unacked entry, read from its last bytes only."""
    stop = max(0, len(raw) - window)
    i = _skip_spaces(raw, len(raw) - 1, stop)
    if i < stop or raw[i] != 0x5D:  # ]
        return None
    i = _skip_spaces(raw, i - 1, stop)
    rk_at = _token_start(raw, i, stop)
    if rk_at is None:
        return None
    rk = raw[rk_at : i + 1]
    i = _skip_spaces(raw, rk_at - 1, stop)
    if i < stop or raw[i] != 0x2C:  # ,
        return None
    i = _skip_spaces(raw, i - 1, stop)
    ex_at = _token_start(raw, i, stop)
    if ex_at is None:
        return None
    before = _skip_spaces(raw, ex_at - 1, stop)
    if before < stop or raw[before] != 0x2C:
        return None
    return raw[ex_at : i + 1], rk


def _name(token: bytes) -> str | None:
    """An exchange or routing key token as kombu reads it back (``null`` is ``''``)."""
    try:
        value = json.loads(token)
    except ValueError:
        return None
    if value is None:
        return ""
    return value if isinstance(value, str) else None


def _hash_values(entries: Any) -> list[bytes]:
    """The values of an ``HRANDFIELD ... WITHVALUES`` reply: redis-py gives it flat
    (``[field, value, ...]``, RESP2) or as pairs (RESP3, or its unified shape)."""
    if not entries:
        return []
    if isinstance(entries[0], (list, tuple)):
        return [pair[1] for pair in entries]
    return list(entries[1::2])


def _no_script_error() -> type[Exception]:
    import redis.exceptions

    return redis.exceptions.NoScriptError


def _script_unavailable() -> type[Exception]:
    import redis.exceptions

    return redis.exceptions.ResponseError


def _redis_glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


#: A binding as kombu stores it: (routing key, pattern, queue).
Binding = tuple[str, str, str]


class RedisReader(BrokerReader):
    """Reads kombu's Redis lists with one script a poll (a pipeline where scripts are refused).

    Args:
        conn, channel: the reader's own kombu connection and channel.
        layout: where the channel keeps its keys (:func:`~..compat.redis_layout`).
        skip_exchanges: exchanges whose queues :meth:`discover` leaves out.
        exchange_types: exchange name -> kombu type (``direct``, ``topic``,
            ``fanout``) of the exchanges the app declares: what the worker that
            restores an unacked message knows, and Redis does not store.
        binding_refresh: seconds a read of the binding tables is used for.
        log: the package's logger.
    """

    def __init__(
        self,
        conn: Any,
        channel: Any,
        layout: RedisLayout,
        *,
        skip_exchanges: Iterable[str] = (),
        exchange_types: Mapping[str, str] | None = None,
        binding_refresh: float = DISCOVERY_INTERVAL,
        log: Any = None,
    ) -> None:
        import redis

        super().__init__(conn, channel, log)
        self.layout = layout
        self.skip_exchanges = frozenset(skip_exchanges)
        self.exchange_types = dict(exchange_types or {})
        self.binding_refresh = binding_refresh
        #: Above this many entries in the unacked hash a poll reports no unacked counts.
        self.unacked_limit = UNACKED_LIMIT
        #: False once Redis refused the poll script: the pipeline is used instead.
        self._script_ok = True
        self._tables: dict[str, tuple[Binding, ...]] | None = None
        self._tables_at = 0.0
        self._patterns: dict[str, re.Pattern[str] | None] = {}
        self._unknown_logged: set[str] = set()
        # A plain client on the channel's own pool (its timeouts, credentials,
        # TLS, Sentinel master), prefixing keys ourselves: kombu 5.7's prefixing
        # client covers LLEN and HLEN but not LINDEX or SCAN.
        self._redis: Any = redis.Redis(connection_pool=layout.pool)
        # Part of the handshake, so that a poll is one EVALSHA from the first.
        try:
            self._redis.script_load(DEPTH_SCRIPT)
        except _script_unavailable() as exc:
            self._script_unavailable(exc)

    def _read(self, queues: Sequence[str]) -> Reading:
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
        keys = [key for name in queues for key in self.layout.keys(name)]
        steps = len(keys) // len(queues) if queues else 1
        keys.append(self.layout.unacked_key)
        args = (steps, f'"{PUBLISHED_AT_HEADER}":', self.unacked_limit, TAIL_WINDOW)
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
        rest = replies[2 * len(queues) :]
        size = int(rest[0])
        pairs: dict[tuple[bytes, bytes], int] | None = None
        if size < 0:
            self._unacked_unknown("error", size)
        elif size > self.unacked_limit:
            self._unacked_unknown("limit", size)
        elif int(rest[1]):
            self._unacked_unknown("unreadable", size, unreadable=int(rest[1]))
        else:
            pairs = {}
            for at in range(2, len(rest), 3):
                pairs[(rest[at], rest[at + 1])] = int(rest[at + 2])
        return self._reading(lengths, oldest, unknown, pairs)

    def _read_redis_pipeline(self, queues: Sequence[str]) -> Reading:
        keys = {name: self.layout.keys(name) for name in queues}
        with self._redis.pipeline(transaction=True) as pipe:
            for name in queues:
                for key in keys[name]:
                    pipe.llen(key)
                    pipe.lindex(key, -1)
            pipe.hlen(self.layout.unacked_key)
            # Within MULTI nothing can be read conditionally: HRANDFIELD with a
            # count above the limit returns the whole hash when it is within
            # the limit (Redis >= 6.2), and never more than limit + 1 entries.
            pipe.hrandfield(self.layout.unacked_key, self.unacked_limit + 1, withvalues=True)
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
        size, entries = replies[pos], replies[pos + 1]
        pairs: dict[tuple[bytes, bytes], int] | None = None
        if isinstance(size, Exception) or isinstance(entries, Exception):
            self._unacked_unknown("error", -1)
        elif size > self.unacked_limit:
            self._unacked_unknown("limit", int(size))
        else:
            pairs = {}
            unreadable = 0
            for raw in _hash_values(entries):
                route = _route_tokens(raw)
                if route is None:
                    unreadable += 1
                else:
                    pairs[route] = pairs.get(route, 0) + 1
            if unreadable:
                self._unacked_unknown("unreadable", int(size), unreadable=unreadable)
                pairs = None
        return self._reading(lengths, oldest, unknown, pairs)

    def _reading(
        self,
        lengths: dict[str, int],
        oldest: dict[str, float],
        unknown: list[str],
        pairs: Mapping[tuple[bytes, bytes], int] | None,
    ) -> Reading:
        per_queue = None if pairs is None else self._unacked_by_queue(pairs)
        if per_queue is None:
            return Reading(lengths, oldest, unknown=tuple(unknown), absent=(CONSUMERS, UNACKED))
        unacked = {name: per_queue.get(name, 0) for name in lengths}
        return Reading(lengths, oldest, unacked, unknown=tuple(unknown), absent=(CONSUMERS,))

    def _unacked_unknown(self, reason: str, size: int, **detail: Any) -> None:
        # Per reason, once per reader (a new reader after a broker error logs
        # again): the poller logs the change of Reading.absent as well.
        if reason in self._unknown_logged:
            return
        self._unknown_logged.add(reason)
        self.log.warning(
            "queue_depth_unacked_unknown",
            reason=reason,
            unacked_entries=size if size >= 0 else None,
            limit=self.unacked_limit,
            hint="celery_queue_unacked_messages has no series while this lasts",
            **detail,
        )

    # ------------------------------------------------------------------ attribution

    def _unacked_by_queue(self, pairs: Mapping[tuple[bytes, bytes], int]) -> dict[str, int] | None:
        """Unacked counts per queue from counts per (exchange, routing key) token
        pair; ``None`` when a token is not a JSON string."""
        named: dict[tuple[str, str], int] = {}
        for (ex_token, rk_token), count in pairs.items():
            exchange, routing_key = _name(ex_token), _name(rk_token)
            if exchange is None or routing_key is None:
                self._unacked_unknown("unreadable", -1, token=(ex_token + rk_token)[:200])
                return None
            named[(exchange, routing_key)] = named.get((exchange, routing_key), 0) + count
        exchanges = {exchange for exchange, _ in named if exchange}
        if exchanges:
            tables = self._tables
            stale = time.monotonic() - self._tables_at >= self.binding_refresh
            if tables is None or stale or not exchanges <= tables.keys():
                tables = self._read_tables()
                # An exchange without bindings is remembered as such: it must
                # not cost a read of the tables at every poll until the next refresh.
                for exchange in exchanges:
                    tables.setdefault(exchange, ())
        per_queue: dict[str, int] = {}
        for (exchange, routing_key), count in named.items():
            for queue in self._route(exchange, routing_key):
                per_queue[queue] = per_queue.get(queue, 0) + count
        return per_queue

    def _route(self, exchange: str, routing_key: str) -> Iterable[str]:
        """The queues kombu's ``Channel._lookup`` restores a message to (see the module doc)."""
        if not exchange:
            return (routing_key,)
        table = (self._tables or {}).get(exchange, ())
        kind = self.exchange_types.get(exchange)
        if kind is None and any(pattern for _, pattern, _ in table):
            kind = "topic"  # only kombu's topic exchange stores a pattern
        if kind == "fanout":
            found = {queue for _, _, queue in table}
        elif kind == "topic":
            found = {queue for _, pattern, queue in table if self._matches(pattern, routing_key)}
        else:
            found = {queue for key, _, queue in table if key == routing_key}
        return found or (routing_key,)

    def _matches(self, pattern: str, routing_key: str) -> bool:
        # kombu's TopicExchange._match: re.match of the regex stored at bind time
        # (its key_to_pattern of the binding key), cached like kombu caches it.
        try:
            compiled = self._patterns[pattern]
        except KeyError:
            try:
                compiled = re.compile(pattern, re.U)
            except re.error:
                compiled = None
            self._patterns[pattern] = compiled
        return compiled is not None and compiled.match(routing_key) is not None

    def _read_tables(self) -> dict[str, tuple[Binding, ...]]:
        """Every binding table, keyed by exchange (kept for :meth:`_route`)."""
        client = self._redis
        table_prefix = self.layout.binding_prefix
        pattern = _redis_glob_escape(table_prefix) + "*"
        keys: list[bytes] = []
        cursor: Any = 0
        while True:
            cursor, found = client.scan(cursor, match=pattern, count=1000)
            self.round_trips += 1
            keys.extend(found)
            if not int(cursor):
                break
        tables: dict[str, tuple[Binding, ...]] = {}
        if keys:
            with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.smembers(key)
                replies = pipe.execute(raise_on_error=False)
            self.round_trips += 1
            sep = self.layout.sep
            for key, members in zip(keys, replies, strict=True):
                if isinstance(members, Exception):
                    continue
                bindings = []
                for member in members:
                    # member = routing_key{sep}pattern{sep}queue (kombu's _queue_bind).
                    parts = member.decode(errors="replace").split(sep)
                    if len(parts) == 3:
                        bindings.append((parts[0], parts[1], parts[2]))
                exchange = key.decode(errors="replace")[len(table_prefix) :]
                tables[exchange] = tuple(sorted(bindings))
        self._tables, self._tables_at = tables, time.monotonic()
        return tables

    def discover(self) -> list[str]:
        """Queues bound on the broker: the members of kombu's binding sets."""
        tables = self._read_tables()
        return sorted(
            {
                queue
                for exchange, bindings in tables.items()
                if exchange not in self.skip_exchanges
                for _, _, queue in bindings
                if queue
            }
        )
