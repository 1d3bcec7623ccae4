"""celery beat's metrics against ground truth: a real beat, a real worker, real Redis.

The truth is outside the instrumentation: the Redis counter each run of
``tests.incr`` increments, the worker's own counts, the messages in the broker's
queue, beat's log lines ("Sending due task", "Message Error"), the shelve beat
saves, and Celery's schedules.  Counts are compared at a quiet moment: just after
a send, with no entry due for a second (see :func:`_settled`).

The last part runs without a broker process: a Celery app on ``memory://`` and a
``celery.beat.Scheduler`` instrumented in the test process.
"""

from __future__ import annotations

import json
import math
import re
import shelve
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from celery import Celery
from celery.beat import BeatLazyFunc, SchedulingError
from celery.beat import Scheduler as CeleryScheduler
from celery.schedules import BaseSchedule, crontab, solar
from celery.schedules import schedule as interval_schedule
from prometheus_client import CollectorRegistry, enable_created_metrics

from csuite_async_obs import instrument, uninstrument
from csuite_async_obs.instrumentation.beat_schedule import entry_times
from csuite_async_obs.instrumentation.instrument import Instrumentation
from csuite_async_obs.servers.redis_server import RedisServer, free_port

from .support import PYTHON, ROOT, Beat, Samples, base_env, http_status, wait_for

T = TypeVar("T")

INTERVAL = 2.0
KEYS = {"every-5s": "periodic:every-5s", "every-minute": "periodic:every-minute"}
SENT = "celery_beat_entry_sent_total"
ERRORS = "celery_beat_entry_send_errors_total"
LAST_SENT = "celery_beat_entry_last_sent_timestamp_seconds"
NEXT_DUE = "celery_beat_entry_next_due_timestamp_seconds"
PERIOD = "celery_beat_entry_period_seconds"
SCHEDULERS = {
    "persistent": "celery.beat:PersistentScheduler",
    "memory": "celery.beat:Scheduler",
    "reloading": "tests.periodic_app:ReloadingScheduler",
    "redbeat": "redbeat.RedBeatScheduler",
}
_LOG_TIME = r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}): \w+/MainProcess\] "


# --------------------------------------------------------------------- helpers


def _log_time(date: str, millis: str) -> float:
    # Celery's log times are local and cut to the millisecond.
    return datetime.strptime(date, "%Y-%m-%d %H:%M:%S").timestamp() + int(millis) / 1000


def _sends(log: str, entry: str) -> list[float]:
    """Times of beat's "Sending due task <entry>" lines."""
    pattern = re.compile(_LOG_TIME + r"(?:Scheduler: )?Sending due task (\S+) \(", re.M)
    return [_log_time(d, ms) for d, ms, name in pattern.findall(log) if name == entry]


def _message_errors(log: str, entry: str) -> int:
    """Beat's "Message Error" lines for ``entry`` (a send that raised)."""
    pattern = re.compile(_LOG_TIME + r".*Message Error: Couldn't apply scheduled task (\S+):", re.M)
    return sum(1 for _d, _ms, name in pattern.findall(log) if name == entry)


def _value(s: Samples, metric: str, entry: str) -> float | None:
    found = s.find(metric, entry=entry)
    assert len(found) <= 1, found
    return found[0].value if found else None


def _counts(s: Samples, metric: str = SENT) -> dict[str, float]:
    return {entry: _value(s, metric, entry) or 0.0 for entry in KEYS}


def _redis_counts(client: redis.Redis) -> dict[str, int]:
    return {entry: int(client.get(key) or 0) for entry, key in KEYS.items()}


