"""Queue depth on Redis: every queue's priority sub-lists in one Lua script a poll.

On Redis a queue is a list per priority step (``{queue}{sep}{step}``; step 0
is the bare name), so a queue's length is the sum over its sub-lists.  One Lua
script (:data:`DEPTH_SCRIPT`, loaded when the reader connects, then one
``EVALSHA`` a poll) reads, for every queue and step, ``LLEN`` and the publish
stamp of the oldest message, plus ``HLEN`` of the ``unacked`` hash, and replies
with one total and one stamp per queue: a single round trip whatever the number
of queues (one by one, 200 queues x 4 steps is 800 round trips), and one atomic
snapshot, so a message that a worker moves from a list into ``unacked`` is
never counted twice or missed.  Where Redis refuses scripts (ACL, proxy) the
same reads go in one ``MULTI``/``EXEC`` pipeline, as exact, with more
client-side work.  Where kombu's channel does not expose its layout
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

**Discovery.**  Glob entries are matched against the members of kombu's
binding sets ``_kombu.binding.<exchange>``, found with ``SCAN``; Celery's own
control, reply and event exchanges are skipped, their queues are per process.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from ..compat import RedisLayout
from ..protocol import PUBLISHED_AT_HEADER
from .reading import CONSUMERS, UNACKED, BrokerReader, Reading

__all__ = ["DEPTH_SCRIPT", "RedisReader"]


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


class RedisReader(BrokerReader):
    """Reads kombu's Redis lists with one script a poll (a pipeline where scripts are refused)."""

    def __init__(
        self,
        conn: Any,
        channel: Any,
        layout: RedisLayout,
        *,
        skip_exchanges: Iterable[str] = (),
        log: Any = None,
    ) -> None:
        import redis

        super().__init__(conn, channel, log)
        self.layout = layout
        self.skip_exchanges = frozenset(skip_exchanges)
        #: False once Redis refused the poll script: the pipeline is used instead.
        self._script_ok = True
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
        return Reading(lengths, oldest, unknown=tuple(unknown), absent=(CONSUMERS, UNACKED))

    def _read_redis_pipeline(self, queues: Sequence[str]) -> Reading:
        keys = {name: self.layout.keys(name) for name in queues}
        with self._redis.pipeline(transaction=True) as pipe:
            for name in queues:
                for key in keys[name]:
                    pipe.llen(key)
                    pipe.lindex(key, -1)
            pipe.hlen(self.layout.unacked_key)
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
        return Reading(lengths, oldest, unknown=tuple(unknown), absent=(CONSUMERS, UNACKED))

    def discover(self) -> list[str]:
        """Queues bound on the broker: the members of kombu's binding sets."""
        client = self._redis
        table_prefix = self.layout.binding_prefix
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
        sep = self.layout.sep
        for members in replies:
            if isinstance(members, Exception):
                continue
            for member in members:
                # member = routing_key{sep}pattern{sep}queue (kombu's _queue_bind).
                queue_name = member.decode(errors="replace").split(sep)[-1]
                if queue_name:
                    found.add(queue_name)
        return sorted(found)
