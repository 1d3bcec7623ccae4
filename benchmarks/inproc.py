"""In-process measurements, each run in a fresh subprocess: ``python -m benchmarks.inproc NAME``.

* ``hookpath`` -- the package's per-task work in a worker's main process, without
  worker noise: real Celery ``Request`` objects built from a real task message
  (the bytes a worker reads from Redis, decoded by a real kombu channel), driven
  the way the pool drives them -- ``__init__``, ``on_accepted(pid, t)``,
  ``on_success((0, retval, runtime))`` -- once with Celery's plain request
  class and once with the package's; the difference is the package's cost.
  The two classes alternate in blocks, and the difference is taken per block
  pair.  The publish hooks (``before_task_publish`` / ``after_task_publish``
  handlers) are timed the same way, and a breakdown times the metric updates.
* ``publish`` -- ``delay_task`` latency with and without the package's publish
  hook (signals disconnected), alternating blocks; against Redis (the latency a
  caller sees) and against kombu's in-memory transport with results disabled
  (no network: the hook's share stands out of the noise).
* ``queuedepth`` -- one queue-depth poll of 200 queues x 4 priority steps
  (every queue holds real task messages; a quarter use the priority sub-lists),
  through the package's ``QueueDepthPoller``.
* ``rabbitmqdepth`` -- one read of 200 queues of a RabbitMQ vhost (each holding
  1 to 7 messages with the AMQP ``timestamp`` the package sets at publish) on a
  private ``rabbitmq-server`` node: the management API reader (one request for
  every queue) against the passive-declare fallback (one round trip per queue);
  reads whose lengths all equal the published counts are counted.
* ``render`` -- the text render of ``--names`` task names (default profile), with the
  values in the package's value store and, forced off (``CSUITE_COMPAT_FALLBACKS=
  value_store``), in prometheus_client's own value objects: ``--renders`` renders with
  nothing changed since the last, with 10 tasks run between two, and with every name
  run between two; level-1 gzip of the body; every render's samples compared with
  ``generate_latest`` of the same registry.

Each prints one JSON object on stdout.  A subprocess per measurement keeps the
global Celery signal handlers of one from running in another.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .stats import bootstrap_median_diff, percentile

__all__ = ["main"]


def _library(filename: str) -> str:
    """Which library a profiled function belongs to, from its file name."""
    if filename.startswith("~") or filename.startswith("<"):
        return "builtins (C)"
    parts = filename.replace("\\", "/").split("/")
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1]
    for name in ("csuite_async_obs", "benchmarks"):
        if name in parts:
            return name
    return "stdlib"


def profile_shares(fn: Callable[[], Any]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Share of own (``tottime``) time per library while running ``fn`` under cProfile.

    Also returns every function, most own time first (cProfile inflates the
    cost of small functions; read the shares, not the absolute times).
    """
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    totals: dict[str, float] = {}
    functions: list[dict[str, Any]] = []
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    for (filename, line, name), (_cc, calls, tottime, _ct, _callers) in stats.items():
        lib = _library(filename)
        totals[lib] = totals.get(lib, 0.0) + tottime
        functions.append(
            {
                "library": lib,
                "function": f"{Path(filename).name}:{line}({name})",
                "calls": calls,
                "tottime": tottime,
            }
        )
    whole = sum(totals.values()) or 1.0
    functions.sort(key=lambda f: -f["tottime"])
    for f in functions:
        f["share"] = f.pop("tottime") / whole
    shares = {
        k: v / whole for k, v in sorted(totals.items(), key=lambda kv: -kv[1]) if v / whole >= 0.01
    }
    return shares, functions


def _fresh(payload: dict[str, Any], now: float) -> dict[str, Any]:
    """A copy of a raw kombu message with new ids and a publish stamp of ``now``."""
    message: dict[str, Any] = json.loads(json.dumps(payload))
    task_id = str(uuid.uuid4())
    message["headers"]["id"] = message["headers"]["root_id"] = task_id
    message["properties"]["correlation_id"] = task_id
    message["properties"]["delivery_tag"] = str(uuid.uuid4())
    if "csuite_published_at" in message["headers"]:
        message["headers"]["csuite_published_at"] = now
    return message