def _settled(
    beat: Beat,
    truth: Callable[[], T],
    agrees: Callable[[Samples, T], bool],
    timeout: float = 25.0,
    margin: float | None = 1.0,
) -> tuple[Samples, T]:
    """A scrape of beat and ``truth()`` taken together at a quiet moment.

    Quiet: every entry's next due time is ``margin`` s away at the scrape (or
    more than a second past: a failed send's, kept until the next one), beat
    scrapes the same sends and failed sends again after ``truth()`` was read (no
    send in between), and ``truth()`` has caught up with the scrape before the
    next due time (a worker runs a task some milliseconds after beat sends it).
    ``margin=None`` while sends fail (the exported next due times stay at the first
    failed attempt): then only the two scrapes around ``truth()`` must agree.
    At the deadline, the last pair read is returned for the caller's asserts.
    """
    deadline = time.monotonic() + timeout
    last: tuple[Samples, T] | None = None
    while time.monotonic() < deadline:
        first = beat.scrape()
        if margin is None:
            window_end = time.time() + 0.5
        else:
            dues = [s.value for s in first.find(NEXT_DUE)]
            now = time.time()
            # A due time more than a second past is an entry whose send failed: its
            # next send is a period later, and the two scrapes below would see it.
            upcoming = [due for due in dues if due > now - 1.0]
            if not dues or (upcoming and min(upcoming) - now < margin):
                time.sleep(0.05)
                continue
            window_end = min(upcoming) - 0.2 if upcoming else now + 0.5
        while True:
            value = truth()
            last = (first, value)
            if agrees(first, value) or time.time() >= window_end:
                break
            time.sleep(0.05)
        second = beat.scrape()
        quiet = all(_counts(first, metric) == _counts(second, metric) for metric in (SENT, ERRORS))
        if quiet and time.time() < window_end and agrees(first, value):
            return first, value
    assert last is not None, "beat never had a quiet moment"
    return last


def _promtool(text: str) -> None:
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def _no_instrumentation_errors(s: Samples) -> None:
    errors = s.find("csuite_async_obs_instrumentation_errors_total")
    assert errors and sum(e.value for e in errors) == 0, [e for e in errors if e.value]


@pytest.fixture()
def beats(tmp_path: Path) -> Iterator[Callable[..., Beat]]:
    started: list[Beat] = []

    def start(env: dict[str, str], wait: bool = True, **kwargs: Any) -> Beat:
        beat = Beat(env, tmp_path, **kwargs)
        started.append(beat)
        return beat.start(wait=wait)

    yield start
    for beat in started:
        beat.stop()


def _env(worker_env: dict[str, str], **extra: str) -> dict[str, str]:
    return dict(worker_env, PERIODIC_INTERVAL=str(INTERVAL), **extra)


# ----------------------------------------------------- every scheduler, end to end


