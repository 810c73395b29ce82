"""OpenTelemetry across the process boundary: the worker runs inside the attempt's context."""

from __future__ import annotations

import otel_process_tasks
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fastapi_taskflow import InMemoryLogger, TaskManager

pytestmark = pytest.mark.slow


async def test_process_task_sees_its_attempt_span_as_current() -> None:
    """The carrier sent with the job makes the attempt span current in the worker."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    events = InMemoryLogger()
    manager = TaskManager(tracing=provider, max_process_workers=1, loggers=[events])
    manager.task(executor="process")(otel_process_tasks.report_trace)

    await manager.startup()
    with provider.get_tracer("test").start_as_current_span("request") as request:
        manager.add_task(otel_process_tasks.report_trace)
    await manager.join(timeout=60)
    await manager.shutdown()

    (span,) = [s for s in exporter.get_finished_spans() if s.name.startswith("taskflow.")]
    assert span.parent is not None
    assert span.parent.span_id == request.get_span_context().span_id
    (log,) = events.log_events
    assert log.extra["trace_id"] == f"{request.get_span_context().trace_id:032x}"
    assert log.extra["span_id"] == f"{span.context.span_id:016x}"
    provider.shutdown()