def hookpath(raw_message: str, tasks: int, blocks: int) -> dict[str, Any]:
    from celery.concurrency.solo import TaskPool
    from celery.utils.imports import symbol_by_name
    from celery.worker.request import Request, create_request_cls
    from kombu.connection import Connection

    from csuite_async_obs import instrument

    from .apps import make_app

    app = make_app("bench_hookpath")
    app.conf.broker_url = "memory://"
    instrumentation = instrument(app, metrics_port=0, queue_depth=False)
    task = app.tasks["bench.noop"]
    pool = TaskPool()
    hostname = "hookpath@bench"
    plain_cls = create_request_cls(Request, task, pool, hostname, None, app=app)
    # What the worker's MetricsStep does at start-up (public Instrumentation API).
    from prometheus_client import disable_created_metrics

    disable_created_metrics()
    instrumentation.install_request_classes()
    instrumentation.hooks.prime()
    obs_cls = create_request_cls(symbol_by_name(task.Request), task, pool, hostname, None, app=app)

    conn = Connection("memory://")
    channel = conn.channel()
    payload = json.loads(raw_message)
    pid = os.getpid()
    utc = app.uses_utc_timezone()
    monotonic = time.monotonic

    def lifecycle(cls: type[Request], messages: list[Any]) -> None:
        for message in messages:
            req = cls(
                message,
                on_ack=message.ack_log_error,
                app=app,
                hostname=hostname,
                eventer=None,
                task=task,
                connection_errors=(),
                body=message.body,
                headers=message.headers,
                decoded=False,
                utc=utc,
            )
            req.on_accepted(pid, monotonic())
            req.on_success((0, None, 1e-5))

    block = max(1, tasks // blocks)
    timings: dict[str, list[float]] = {"plain": [], "package": []}
    cpu: dict[str, list[float]] = {"plain": [], "package": []}
    for b in range(blocks):
        order = [("plain", plain_cls), ("package", obs_cls)]
        if b % 2:
            order.reverse()
        for label, cls in order:
            now = time.time()
            messages = [channel.message_to_python(_fresh(payload, now)) for _ in range(block)]
            gc.collect()
            c0, t0 = time.process_time_ns(), time.perf_counter_ns()
            lifecycle(cls, messages)
            t1, c1 = time.perf_counter_ns(), time.process_time_ns()
            timings[label].append((t1 - t0) / block / 1000)
            cpu[label].append((c1 - c0) / block / 1000)

    succeeded = instrumentation.registry.get_sample_value(
        "celery_task_succeeded_total", {"name": "bench.noop", "queue_name": "bench"}
    )
    hooks = instrumentation.hooks

    # Publish hooks, as the signal dispatch calls them.
    def publish_hooks(n: int) -> float:
        headers_list = [{"id": str(i), "task": "bench.noop", "eta": None} for i in range(n)]
        gc.collect()
        t0 = time.perf_counter_ns()
        for headers in headers_list:
            hooks.before_publish(headers=headers, body=None, exchange="", routing_key="bench")
            hooks.after_publish(sender="bench.noop", headers=headers, routing_key="bench")
        return (time.perf_counter_ns() - t0) / n / 1000

    publish = [publish_hooks(block) for _ in range(blocks)]

    # Where the per-task time goes: the metric updates the hooks make, timed alone.
    series = instrumentation.metrics.task("bench.noop", "bench")

    def per_call(fn: Callable[[], Any], n: int = 100_000) -> float:
        gc.collect()
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        return (time.perf_counter_ns() - t0) / n / 1000

    message = channel.message_to_python(_fresh(payload, time.time()))
    probe = obs_cls(
        message,
        app=app,
        hostname=hostname,
        task=task,
        body=message.body,
        headers=message.headers,
        utc=utc,
    )
    empty = per_call(lambda: None)
    breakdown = {
        "loop and call overhead (subtracted below)": empty,
        "counter inc (x3 per task: received, started, succeeded)": per_call(series.inc_received)
        - empty,
        "histogram observe (x2 per task: queue wait, runtime)": per_call(
            lambda: series.observe_runtime["succeeded"](1e-5)
        )
        - empty,
        "for scale: prometheus_client's public inc()": per_call(series.received.inc) - empty,
        "for scale: prometheus_client's public observe(), a 10 s queue wait": per_call(
            lambda: series.queue_wait.observe(10.0)
        )
        - empty,
        "series look-up (hooks.series, once per task)": per_call(lambda: hooks.series(probe))
        - empty,
    }

    shares = {}
    top: list[dict[str, Any]] = []
    for label, cls in (("plain", plain_cls), ("package", obs_cls)):
        profiled = 5000
        messages = [
            channel.message_to_python(_fresh(payload, time.time())) for _ in range(profiled)
        ]
        shares[label], functions = profile_shares(functools.partial(lifecycle, cls, messages))
        if label == "package":
            top = [
                {**f, "calls_per_task": f["calls"] / profiled}
                for f in functions
                if f["library"] in ("csuite_async_obs", "prometheus_client")
            ]

    diff = bootstrap_median_diff(timings["package"], timings["plain"])
    cpu_diff = bootstrap_median_diff(cpu["package"], cpu["plain"])
    # CPU time is the headline: on a shared machine a block's wall time also
    # holds the time other processes had the core.
    return {
        "tasks_per_variant": block * blocks,
        "blocks": blocks,
        "plain_us_per_task": statistics.median(cpu["plain"]),
        "package_us_per_task": statistics.median(cpu["package"]),
        "package_cost_us": cpu_diff.to_json(),
        "package_cost_wall_us": diff.to_json(),
        "blocks_cpu_us": cpu,
        "blocks_wall_us": timings,
        "top_package_functions": top,
        "publish_hooks_us": {
            "median": statistics.median(publish),
            "max_block": max(publish),
            "blocks": publish,
        },
        "breakdown_us": breakdown,
        "profile_share": shares,
        "succeeded_counted": succeeded,
        "message_bytes": len(raw_message),
    }


def publish(calls: int, block: int) -> dict[str, Any]:
    import redis

    from csuite_async_obs import async_task, delay_task, get_celery_app, instrumentation_for

    app = get_celery_app()
    instrumentation = instrumentation_for(app)
    assert instrumentation is not None

    @async_task(name="bench.publish_target")
    def target() -> None:
        return None

    on_redis = os.environ["CELERY_BROKER_URL"].startswith("redis")
    client = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"]) if on_redis else None
    backend = redis.Redis.from_url(os.environ["CELERY_RESULT_BACKEND"]) if on_redis else None
    # Warm up the connections and code paths of both variants.
    for _ in range(200):
        delay_task(target)
    latencies: dict[str, list[float]] = {"with_hook": [], "without_hook": []}
    block_medians: dict[str, list[float]] = {"with_hook": [], "without_hook": []}
    blocks = max(1, calls // block)
    for b in range(blocks):
        order = ["with_hook", "without_hook"] if b % 2 == 0 else ["without_hook", "with_hook"]
        for label in order:
            if label == "with_hook":
                instrumentation.connect_signals()
            else:
                instrumentation.disconnect_signals()
            samples = []
            perf = time.perf_counter
            for _ in range(block):
                t0 = perf()
                result = delay_task(target)
                samples.append(perf() - t0)
                assert result is not None, "the broker refused a publish"
            latencies[label] += samples
            block_medians[label].append(statistics.median(samples))
            if client is not None and backend is not None:
                client.delete("celery")
                backend.flushdb()
    instrumentation.connect_signals()
    out: dict[str, Any] = {"calls_per_variant": blocks * block}
    for label, values in latencies.items():
        out[label] = {
            "median_us": statistics.median(values) * 1e6,
            "p99_us": percentile(values, 99) * 1e6,
        }
    diff = bootstrap_median_diff(block_medians["with_hook"], block_medians["without_hook"])
    out["hook_cost_us"] = {
        k: (v * 1e6 if isinstance(v, float) else v)
        for k, v in diff.to_json().items()
        if k in ("value", "lo", "hi", "n")
    }
    out["hook_cost_us"]["method"] = diff.method
    return out


def queuedepth(broker_url: str, queues: int, polls: int, raw_message: str) -> dict[str, Any]:
    try:
        from csuite_async_obs.queue_depth import poller as queue_poller
        from csuite_async_obs.queue_depth import readers as queue_readers
        from csuite_async_obs.queue_depth import selection as queue_selection
    except ImportError as exc:
        return {"available": False, "reason": f"csuite_async_obs.queue_depth missing: {exc}"}
    import redis
    from celery import Celery

    app = Celery("bench_queue_depth", broker=broker_url)
    client = redis.Redis.from_url(broker_url)
    client.flushdb()
    names = [f"bench.depth.{i:03d}" for i in range(queues)]
    # Real task messages, so the tails the poll reads and parses are full-size.
    stamp = json.dumps(_fresh(json.loads(raw_message), time.time()))
    # The Redis list of every priority step, named as kombu 5.7's Redis
    # transport names them (Channel._q_for_pri): step 0 is the bare name.
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        sep, steps_list = channel.sep, list(dict.fromkeys(channel.priority_steps))
    keys_of = {n: [f"{n}{sep}{step}" if step else n for step in steps_list] for n in names}
    steps = len(steps_list)
    with client.pipeline(transaction=False) as pipe:
        for i, name in enumerate(names):
            for j, key in enumerate(keys_of[name]):
                if j == 0 or i % 4 == 0:
                    pipe.lpush(key, *([stamp] * (1 + i % 7)))
        pipe.execute()
    selection = queue_selection.QueueSelection(names=tuple(names), limit=queues)
    poller = queue_poller.QueueDepthPoller(app, selection, interval=3600, timeout=5.0)
    walls: list[float] = []
    reads: list[float] = []
    trips: list[int] = []
    ok = True
    for _ in range(polls):
        t0 = time.perf_counter()
        ok = poller.poll_once() and ok
        walls.append(time.perf_counter() - t0)
        reading = poller.state.reading
        if reading is not None:
            reads.append(reading.duration)
            trips.append(reading.round_trips)
    reading = poller.state.reading
    poller.stop()
    # The poller reads on its I/O thread and cProfile follows one thread: profile
    # the poller's reader class called directly (connected by a first read).
    reader = queue_readers.open_reader(app, timeout=5.0)
    reader.read(names)
    shares, _ = profile_shares(lambda: [reader.read(names) for _ in range(5)])
    reader.close()
    # For scale: the same lengths read one command per key (what a naive poller does).
    naive: list[float] = []
    for _ in range(5):
        t0 = time.perf_counter()
        for name in names:
            for key in keys_of[name]:
                client.llen(key)
        naive.append(time.perf_counter() - t0)
    client.flushdb()
    return {
        "available": True,
        "queues": queues,
        "priority_steps": steps,
        "polls": polls,
        "all_polls_succeeded": ok,
        "queues_reported": len(reading.lengths) if reading is not None else 0,
        "round_trips": max(trips) if trips else None,
        "read_ms": {"median": statistics.median(reads) * 1e3, "p99": percentile(reads, 99) * 1e3},
        "poll_ms": {"median": statistics.median(walls) * 1e3, "p99": percentile(walls, 99) * 1e3},
        "naive_one_command_per_key_ms": statistics.median(naive) * 1e3,
        "naive_round_trips": queues * steps,
        "profile_share": shares,
    }


def rabbitmq_depth(queues: int, reads: int) -> dict[str, Any]:
    """Median and p99 of one read of ``queues`` queues: management API vs passive declares."""
    from csuite_async_obs.servers.rabbitmq_server import RabbitMQServer, find_rabbitmq_server

    if find_rabbitmq_server() is None:
        return {"available": False, "reason": "no rabbitmq-server installed"}
    from celery import Celery
    from kombu import Connection, Producer, Queue

    from csuite_async_obs.queue_depth.readers import open_reader

    server = RabbitMQServer().start()
    try:
        vhost = "bench"
        server.ctl("add_vhost", vhost)
        server.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        url = f"amqp://guest:guest@127.0.0.1:{server.port}/{vhost}"
        names = [f"bench.depth.{i:03d}" for i in range(queues)]
        expected = {name: 1 + i % 7 for i, name in enumerate(names)}
        body = json.dumps([[], {}, {"callbacks": None, "errbacks": None, "chain": None}])
        with Connection(url) as conn:
            channel = conn.channel()
            producer = Producer(channel)
            for name in names:
                Queue(name, durable=True)(channel).declare()
                for _ in range(expected[name]):
                    producer.publish(body, routing_key=name, timestamp=int(time.time()),
                                     content_type="application/json", content_encoding="utf-8")  # fmt: skip
        # The management API's counts lag the queues by a statistics interval.
        api_ready = f"queues/{vhost}?columns=name,messages_ready"
        deadline = time.monotonic() + 60
        while {q["name"]: q.get("messages_ready") for q in server.api(api_ready)} != expected:
            if time.monotonic() > deadline:
                raise TimeoutError("the management API never showed every queue's messages")
            time.sleep(0.2)
        # Celery's broker_url prefers CELERY_BROKER_URL (the run's Redis) to the app's.
        os.environ.pop("CELERY_BROKER_URL", None)
        app = Celery("bench_rabbitmq_depth", broker=url, set_as_current=False)
        result: dict[str, Any] = {"available": True, "queues": queues, "reads": reads}
        for variant, api_url in (("api", server.management_url), ("declare", "none")):
            reader = open_reader(app, timeout=5.0, rabbitmq_api_url=api_url)
            wanted = {"api": "RabbitMQReader", "declare": "DeclareReader"}[variant]
            assert type(reader).__name__ == wanted, (variant, type(reader).__name__)
            try:
                reader.read(names)  # warm: connection, channel, the first request
                durations: list[float] = []
                trips: set[int] = set()
                exact = 0
                for _ in range(reads):
                    reading = reader.read(names)
                    durations.append(reading.duration)
                    trips.add(reading.round_trips)
                    # The API's counts are statistics samples: counted, not asserted.
                    exact += dict(reading.lengths) == expected
            finally:
                reader.close()
            [round_trips] = trips
            result[variant] = {
                "reader": type(reader).__name__,
                "round_trips": round_trips,
                "ages": len(reading.oldest_published_at),
                "exact_reads": exact,
                "read_ms": {
                    "median": statistics.median(durations) * 1e3,
                    "p99": percentile(durations, 99) * 1e3,
                },
            }
        result["round_trips"] = result["api"]["round_trips"]
        return result
    finally:
        server.close()


def render(names: int, renders: int) -> dict[str, Any]:
    import gzip
    import random

    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from csuite_async_obs import compat
    from csuite_async_obs.metrics.task_metrics import TaskMetrics

    def samples(text: bytes) -> list[tuple[str, tuple[tuple[str, str], ...], str]]:
        return sorted(
            (s.name, tuple(sorted(s.labels.items())), repr(s.value))
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples
            if not s.name.endswith("_created")
        )

    def ms(values: list[float]) -> dict[str, float]:
        return {
            "median": round(statistics.median(values) * 1e3, 3),
            "p99": round(percentile(values, 99) * 1e3, 3),
        }

    out: dict[str, Any] = {"names": names, "renders": renders}
    for mode, forced in (("value_store", ""), ("value_objects", "value_store")):
        os.environ[compat.FORCE_VARIABLE] = forced
        compat.reset_paths()
        registry = CollectorRegistry()
        metrics = TaskMetrics(registry)
        series = [metrics.task(f"bench.task{i:04d}", "celery") for i in range(names)]
        exposition = metrics.exposition()
        rng = random.Random(1)

        def run(chosen: list[Any], rng: random.Random = rng) -> None:
            for s in chosen:
                s.inc_received()
                s.observe_wait(rng.lognormvariate(-3, 1))
                s.inc_started()
                s.observe_runtime["succeeded"](rng.lognormvariate(-1.6, 1))
                s.inc_succeeded()

        run(series)
        body = exposition.render()
        row: dict[str, Any] = {
            "stores_values": any(f.store is not None for f in metrics.families),
            "body_bytes": len(body),
            "series": sum(1 for line in body.splitlines() if not line.startswith(b"#")),
        }
        exact = True
        for case, chosen in (("unchanged", 0), ("10 tasks", min(10, names)), ("every name", names)):
            times = []
            for _ in range(renders):
                run(rng.sample(series, chosen))
                gc.disable()
                started = time.perf_counter()
                body = exposition.render()
                times.append(time.perf_counter() - started)
                gc.enable()
            exact = exact and samples(body) == samples(generate_latest(registry))
            row[case] = ms(times)
        zipped = []
        for _ in range(renders):
            started = time.perf_counter()
            gzip.compress(body, compresslevel=1)
            zipped.append(time.perf_counter() - started)
        row["gzip"] = ms(zipped)
        row["samples_equal_generate_latest"] = exact
        out[mode] = row
    os.environ.pop(compat.FORCE_VARIABLE, None)
    compat.reset_paths()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inproc")
    parser.add_argument(
        "name", choices=("hookpath", "publish", "queuedepth", "rabbitmqdepth", "render")
    )
    parser.add_argument("--message-file")
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--block", type=int, default=500)
    parser.add_argument("--broker")
    parser.add_argument("--queues", type=int, default=200)
    parser.add_argument("--polls", type=int, default=50)
    parser.add_argument("--names", type=int, default=500)
    parser.add_argument("--renders", type=int, default=200)
    parser.add_argument("--core", type=int)
    parser.add_argument("--out", help="also write the result, stamped with the run, to this file")
    args = parser.parse_args(argv)
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})
    if args.name == "hookpath":
        with open(args.message_file) as f:
            result = hookpath(f.read(), args.tasks, args.blocks)
    elif args.name == "publish":
        result = publish(args.calls, args.block)
    elif args.name == "rabbitmqdepth":
        result = rabbitmq_depth(args.queues, args.polls)
    elif args.name == "render":
        result = render(args.names, args.renders)
    else:
        with open(args.message_file) as f:
            result = queuedepth(args.broker, args.queues, args.polls, f.read())
    json.dump(result, sys.stdout)
    if args.out:
        from .run import stamp

        command = "python -m benchmarks.inproc " + " ".join(argv or sys.argv[1:])
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        stamped = {**stamp(command, args.name, None), "result": result}
        out.write_text(json.dumps(stamped, indent=1) + "\n")


if __name__ == "__main__":
    main()