@pytest.mark.parametrize("scheduler", list(SCHEDULERS), ids=list(SCHEDULERS))
def test_beat_metrics_match_the_runs(
    scheduler: str,
    workers: Any,
    worker_env: dict[str, str],
    redis_client: redis.Redis,
    beats: Callable[..., Beat],
) -> None:
    env = _env(
        worker_env,
        PERIODIC_SCHEDULER=SCHEDULERS[scheduler],
        PERIODIC_REDBEAT_URL=worker_env["CELERY_BROKER_URL"],
    )
    worker = workers(pool="solo", wait=False)
    beat = beats(env)
    worker.wait_ready()
    wait_for(lambda: int(redis_client.get(KEYS["every-5s"]) or 0) >= 2, 30, message="two runs")

    def truth() -> tuple[dict[str, int], Samples]:
        return _redis_counts(redis_client), worker.scrape()

    def agrees(s: Samples, t: tuple[dict[str, int], Samples]) -> bool:
        runs, w = t
        succeeded = w.value("celery_task_succeeded_total", name="tests.incr", queue_name="celery")
        return _counts(s) == runs and succeeded == sum(runs.values())

    s, (runs, w) = _settled(beat, truth, agrees)
    now = time.time()
    log = beat.log()

    # Sends: beat's count, the runs the task left in Redis, the worker's count, the log.
    assert _counts(s) == runs
    assert runs["every-5s"] >= 2
    assert w.value("celery_task_succeeded_total", name="tests.incr", queue_name="celery") == sum(
        runs.values()
    )
    assert {entry: len(_sends(log, entry)) for entry in KEYS} == runs
    assert _counts(s, ERRORS) == {"every-5s": 0, "every-minute": 0}
    assert s.sum("celery_task_sent_total") == sum(runs.values())

    # Last send: just after its log line; 0 for an entry never sent.
    for entry in KEYS:
        last_sent = _value(s, LAST_SENT, entry)
        if runs[entry]:
            assert last_sent is not None
            assert 0 <= last_sent - _sends(log, entry)[-1] < 1.0, entry
        else:
            assert last_sent == 0, entry

    # Next due and period, from the schedules.
    last_sent = _value(s, LAST_SENT, "every-5s")
    next_due = _value(s, NEXT_DUE, "every-5s")
    assert last_sent is not None and next_due is not None
    assert abs(next_due - (last_sent + INTERVAL)) <= 0.05
    if scheduler == "redbeat":
        # RedBeat's own last_run_at, as it stored it in Redis.
        from redbeat.decoder import RedBeatJSONDecoder

        meta = json.loads(redis_client.hget("redbeat:every-5s", "meta"), cls=RedBeatJSONDecoder)
        assert abs(next_due - (meta["last_run_at"].timestamp() + INTERVAL)) <= 0.002
    assert _value(s, PERIOD, "every-5s") == INTERVAL
    cron_due = _value(s, NEXT_DUE, "every-minute")
    assert cron_due is not None and cron_due % 60 == 0 and 0 < cron_due - now <= 60
    assert _value(s, PERIOD, "every-minute") == 60

    assert s.value("celery_beat_up") == 1
    assert s.value("celery_beat_entries") == 2
    tick = s.value("celery_beat_last_tick_timestamp_seconds")
    assert tick is not None and 0 <= now - tick <= INTERVAL + 0.5

    # The worker's last success: the last run, after beat sent it.
    last_send = max(t for entry in KEYS for t in _sends(log, entry))
    success = w.value("celery_task_last_success_timestamp_seconds", name="tests.incr")
    assert success is not None and last_send <= success <= time.time()
    assert w.value("celery_task_last_failure_timestamp_seconds", name="tests.incr") == 0

    _no_instrumentation_errors(s)
    _no_instrumentation_errors(w)
    _promtool(s.text)
    assert http_status(beat.url + "/healthz") == 200


def test_failing_entry_sets_the_last_failure(
    workers: Any,
    worker_env: dict[str, str],
    redis_client: redis.Redis,
    beats: Callable[..., Beat],
) -> None:
    worker = workers(pool="solo", wait=False)
    beat = beats(_env(worker_env, PERIODIC_FAIL="1"))
    worker.wait_ready()

    def failures() -> float:
        return worker.scrape().sum("celery_task_failed_total", name="tests.boom")

    wait_for(lambda: failures() >= 2, 30, message="two failed runs")
    s, w = _settled(
        beat,
        worker.scrape,
        lambda s, w: (
            w.sum("celery_task_failed_total", name="tests.boom") == _value(s, SENT, "every-5s")
        ),
    )
    sends = _sends(beat.log(), "every-5s")
    assert w.sum("celery_task_failed_total", name="tests.boom") == _value(s, SENT, "every-5s")
    assert len(sends) == _value(s, SENT, "every-5s")
    failure = w.value("celery_task_last_failure_timestamp_seconds", name="tests.boom")
    assert failure is not None and 0 <= failure - sends[-1] < 1.0
    assert w.value("celery_task_last_success_timestamp_seconds", name="tests.boom") == 0
    _no_instrumentation_errors(s)
    _no_instrumentation_errors(w)


