"""OpenTelemetry: the enqueuer's trace context flows into the task; each attempt is one span.

Opt-in with ``TaskManager(tracing=True)`` (the global tracer provider) or
``tracing=<TracerProvider>``; needs the ``otel`` extra. Nothing here imports opentelemetry until
a :class:`Tracing` is built, so apps without tracing pay nothing.

* At enqueue, the current context (W3C ``traceparent``/``tracestate`` and baggage) is injected
  into a small dict kept on the record and in its journal entry, so requeues after a restart
  keep it. Scheduled firings capture nothing: each starts its own trace.
* Each attempt is a span ``taskflow.attempt <func_name>`` whose parent is that context
  (:class:`TracingHook`, an attempt hook the manager gives the dispatcher). It is the current
  span while the function runs: async tasks see it directly, thread tasks through
  the copied context variables, process tasks through a carrier sent with the job and attached
  in the worker (see :func:`attached`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .dispatch.hooks import AttemptHook, Carrier
from .errors import ConfigurationError
from .models import TaskRecord, TaskStatus

if TYPE_CHECKING:
    from .dispatch.job import Job

SPAN_PREFIX = "taskflow.attempt"


def build_tracing(option: Any) -> Tracing | None:
    """``tracing=``: False/None -> None, True -> the global provider, else that provider."""
    if option is None or option is False:
        return None
    try:
        import opentelemetry.trace  # noqa: F401
    except ModuleNotFoundError:
        raise ConfigurationError(
            "tracing is on but OpenTelemetry is not installed: pip install 'fastapi-taskflow[otel]'"
        ) from None
    return Tracing(None if option is True else option)


class Tracing:
    """Captures the trace context at enqueue and opens one span per attempt."""

    def __init__(self, provider: Any = None) -> None:
        from opentelemetry import context, propagate, trace

        self._context = context
        self._propagate = propagate
        self._trace = trace
        self._tracer = trace.get_tracer("fastapi_taskflow", tracer_provider=provider)

    def capture(self) -> Carrier | None:
        """The current context as a W3C carrier, or None when no span is active."""
        if not self._trace.get_current_span().get_span_context().is_valid:
            return None
        carrier: Carrier = {}
        self._propagate.inject(carrier)
        return carrier

    def start_attempt(self, job: Job, attempt: int) -> AttemptSpan:
        """A started span for this attempt, child of the context captured at enqueue."""
        record = job.record
        carrier = record.trace_context
        # An explicit empty context: never inherit whatever the asyncio task happened to copy.
        parent = self._propagate.extract(carrier) if carrier else self._context.Context()
        span = self._tracer.start_span(
            f"{SPAN_PREFIX} {record.func_name}",
            context=parent,
            kind=self._trace.SpanKind.CONSUMER,
            attributes={
                "taskflow.task_id": record.task_id,
                "taskflow.func_name": record.func_name,
                "taskflow.attempt": attempt,
                "taskflow.queue": record.queue,
                "taskflow.executor": job.definition.executor,
                "taskflow.retries_used": record.retries_used,
                "taskflow.source": record.source,
            },
        )
        return AttemptSpan(self, span, self._trace.set_span_in_context(span, parent))


class AttemptSpan:
    """One attempt's span: current between :meth:`attach` and :meth:`detach`, ended by
    :meth:`end` with the outcome."""

    __slots__ = ("_ctx", "_error_type", "_span", "_token", "_tracing")

    def __init__(self, tracing: Tracing, span: Any, ctx: Any) -> None:
        self._tracing = tracing
        self._span = span
        self._ctx = ctx
        self._token: Any = None
        self._error_type: str | None = None

    def attach(self) -> None:
        self._token = self._tracing._context.attach(self._ctx)

    def detach(self, error: BaseException | None) -> None:
        """The call is over (``error``: what it raised): the span is no longer current."""
        if isinstance(error, Exception):
            self._error_type = type(error).__qualname__
        if self._token is not None:
            self._tracing._context.detach(self._token)
            self._token = None

    def carrier(self) -> Carrier | None:
        """This span's context as a carrier, for a worker process."""
        carrier: Carrier = {}
        self._tracing._propagate.inject(carrier, context=self._ctx)
        return carrier

    def end(self, record: TaskRecord) -> None:
        """Record the outcome (the record's redacted error, never the raw one) and end."""
        from opentelemetry.trace import Status, StatusCode

        self.detach(None)  # still current if the attempt ended before its call
        span = self._span
        status = "retrying" if record.status is TaskStatus.PENDING else record.status.value
        span.set_attribute("taskflow.status", status)
        span.set_attribute("taskflow.retries_used", record.retries_used)
        if self._error_type is not None:
            error = record.error or self._error_type
            event: dict[str, Any] = {"exception.type": self._error_type, "exception.message": error}
            if record.stacktrace:
                event["exception.stacktrace"] = record.stacktrace
            span.add_event("exception", event)
            span.set_status(Status(StatusCode.ERROR, error))
        elif record.status is TaskStatus.SUCCESS:
            span.set_status(Status(StatusCode.OK))
        span.end()


class TracingHook(AttemptHook):
    """The attempt hook: each attempt runs inside its span; process tasks get its carrier."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing
        self._spans: dict[Job, AttemptSpan] = {}  # the attempts under way

    def begin(self, job: Job) -> None:
        span = self.tracing.start_attempt(job, job.attempt)
        self._spans[job] = span
        span.attach()

    def worker_context(self, job: Job) -> Carrier | None:
        span = self._spans.get(job)
        return span.carrier() if span is not None else None

    def after_call(self, job: Job, error: BaseException | None) -> None:
        span = self._spans.get(job)
        if span is not None:
            span.detach(error)

    def end(self, job: Job) -> None:
        span = self._spans.pop(job, None)
        if span is not None:
            span.end(job.record)


@contextmanager
def attached(carrier: Carrier | None) -> Iterator[None]:
    """In a worker process: make ``carrier`` the current context while the task runs.

    Without opentelemetry in the worker, or without a carrier, it does nothing. The task's own
    spans (with the worker's tracer provider) then join the attempt's trace.
    """
    if not carrier:
        yield
        return
    try:
        from opentelemetry import context, propagate
    except ModuleNotFoundError:
        yield
        return
    token = context.attach(propagate.extract(carrier))
    try:
        yield
    finally:
        context.detach(token)
