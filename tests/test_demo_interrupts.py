"""Ctrl-C and SIGTERM reach the demo between publishes, never inside one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from csuite_async_obs.demo.interrupts import HeldInterrupts
from csuite_async_obs.servers.rabbitmq_server import RabbitMQServer

from .support import clean_env, wait_for


def _deliver(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.05)  # Python runs the handler here, in the main thread


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_inside_a_held_block_is_raised_when_it_ends(sig: int) -> None:
    finished = False
    with HeldInterrupts().installed() as interrupts:
        assert signal.getsignal(sig) is interrupts
        with pytest.raises(KeyboardInterrupt), interrupts.held():
            _deliver(sig)
            assert interrupts.pending
            finished = True
        assert finished
        assert not interrupts.pending
        with interrupts.held():  # the next block starts clean
            pass


def test_a_second_signal_is_raised_at_once_and_outside_a_block_none_is_held() -> None:
    with HeldInterrupts().installed() as interrupts:
        after_second: list[str] = []
        with pytest.raises(KeyboardInterrupt), interrupts.held():
            _deliver(signal.SIGINT)
            assert interrupts.pending
            _deliver(signal.SIGINT)
            after_second.append("the second signal was held too")
        assert after_second == []
        assert not interrupts.pending  # one interrupt for both
        with interrupts.held():
            pass
        with pytest.raises(KeyboardInterrupt):
            _deliver(signal.SIGINT)


def test_the_previous_handlers_come_back() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with HeldInterrupts().installed():
        pass
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_off_the_main_thread_nothing_is_installed() -> None:
    before = signal.getsignal(signal.SIGINT)
    seen: list[object] = []

    def run() -> None:
        with HeldInterrupts().installed():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=5)
    assert seen == [before]


# Publishes demo tasks on RabbitMQ as the demo does, while another thread sends
# SIGINT at random moments; each interrupt is caught and publishing goes on.  Cut
# mid-frame, a publish hangs the process in kombu's channel close (see
# csuite_async_obs.demo.interrupts); the watchdog then dumps the stacks and exits 3.
# One Ctrl-C at a time: the next signal waits until the main loop has handled the
# last one and is back inside its try.  Two signals in one publish are a second
# Ctrl-C, which is raised inside the publish by design (the unit tests above): a
# stalled publish on a loaded machine once took two, and the message it had
# already written was in the queue but not counted (CI: 467 published, the queue
# never showed 467).
_PUBLISHER = """
import faulthandler, os, random, signal, sys, threading, time
from csuite_async_obs.demo import tasks
from csuite_async_obs.demo.interrupts import HeldInterrupts
from csuite_async_obs.task_api.publishing import delay_task

faulthandler.dump_traceback_later(60, exit=True)
interrupts_wanted = int(sys.argv[1])
published = interrupted = 0
handled = threading.Event()

def interrupter():
    for _ in range(interrupts_wanted):
        time.sleep(random.uniform(0.005, 0.05))
        handled.clear()
        os.kill(os.getpid(), signal.SIGINT)
        if not handled.wait(30):
            return

with HeldInterrupts().installed() as held:
    with held.held():
        assert delay_task(tasks.send_email, "warm@example.com") is not None
        published += 1
    thread = threading.Thread(target=interrupter, daemon=True)
    thread.start()
    answered, running = False, True
    while running:
        # The loop inside the try: a signal on its back edge is caught too.
        try:
            while True:
                if answered:
                    answered = False
                    handled.set()
                if not thread.is_alive():
                    running = False
                    break
                with held.held():
                    result = delay_task(tasks.send_email, "a@example.com")
                    assert result is not None
                    published += 1
        except KeyboardInterrupt:
            interrupted += 1
            answered = True
print(published, interrupted)
"""


def test_interrupted_publishing_on_rabbitmq_never_hangs_and_loses_nothing(
    rabbitmq_vhost: str, rabbitmq_server: RabbitMQServer
) -> None:
    wanted = 40
    env = clean_env()
    env.update(CELERY_BROKER_URL=rabbitmq_vhost, CELERY_RESULT_BACKEND="rpc://")
    done = subprocess.run(
        [sys.executable, "-c", _PUBLISHER, str(wanted)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    published, interrupted = map(int, done.stdout.split())
    # Every signal was caught once, wherever it landed.
    assert interrupted == wanted, done.stdout
    vhost = rabbitmq_vhost.rsplit("/", 1)[1]

    def queued() -> int:
        return rabbitmq_server.list_queues(vhost).get("celery", {}).get("messages_ready", -1)

    # Every publish that returned is in the queue, and no other: none was cut in half.
    try:
        wait_for(lambda: queued() == published, 10, message=f"{published} messages in the queue")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}: it holds {queued()} ({interrupted} interrupts)") from None
    time.sleep(0.5)
    assert queued() == published