def test_restart_reads_the_last_send_back_from_the_schedule_file(
    worker_env: dict[str, str], tmp_path: Path, beats: Callable[..., Beat]
) -> None:
    interval = 4.0  # room for the second beat to start before its first send
    env = dict(worker_env, PERIODIC_INTERVAL=str(interval))
    schedule_file = tmp_path / "restart-schedule"
    first = beats(env, schedule_file=schedule_file)
    # The second send: Celery stamps an entry's last_run_at before it sends, and
    # before the first send it connects to the broker too (some milliseconds).
    wait_for(lambda: _value(first.scrape(), SENT, "every-5s") == 2, 20, message="two sends")
    before = first.scrape()
    assert first.stop(signal.SIGTERM) == 0

    # What beat saved on SIGTERM.
    with shelve.open(str(schedule_file), flag="r") as store:
        stored = store["entries"]["every-5s"].last_run_at.timestamp()
    last_before = _value(before, LAST_SENT, "every-5s")
    assert last_before is not None and abs(last_before - stored) < 0.01

    second = beats(env, schedule_file=schedule_file)
    s = second.scrape()
    now = time.time()
    log = second.log()
    # A crontab's minute may come while the second beat starts: it sends that one.
    quiet = [entry for entry in KEYS if not _sends(log, entry)]
    assert "every-5s" in quiet, log
    for entry in quiet:
        # Nothing sent by this process yet; the last send read back from the shelve.
        assert _value(s, SENT, entry) == 0, entry
        was, now_is = _value(before, LAST_SENT, entry), _value(s, LAST_SENT, entry)
        assert was is not None and now_is is not None
        assert abs(now_is - was) < 0.01, entry
    assert _value(s, LAST_SENT, "every-5s") == pytest.approx(stored, abs=0.001)
    # No false overdue: due one interval after the stored send, not at once.
    next_due = _value(s, NEXT_DUE, "every-5s")
    assert next_due is not None
    assert abs(next_due - (stored + interval)) <= 0.05
    assert next_due - now > -0.5 and next_due - now <= interval

    # And beat sends it then.
    wait_for(lambda: _value(second.scrape(), SENT, "every-5s") == 1, 15, message="resumed send")
    assert -0.1 <= _sends(second.log(), "every-5s")[0] - next_due < 1.0
    _no_instrumentation_errors(second.scrape())


def test_broker_down_counts_failed_sends_and_beat_stays_up(
    redis_server: RedisServer, beats: Callable[..., Beat]
) -> None:
    broker = RedisServer().start()
    try:
        env = base_env(f"{broker.url}/0", f"{redis_server.url}/1", PERIODIC_INTERVAL=str(INTERVAL))
        beat = beats(env)
        client = redis.Redis(port=broker.port)

        def queued() -> int:
            return int(client.llen("celery"))

        wait_for(lambda: _value(beat.scrape(), SENT, "every-5s") == 1, 20, message="a send")
        s, n = _settled(beat, queued, lambda s, n: sum(_counts(s).values()) == n)
        assert sum(_counts(s).values()) == n
        sent_before = _counts(s)
        client.close()
        broker.stop()

        def failed() -> float:
            return _value(beat.scrape(), ERRORS, "every-5s") or 0

        wait_for(lambda: failed() >= 1, 20, message="a failed send")
        first = beat.scrape()
        tick = first.value("celery_beat_last_tick_timestamp_seconds")
        wait_for(lambda: failed() >= 2, 20, message="a second failed send")
        # Failed sends do not move the next due time: it stays at the first failed
        # attempt (Celery's own schedule moved on), in the past: the entry is overdue.
        due = _value(first, NEXT_DUE, "every-5s")
        assert _value(beat.scrape(), NEXT_DUE, "every-5s") == due
        assert due is not None and due < time.time() - INTERVAL
        s, log = _settled(
            beat,
            beat.log,
            lambda s, log: all(_message_errors(log, e) == _counts(s, ERRORS)[e] for e in KEYS),
            margin=None,
        )
        assert {e: _message_errors(log, e) for e in KEYS} == _counts(s, ERRORS)
        assert _counts(s) == sent_before
        later = s.value("celery_beat_last_tick_timestamp_seconds")
        assert tick is not None and later is not None and later > tick
        assert s.value("celery_beat_up") == 1
        assert http_status(beat.url + "/healthz") == 200

        broker.start()
        client = redis.Redis(port=broker.port)
        wait_for(
            lambda: _value(beat.scrape(), SENT, "every-5s") >= sent_before["every-5s"] + 2,
            25,
            message="sends after the broker came back",
        )
        s, n = _settled(
            beat,
            queued,
            lambda s, n: sum(_counts(s).values()) - sum(sent_before.values()) == n,
        )
        # Every send counted since the broker came back is a message in its queue.
        assert sum(_counts(s).values()) - sum(sent_before.values()) == n
        # Back on Celery's schedule: the next due is ahead again.
        assert (_value(s, NEXT_DUE, "every-5s") or 0) > time.time() - 1
        assert {e: _message_errors(beat.log(), e) for e in KEYS} == _counts(s, ERRORS)
        _no_instrumentation_errors(s)
        client.close()
    finally:
        broker.stop()


