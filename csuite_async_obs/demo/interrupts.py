"""Ctrl-C and SIGTERM for the demo: never in the middle of a publish.

A ``KeyboardInterrupt`` raised while py-amqp is writing a frame leaves half of
it on the socket.  kombu then closes the channel and waits for RabbitMQ's
``Channel.CloseOk``, which never comes: the broker is still reading the cut
frame, and the socket has no read timeout, so the process hangs for good.  The
demo therefore lets the publish under way finish and raises the interrupt right
after it.  A second signal while one is held is raised at once, so that a
publish that cannot finish still gives way to a second Ctrl-C.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["STOP_SIGNALS", "HeldInterrupts"]

#: The signals that stop the demo.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class HeldInterrupts:
    """A SIGINT/SIGTERM handler that defers ``KeyboardInterrupt`` out of :meth:`held` blocks."""

    def __init__(self) -> None:
        self._holding = False
        self._pending = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self._holding and not self._pending:
            self._pending = True
            return
        self._pending = False  # this one interrupt answers both signals
        raise KeyboardInterrupt

    @property
    def pending(self) -> bool:
        """A signal arrived inside the current :meth:`held` block and waits for its end."""
        return self._pending

    @contextmanager
    def held(self) -> Iterator[None]:
        """Run the block whole; a signal received meanwhile is raised when it ends."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        if self._pending:
            self._pending = False
            raise KeyboardInterrupt

    @contextmanager
    def installed(self, signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[HeldInterrupts]:
        """Be the handler of ``signals`` for the block (a no-op off the main thread,
        where Python cannot install signal handlers)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self) for sig in signals}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
