"""Celery's ``rpc://`` result backend, plus a per-thread record of the states it has read.

With ``rpc://`` a task's states are messages sent to the reply queue of the
client that published it, and Celery's reply queue is per *thread*
(``app.thread_oid``; ``app.backend`` is a thread-local instance too).  So:

- Only the thread that published a task can read its states; for any other
  id, queued, running, finished elsewhere or never sent look the same, and
  :meth:`RPCResultBackend.read_state` returns ``None`` (not visible here)
  rather than guess.
- A state message is consumed once: by ``get_task_meta`` (``basic_get``), by
  ``AsyncResult.get()``'s consumer, or as another id's state met on the way.
  Celery 5.4 requeues the asked id's latest message (reread each time) but
  loses another id's state after one read; 5.7 keeps final states in a buffer.
  Rather than rely on either, this backend keeps the last state it saw per id
  (a final one is never replaced), fed by ``get_task_meta`` and by the result
  consumer's ``on_state_change`` (shim ``rpc_consumer_states``), so repeated
  reads return the same final state on every Celery.
- ``delay_task`` calls :meth:`~RPCResultBackend.mark_queued` after publishing:
  an id published here with no state yet is queued (``PENDING`` with its id).

The record is bounded (:data:`RECORD_LIMIT` ids per thread, the oldest dropped)
and cleared in a forked child, as Celery clears its own buffers.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from celery import states
from celery.backends.rpc import ResultConsumer, RPCBackend
from celery.result import task_join_will_block
from kombu.common import maybe_declare
from kombu.utils.compat import register_after_fork  # type: ignore[attr-defined]  # as rpc.py

from ..compat import rpc_records_consumer_states
from .known_states import KnownStates
from .retry_policy import PUBLISH_RETRY_POLICY, in_bounded_publish

__all__ = ["RECORD_LIMIT", "RPCResultBackend", "wants_rpc_backend"]

#: Ids whose last state (or queued mark) one thread's backend remembers.
RECORD_LIMIT = 10_000


def wants_rpc_backend(url: str) -> bool:
    """Whether ``url`` selects Celery's rpc backend."""
    return url.startswith("rpc://")


class _RecordingConsumer(ResultConsumer):  # type: ignore[misc]
    """The reply-queue consumer, telling the backend every state it drains."""

    def on_state_change(self, meta: Any, message: Any) -> None:
        super().on_state_change(meta, message)
        if isinstance(self.backend, RPCResultBackend) and isinstance(meta, dict):
            self.backend.record_payload(meta)


class RPCResultBackend(KnownStates, RPCBackend):  # type: ignore[misc]
    """Celery's rpc backend; states read once stay readable, queued ids are known."""

    ResultConsumer = _RecordingConsumer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._record_lock = threading.Lock()
        self._seen: OrderedDict[str, dict[str, Any] | None] = OrderedDict()
        self._hooked = rpc_records_consumer_states()
        if register_after_fork is not None:
            register_after_fork(self, _clear_record)

    def on_task_call(self, producer: Any, task_id: str) -> None:
        """Declare the reply queue before a publish, as Celery does; in a ``delay_task``
        publish give up as the publish does (Celery's declare retries for ever, so a
        broker that stopped answering hung ``delay_task`` for good)."""
        if not in_bounded_publish():
            super().on_task_call(producer, task_id)
        elif not task_join_will_block():
            maybe_declare(self.binding(producer.channel), retry=True, **PUBLISH_RETRY_POLICY)

    # ----------------------------------------------------------------- record

    def record_payload(self, payload: dict[str, Any]) -> None:
        """Keep a state message's payload (as it came off the reply queue)."""
        task_id = payload.get("task_id")
        if not self._hooked or not isinstance(task_id, str) or "status" not in payload:
            return
        self._remember(task_id, self.meta_from_decoded(dict(payload)))

    def _remember(self, task_id: str, meta: dict[str, Any] | None) -> None:
        with self._record_lock:
            known = self._seen.get(task_id)
            if known is not None and known["status"] in states.READY_STATES:
                return  # final: later messages for the id are stale copies
            if meta is None and task_id in self._seen:
                return  # a queued mark never hides a state
            self._seen[task_id] = meta
            self._seen.move_to_end(task_id)
            while len(self._seen) > RECORD_LIMIT:
                self._seen.popitem(last=False)

    def _recorded(self, task_id: str) -> tuple[bool, dict[str, Any] | None]:
        with self._record_lock:
            if task_id not in self._seen:
                return False, None
            return True, self._seen[task_id]

    # ----------------------------------------------------------------- KnownStates

    def mark_queued(self, task_id: str) -> None:
        # Without the consumer hook a state drained by AsyncResult.get() would
        # leave the id PENDING for good: then queued ids stay unmarked.
        if self._hooked:
            self._remember(task_id, None)

    def read_state(self, task_id: str) -> dict[str, Any] | None:
        _, known = self._recorded(task_id)
        if known is not None and known["status"] in states.READY_STATES:
            return known  # no round trip: a final state never changes
        meta: dict[str, Any] = self.get_task_meta(task_id)
        if "task_id" in meta and (self._hooked or meta["status"] in states.READY_STATES):
            self._remember(task_id, meta)
        marked, known = self._recorded(task_id)
        if known is not None:
            return known
        if "task_id" in meta:
            return meta
        if marked:
            return {
                "task_id": task_id,
                "status": states.PENDING,
                "result": None,
                "traceback": None,
                "date_done": None,
            }
        return None

    def forget(self, task_id: str) -> None:
        with self._record_lock:
            self._seen.pop(task_id, None)
        super().forget(task_id)


def _clear_record(backend: RPCResultBackend) -> None:
    with backend._record_lock:
        backend._seen.clear()