# ------------------------------------------------------------------------ flags


def test_metrics_port_flag_wins_over_the_variable(
    worker_env: dict[str, str], beats: Callable[..., Beat]
) -> None:
    other = free_port()
    beat = beats(_env(worker_env, CSUITE_METRICS_PORT=str(other)))
    assert http_status(beat.url + "/healthz") == 200
    with pytest.raises(OSError):
        http_status(f"http://127.0.0.1:{other}/healthz", timeout=1)


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--metrics-max-beat-entries", "0"), ("--metrics-port", "abc")],
)
def test_bad_flag_stops_beat_with_one_line(
    flag: str, value: str, worker_env: dict[str, str], tmp_path: Path
) -> None:
    cmd = [PYTHON, "-m", "celery", "-A", "tests.periodic_app", "beat", "-s",
           str(tmp_path / "schedule"), flag, value]  # fmt: skip
    result = subprocess.run(
        cmd, env=_env(worker_env), cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    named = [line for line in out.splitlines() if flag in line]
    assert len(named) == 1, out
    assert f"csuite-async-obs: {flag}={value!r} is not valid" in named[0]
    assert "Traceback" not in out
    assert "Sending due task" not in out


# --------------------------------------------------- in-process, without a broker


@pytest.fixture()
def created_metrics_back() -> Iterator[None]:
    # beat_started turns the _created series off for the process, as beat's own.
    yield
    enable_created_metrics()


class NotEstimable(BaseSchedule):
    """A schedule of the user's own: ``is_due`` only, no ``remaining_estimate``."""

    def __init__(self, next_check: float, due: bool = False) -> None:
        super().__init__()
        self.next_check = next_check
        self.due = due

    def is_due(self, last_run_at: datetime) -> tuple[bool, float]:  # type: ignore[override]
        return self.due, self.next_check

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NotEstimable) and vars(other) == vars(self)

    __hash__ = None  # type: ignore[assignment]


class Broken(interval_schedule):
    """An interval whose estimate raises (a bug in a schedule of the user's own)."""

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        raise RuntimeError("broken schedule")


def _raise_lazy() -> None:
    raise LookupError("lazy argument failed")


def _scheduler(
    schedule: dict[str, dict[str, Any]], **options: Any
) -> tuple[Celery, Instrumentation, CeleryScheduler]:
    app = Celery("beat-unit", broker_url="memory://", set_as_current=False)
    app.conf.update(beat_schedule=schedule, result_expires=None, timezone="UTC")
    instrumentation = instrument(app, registry=CollectorRegistry(), metrics_port=0, **options)
    return app, instrumentation, CeleryScheduler(app, lazy=False)


