"""``celery -A benchmarks.worker_otel worker``: the plain app traced by OpenTelemetry.

The peer most teams would reach for: ``opentelemetry-instrumentation-celery``
with the SDK's tracer provider and its in-memory span exporter (no network, so
the cost measured is the tracing itself).  Spans go through a
``SimpleSpanProcessor``: every span is exported, none dropped by a full batch
queue.  The exporter keeps the last 10,000 spans (a bounded deque), so memory
stays flat over a long run; each process counts what it exported and writes the
count to ``$BENCH_SPAN_DIR/<pid>`` when it exits, which proves the spans were
made.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celery import signals
from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from benchmarks.apps import make_app


class CountingSpanExporter(InMemorySpanExporter):
    """The SDK's in-memory exporter, counting the spans it was given."""

    def __init__(self, max_spans: int | None = None) -> None:
        super().__init__(max_spans=max_spans)
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        return super().export(spans)


EXPORTER = CountingSpanExporter(max_spans=10_000)
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(provider)
# Instrumented at import: solo and threads run tasks in this process, and
# prefork children are forked from it with the signal handlers connected (the
# SimpleSpanProcessor has no thread that a fork would lose).
CeleryInstrumentor().instrument(tracer_provider=provider)

app = make_app("bench_otel")


def _write_count(**_: Any) -> None:
    folder = os.environ.get("BENCH_SPAN_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        Path(folder, str(os.getpid())).write_text(str(EXPORTER.exported))


signals.worker_process_shutdown.connect(_write_count, weak=False)
signals.worker_shutdown.connect(_write_count, weak=False)
