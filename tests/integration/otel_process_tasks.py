"""Process tasks for the tracing tests; imported by module name in the worker processes."""

from __future__ import annotations

from opentelemetry import trace

from fastapi_taskflow import task_log


def report_trace() -> None:
    """Log the trace and span ids the worker sees as current."""
    context = trace.get_current_span().get_span_context()
    task_log("trace", trace_id=f"{context.trace_id:032x}", span_id=f"{context.span_id:016x}")