def _get(inst: Instrumentation, metric: str, **labels: str) -> float | None:
    return inst.registry.get_sample_value(metric, labels)


def _ts(moment: datetime) -> float:
    return moment.timestamp()


def test_entry_times_of_every_kind_of_schedule(created_metrics_back: None) -> None:
    import ephem

    now = time.time()
    last = datetime.fromtimestamp(now - 10, tz=timezone.utc)
    paris = solar("sunrise", 48.8566, 2.3522)
    app, inst, scheduler = _scheduler(
        {
            "interval": {"task": "t.interval", "schedule": 3600.0, "last_run_at": last,
                         "total_run_count": 3},
            "cron": {"task": "t.cron", "schedule": crontab(minute="*/5"), "last_run_at": last,
                     "total_run_count": 1},
            "solar": {"task": "t.solar", "schedule": paris, "last_run_at": last,
                      "total_run_count": 1},
            "custom": {"task": "t.custom", "schedule": NotEstimable(7.0), "last_run_at": last,
                       "total_run_count": 1},
            "disabled": {"task": "t.disabled", "schedule": 60.0, "last_run_at": last,
                         "total_run_count": 2},
            "never": {"task": "t.never", "schedule": 3600.0},
        }
    )  # fmt: skip
    scheduler.schedule["disabled"].enabled = False  # type: ignore[attr-defined]
    created = _ts(scheduler.schedule["never"].last_run_at)
    before = time.time()
    inst.beat_started(scheduler)
    # A send in this tick (a five-minute mark within the last run's 10 s sends the
    # crontab) rebuilds the snapshot: the custom entry's next check is then the tick's.
    scheduler.tick()
    after = time.time()
    last_ts = now - 10

    def times(name: str) -> Any:
        return entry_times(scheduler.schedule[name])

    def metric(metric: str, name: str) -> float | None:
        return _get(inst, metric, entry=name, task=f"t.{name}")

    # Interval: one period after the last run.
    t = times("interval")
    assert t.last_run == pytest.approx(last_ts, abs=1e-6)
    assert t.next_due == pytest.approx(last_ts + 3600, abs=1e-6)
    assert t.period == 3600
    assert metric(LAST_SENT, "interval") == pytest.approx(last_ts, abs=1e-6)
    assert metric(NEXT_DUE, "interval") == pytest.approx(last_ts + 3600, abs=1e-6)
    assert metric(PERIOD, "interval") == 3600

    # Crontab: the next multiple of five minutes after the last run, exactly (the
    # last run is the entry's own: a five-minute mark just passed sends it).
    expected = (math.floor(_ts(scheduler.schedule["cron"].last_run_at) / 300) + 1) * 300
    assert times("cron").next_due == expected
    assert times("cron").period == 300
    assert metric(NEXT_DUE, "cron") == expected
    assert metric(PERIOD, "cron") == 300

    # Solar: the next sunrise in Paris after the last run, as ephem computes it.
    observer = ephem.Observer()
    observer.lat, observer.lon, observer.elev = "48.8566", "2.3522", 0
    observer.horizon, observer.pressure = "-0:34", 0

    def sunrise_after(moment: float) -> float:
        start = ephem.Date(datetime.fromtimestamp(moment, tz=timezone.utc).replace(tzinfo=None))
        when = observer.next_rising(ephem.Sun(), start=start).datetime()
        return when.replace(tzinfo=timezone.utc).timestamp()

    sunrise = sunrise_after(last_ts)
    solar_due = metric(NEXT_DUE, "solar")
    assert solar_due == pytest.approx(sunrise, abs=0.001)
    solar_period = metric(PERIOD, "solar")
    assert solar_period == pytest.approx(sunrise_after(sunrise + 1) - sunrise, abs=0.002)
    assert abs(solar_period - 86400) < 600  # type: ignore[operator]

    # A schedule without remaining_estimate: is_due's next check, no period.
    custom_due = metric(NEXT_DUE, "custom")
    assert custom_due is not None and before + 7 <= custom_due <= after + 7
    assert metric(PERIOD, "custom") is None
    assert metric(LAST_SENT, "custom") == pytest.approx(last_ts, abs=1e-6)

    # Disabled: never due (no series), its last run and period still told.
    assert metric(NEXT_DUE, "disabled") is None
    assert times("disabled").next_due is None
    assert metric(LAST_SENT, "disabled") == pytest.approx(last_ts, abs=1e-6)
    assert metric(PERIOD, "disabled") == 60

    # Never sent: last sent 0, due one period after Celery created it.
    assert metric(LAST_SENT, "never") == 0
    assert metric(NEXT_DUE, "never") == pytest.approx(created + 3600, abs=1e-6)
    assert metric(SENT, "never") == 0

    assert _get(inst, "celery_beat_entries") == 6
    assert _get(inst, "celery_beat_up") == 1
    assert _get(inst, "csuite_async_obs_instrumentation_errors_total", hook="beat") == 0
    assert uninstrument(app)


