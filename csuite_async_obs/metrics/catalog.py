"""Metric names, labels and help texts, defined once; pure data, no dependencies.

Counter names keep those of the most-used event-based Celery exporter
(``celery_task_sent_total`` ...) so that existing dashboards keep working; the
histograms follow Prometheus conventions (base units, ``_seconds``).  Task series
carry ``name`` and ``queue_name`` and no host label: Prometheus's ``instance``
already names the worker.  Everything that names a metric or a label -- the
metric objects, the collectors, the README's table, the check of constant
labels -- reads it from here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "INSTRUMENTATION_HOOKS",
    "METRICS",
    "OTHER",
    "OUTCOME_STATES",
    "RESERVED_LABELS",
    "SPECS",
    "TIME_LIMIT_KINDS",
    "ZERO_STATES",
    "MetricSpec",
]

OTHER = "other"

# Values of the ``state`` label of celery_task_runtime_seconds: every way a task
# that reached the pool can end.
OUTCOME_STATES = ("succeeded", "failed", "retried", "rejected", "revoked", "ignored")
# The states whose runtime series exist from start in the default profile: what the
# failure ratio and the SLOs read (every state does in the full profile).
ZERO_STATES = ("succeeded", "failed")
TIME_LIMIT_KINDS = ("soft", "hard")


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric: what the README's reference table and dashboards rely on."""

    name: str  # as exposed (counters with their _total suffix)
    type: str
    labels: tuple[str, ...]
    help: str
    zero_initialised: str = ""
    #: Which brokers give it, where not every one does (the README's table says so).
    brokers: str = ""
    #: The process that serves it: a worker (and the standalone exporter for the
    #: queue metrics), or celery beat.
    process: str = "worker"


TASK = ("name", "queue_name")
ENTRY = ("entry", "task")

METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "celery_task_sent_total",
        "counter",
        TASK,
        "Tasks published by this process (publish side; see the README for pool children).",
        "yes",
    ),
    MetricSpec(
        "celery_task_received_total",
        "counter",
        TASK,
        "Task messages received by the worker for the first time: a message the broker "
        "delivers again is counted in celery_task_redelivered_total instead.",
        "yes",
    ),
    MetricSpec(
        "celery_task_redelivered_total",
        "counter",
        TASK,
        "Task messages received again after a lost connection or worker (AMQP's "
        "redelivered flag; on Redis, kombu's restore of unacknowledged messages).",
        "yes",
    ),
    MetricSpec(
        "celery_task_started_total",
        "counter",
        TASK,
        "Tasks a pool process started executing.",
        "yes",
    ),
    MetricSpec(
        "celery_task_succeeded_total",
        "counter",
        TASK,
        "Tasks that returned without raising.",
        "yes",
    ),
    MetricSpec(
        "celery_task_failed_total",
        "counter",
        (*TASK, "exception"),
        "Tasks that failed, by exception class (time limits and lost pool children included).",
        "no: an exception class is not known before it happens; use "
        'celery_task_runtime_seconds_count{state="failed"}',
    ),
    MetricSpec(
        "celery_task_retried_total",
        "counter",
        TASK,
        "Tasks that raised Retry and were re-published.",
        "yes",
    ),
    MetricSpec(
        "celery_task_revoked_total",
        "counter",
        TASK,
        "Tasks revoked, expired or terminated before they could finish.",
        "yes",
    ),
    MetricSpec(
        "celery_task_rejected_total",
        "counter",
        TASK,
        "Tasks that raised Reject, and messages for tasks the worker does not know.",
        "yes",
    ),
    MetricSpec(
        "celery_task_runtime_seconds",
        "histogram",
        (*TASK, "state"),
        "Time tasks ran in the pool, for every outcome (state).",
        "succeeded and failed (every state: metrics_profile=full); the other states from "
        "their first run",
    ),
    MetricSpec(
        "celery_task_queue_wait_seconds",
        "histogram",
        TASK,
        "Time from publish (or ETA, when later) until a pool process started the task.",
        "yes",
    ),
    MetricSpec(
        "celery_task_queue_wait_unmeasured_total",
        "counter",
        TASK,
        "Tasks started without the publish timestamp header (published without this "
        "package), so their queue wait could not be measured.",
        "yes",
    ),
    MetricSpec(
        "celery_task_queue_wait_clamped_total",
        "counter",
        TASK,
        "Tasks whose queue wait came out negative and was recorded as 0: the publisher's "
        "clock is ahead of the worker's (check NTP on both); their waits read too short.",
        "yes",
    ),
    MetricSpec(
        "celery_task_time_limit_exceeded_total",
        "counter",
        (*TASK, "kind"),
        "Tasks that hit their soft or hard time limit (kind).",
        "yes, both kinds",
    ),
    MetricSpec(
        "celery_task_worker_lost_total",
        "counter",
        TASK,
        "Tasks whose pool process died under them (WorkerLostError), e.g. SIGKILL or OOM.",
        "yes",
    ),
    MetricSpec(
        "celery_task_last_success_timestamp_seconds",
        "gauge",
        ("name",),
        "Unix time this worker last saw the task succeed; 0 until it does.",
        "yes (0)",
    ),
    MetricSpec(
        "celery_task_last_failure_timestamp_seconds",
        "gauge",
        ("name",),
        "Unix time this worker last saw the task fail (an exception, a time limit, a lost "
        "pool child); 0 until it does.",
        "yes (0)",
    ),
    MetricSpec(
        "celery_worker_up",
        "gauge",
        ("hostname",),
        "1 while the worker runs; the series disappears with the process.",
        "yes",
    ),
    MetricSpec(
        "celery_worker_consumer_up",
        "gauge",
        (),
        "1 while the worker's consumer is connected and consuming, else 0.",
        "yes",
    ),
    MetricSpec(
        "celery_worker_tasks_active", "gauge", (), "Tasks executing in the pool right now.", "yes"
    ),
    MetricSpec(
        "celery_worker_prefetched_tasks",
        "gauge",
        (),
        "Tasks received and reserved by this worker, not started yet.",
        "yes",
    ),
    MetricSpec(
        "celery_worker_pool_size",
        "gauge",
        (),
        "Pool processes or threads; active / pool size is saturation.",
        "yes",
    ),
    MetricSpec(
        "celery_queue_length",
        "gauge",
        ("queue_name",),
        "Messages ready in the queue (all priority sub-queues), at the last poll.",
        "reported from the first successful poll",
        "Redis, RabbitMQ (API or passive declare), other kombu transports",
    ),
    MetricSpec(
        "celery_queue_oldest_message_age_seconds",
        "gauge",
        ("queue_name",),
        "Age of the oldest ready message, from its publish time; 0 when the queue is empty.",
        "reported from the first successful poll",
        "Redis (oldest of all priority sub-queues); RabbitMQ management API (head message, "
        "1 s resolution)",
    ),
    MetricSpec(
        "celery_queue_unacked_messages",
        "gauge",
        ("queue_name",),
        "Messages delivered to workers and not acknowledged yet (prefetched, running, "
        "countdown/ETA).",
        "reported from the first successful poll",
        "Redis (by the queue the message is restored to); RabbitMQ management API",
    ),
    MetricSpec(
        "celery_queue_consumers",
        "gauge",
        ("queue_name",),
        "Consumers (worker connections) subscribed to the queue.",
        "reported from the first successful poll",
        "RabbitMQ (API or passive declare); not Redis, which has no consumer registry",
    ),
    MetricSpec(
        "celery_queue_length_poll_errors_total",
        "counter",
        (),
        "Queue-depth polls that failed or timed out (broker down or slow).",
        "yes",
    ),
    MetricSpec(
        "celery_queue_length_last_success_timestamp_seconds",
        "gauge",
        (),
        "Unix time of the last successful queue-depth poll.",
        "0 until the first success",
    ),
    MetricSpec(
        "celery_beat_up",
        "gauge",
        (),
        "1 while this celery beat process runs its scheduler; the series disappears with "
        "the process.",
        "yes",
        process="beat",
    ),
    MetricSpec(
        "celery_beat_last_tick_timestamp_seconds",
        "gauge",
        (),
        "Unix time of beat's last scheduler tick (at least every beat_max_loop_interval).",
        "yes",
        process="beat",
    ),
    MetricSpec(
        "celery_beat_entries",
        "gauge",
        (),
        "Entries in beat's schedule at its last tick.",
        "yes",
        process="beat",
    ),
    MetricSpec(
        "celery_beat_entry_last_sent_timestamp_seconds",
        "gauge",
        ENTRY,
        "Unix time beat last sent the entry's task (at start: the schedule store's last "
        "run); 0 while it was never sent.",
        "yes (0)",
        process="beat",
    ),
    MetricSpec(
        "celery_beat_entry_next_due_timestamp_seconds",
        "gauge",
        ENTRY,
        "Unix time the entry is next due, from its schedule (interval, crontab, solar); "
        "in the past while it is overdue.",
        "yes",
        process="beat",
    ),
    MetricSpec(
        "celery_beat_entry_period_seconds",
        "gauge",
        ENTRY,
        "The entry's period: its interval; for crontab and solar, the gap between its "
        "next two due times.",
        "yes",
        process="beat",
    ),
    MetricSpec(
        "celery_beat_entry_sent_total",
        "counter",
        ENTRY,
        "Sends of the entry's task by this beat process.",
        "yes",
        process="beat",
    ),
    MetricSpec(
        "celery_beat_entry_send_errors_total",
        "counter",
        ENTRY,
        "Sends of the entry's task that raised (broker down): beat logs 'Message Error' "
        "and waits for the next due time.",
        "yes",
        process="beat",
    ),
    MetricSpec(
        "csuite_async_obs_instrumentation_errors_total",
        "counter",
        ("hook",),
        "Errors caught inside the instrumentation (logged, never raised into a task).",
        "yes",
    ),
    MetricSpec(
        "csuite_async_obs_label_overflow_total",
        "counter",
        ("label",),
        "Events whose task, queue, exception or beat entry label was reported as 'other' because that "
        "label's cardinality limit was reached.",
        "yes",
    ),
)

SPECS = {spec.name: spec for spec in METRICS}
INSTRUMENTATION_HOOKS = (
    "publish",
    "received",
    "started",
    "finished",
    "timeout",
    "revoked",
    "rejected",
    "collect",
    "exporter",
    "log",
    "beat",
)

# Labels the package sets itself (and those of the exposition formats): a
# constant label may not shadow them.
RESERVED_LABELS = frozenset(
    {label for spec in METRICS for label in spec.labels} | {"le", "quantile"}
)