def test_entries_past_the_cap_are_other(created_metrics_back: None) -> None:
    now = time.time()
    lasts = {name: now - 100 * (i + 1) for i, name in enumerate("abcd")}
    app, inst, scheduler = _scheduler(
        {
            name: {"task": "t.x", "schedule": 3600.0, "total_run_count": 1,
                   "last_run_at": datetime.fromtimestamp(at, tz=timezone.utc)}
            for name, at in lasts.items()
        },
        max_beat_entries=2,
    )  # fmt: skip
    inst.beat_started(scheduler)
    scheduler.tick()
    labels = {
        s.labels["entry"]
        for family in inst.registry.collect()
        if family.name == NEXT_DUE
        for s in family.samples
    }
    kept = labels - {"other"}
    assert len(kept) == 2 and kept <= set(lasts) and "other" in labels
    folded = set(lasts) - kept
    assert _get(inst, "celery_beat_entries") == 4
    # The first snapshot folded two entries: two overflows.
    assert _get(inst, "csuite_async_obs_label_overflow_total", label="entry") == 2
    for name in kept:
        assert _get(inst, LAST_SENT, entry=name, task="t.x") == pytest.approx(lasts[name])
    # "other": the latest send and the soonest due time of the entries folded into it.
    assert _get(inst, LAST_SENT, entry="other", task="t.x") == pytest.approx(
        max(lasts[n] for n in folded)
    )
    assert _get(inst, NEXT_DUE, entry="other", task="t.x") == pytest.approx(
        min(lasts[n] for n in folded) + 3600, abs=1e-6
    )
    # A send of a folded entry is counted under "other" (one more overflow).
    scheduler.apply_async(scheduler.schedule[sorted(folded)[0]])
    assert _get(inst, SENT, entry="other", task="t.x") == 1
    assert _get(inst, "csuite_async_obs_label_overflow_total", label="entry") == 3
    # Snapshots count a folded entry once, not once each: nothing more without a send.
    assert inst.beat is not None
    for _ in range(3):
        inst.beat.refresh(force=True)
    assert _get(inst, "csuite_async_obs_label_overflow_total", label="entry") == 3
    assert _get(inst, "csuite_async_obs_instrumentation_errors_total", hook="beat") == 0
    assert uninstrument(app)


def _celery_version() -> tuple[int, ...]:
    import celery

    return tuple(int(part) for part in celery.__version__.split(".")[:2])


def test_an_odd_entry_costs_only_its_own_row(created_metrics_back: None) -> None:
    last = datetime.fromtimestamp(time.time() - 10, tz=timezone.utc)
    app, inst, scheduler = _scheduler(
        {
            "good": {"task": "t.good", "schedule": 3600.0, "last_run_at": last,
                     "total_run_count": 1},
            "broken": {"task": "t.broken", "schedule": Broken(timedelta(seconds=30)),
                       "last_run_at": last, "total_run_count": 1},
        }
    )  # fmt: skip
    inst.beat_started(scheduler)
    # Celery 5.7 logs the broken entry and goes on; before, its own tick raises the
    # schedule's error (the instrumentation changes neither: it is not ours).
    try:
        assert scheduler.tick() > 0
    except RuntimeError as exc:
        assert str(exc) == "broken schedule"
        assert _celery_version() < (5, 7)
    assert _get(inst, "csuite_async_obs_instrumentation_errors_total", hook="beat") == 1
    for metric in (LAST_SENT, NEXT_DUE, PERIOD, SENT, ERRORS):
        assert _get(inst, metric, entry="broken", task="t.broken") is None, metric
    assert _get(inst, NEXT_DUE, entry="good", task="t.good") == pytest.approx(
        _ts(last) + 3600, abs=1e-6
    )
    assert _get(inst, "celery_beat_entries") == 2
    assert uninstrument(app)


def test_a_failed_send_is_counted_and_raised_unchanged(created_metrics_back: None) -> None:
    long_ago = datetime.fromtimestamp(time.time() - 7200, tz=timezone.utc)
    app, inst, scheduler = _scheduler(
        {
            "failing": {"task": "t.failing", "schedule": 3600.0, "last_run_at": long_ago,
                        "total_run_count": 1, "args": (BeatLazyFunc(_raise_lazy),)},
            "fine": {"task": "t.fine", "schedule": 3600.0, "last_run_at": long_ago,
                     "total_run_count": 1},
        }
    )  # fmt: skip
    inst.beat_started(scheduler)
    # Both are due: Celery's tick sends one per call, logging the failed one.
    assert scheduler.tick() == 0
    assert scheduler.tick() == 0
    assert _get(inst, ERRORS, entry="failing", task="t.failing") == 1
    assert _get(inst, SENT, entry="failing", task="t.failing") == 0
    assert _get(inst, SENT, entry="fine", task="t.fine") == 1
    assert _get(inst, ERRORS, entry="fine", task="t.fine") == 0

    with pytest.raises(SchedulingError) as raised:
        scheduler.apply_async(scheduler.schedule["failing"])
    assert str(raised.value) == "Couldn't apply scheduled task failing: lazy argument failed"
    # Where Celery raised it, with its cause: the innermost frame is the argument's.
    assert raised.traceback[-1].name == "_raise_lazy"
    assert _get(inst, ERRORS, entry="failing", task="t.failing") == 2
    assert _get(inst, "csuite_async_obs_instrumentation_errors_total", hook="beat") == 0
    assert uninstrument(app)


def test_uninstrument_gives_the_scheduler_its_methods_back(created_metrics_back: None) -> None:
    app, inst, scheduler = _scheduler({"x": {"task": "t.x", "schedule": 3600.0}})
    inst.beat_started(scheduler)
    assert all(name in vars(scheduler) for name in ("apply_async", "tick", "close"))
    assert uninstrument(app)
    for name in ("apply_async", "tick", "close"):
        assert name not in vars(scheduler), name
        assert getattr(scheduler, name).__func__ is getattr(CeleryScheduler, name)


def test_uninstrument_keeps_a_wrapper_installed_before(created_metrics_back: None) -> None:
    app, inst, scheduler = _scheduler({"x": {"task": "t.x", "schedule": 3600.0}})

    def own_tick(*args: Any, **kwargs: Any) -> float:  # someone else's, on the instance
        return float(CeleryScheduler.tick(scheduler, *args, **kwargs))

    scheduler.tick = own_tick  # type: ignore[method-assign]
    inst.beat_started(scheduler)
    assert scheduler.tick is not own_tick
    scheduler.tick()
    assert uninstrument(app)
    assert scheduler.tick is own_tick
    assert "apply_async" not in vars(scheduler)
