"""OpenTelemetry: trace context flows from the enqueuer into each attempt's span."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from fastapi_taskflow import ConfigurationError, MemoryBackend, QueueConfig, TaskManager
from fastapi_taskflow.backends.base import JournalEntry


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """Spans finished by the test's own provider."""
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """A tracer provider of the test's own (the global one is left alone)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def attempt_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith("taskflow.attempt")]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_async_task_span_is_a_child_of_the_request_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """An async task's attempt span has the enqueuing span as parent and the task's attributes."""
    manager = TaskManager(tracing=provider)
    seen: list[int] = []

    @manager.task(name="mail.send")
    async def send(to: str) -> None:
        seen.append(trace.get_current_span().get_span_context().span_id)

    await manager.startup()
    with provider.get_tracer("test").start_as_current_span("POST /signup") as request:
        handle = manager.add_task(send, "a@example.com")
    await manager.join()
    await manager.shutdown()

    (span,) = attempt_spans(exporter)
    assert span.name == "taskflow.attempt mail.send"
    assert span.context.trace_id == request.get_span_context().trace_id
    assert parent_of(span) == request.get_span_context().span_id
    assert seen == [span.context.span_id]
    attrs = dict(span.attributes or {})
    assert attrs["taskflow.task_id"] == handle.task_id
    assert attrs["taskflow.func_name"] == "mail.send"
    assert attrs["taskflow.attempt"] == 1
    assert attrs["taskflow.queue"] == "default"
    assert attrs["taskflow.executor"] == "async"
    assert attrs["taskflow.status"] == "success"
    assert span.status.status_code is StatusCode.OK


async def test_thread_task_runs_inside_its_attempt_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A sync task in a thread sees the attempt span as current (context variables copied)."""
    manager = TaskManager(tracing=provider, max_sync_threads=2)
    seen: list[tuple[int, int]] = []

    @manager.task()
    def resize(path: str) -> None:
        context = trace.get_current_span().get_span_context()
        seen.append((context.trace_id, context.span_id))

    await manager.startup()
    with provider.get_tracer("test").start_as_current_span("POST /upload") as request:
        manager.add_task(resize, "a.png")
    await manager.join()
    await manager.shutdown()

    (span,) = attempt_spans(exporter)
    assert dict(span.attributes or {})["taskflow.executor"] == "thread"
    assert parent_of(span) == request.get_span_context().span_id
    assert seen == [(request.get_span_context().trace_id, span.context.span_id)]


async def test_each_retry_is_its_own_span_with_the_error_recorded(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Retries produce one span per attempt, all in the request's trace; failures are errors."""
    manager = TaskManager(tracing=provider)
    calls = {"n": 0}

    @manager.task(retries=2, delay=0)
    async def flaky() -> None:
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionError(f"down #{calls['n']}")

    await manager.startup()
    with provider.get_tracer("test").start_as_current_span("request") as request:
        manager.add_task(flaky)
    await manager.join()
    await manager.shutdown()

    spans = sorted(attempt_spans(exporter), key=lambda s: s.start_time or 0)
    assert [dict(s.attributes or {})["taskflow.attempt"] for s in spans] == [1, 2, 3]
    assert {parent_of(s) for s in spans} == {request.get_span_context().span_id}
    assert [s.status.status_code for s in spans] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.OK,
    ]
    assert [dict(s.attributes or {})["taskflow.status"] for s in spans] == [
        "retrying",
        "retrying",
        "success",
    ]
    event = spans[0].events[0]
    assert event.name == "exception"
    assert dict(event.attributes or {})["exception.type"] == "ConnectionError"
    assert dict(event.attributes or {})["exception.message"] == "ConnectionError: down #1"


async def test_final_failure_is_an_error_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A task that fails for good ends its span with status ERROR and the stack trace."""
    manager = TaskManager(tracing=provider)

    @manager.task()
    async def broken() -> None:
        raise ValueError("bad input")

    await manager.startup()
    manager.add_task(broken)
    await manager.join()
    await manager.shutdown()

    (span,) = attempt_spans(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["taskflow.status"] == "failed"
    assert "Traceback" in str(dict(span.events[0].attributes or {})["exception.stacktrace"])


async def test_task_enqueued_outside_any_span_is_a_root(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """No active span at enqueue: the attempt span starts its own trace."""
    manager = TaskManager(tracing=provider)

    @manager.task()
    async def job() -> None:
        return None

    await manager.startup()
    handle = manager.add_task(job)
    await manager.join()
    await manager.shutdown()

    assert handle.record.trace_context is None
    (span,) = attempt_spans(exporter)
    assert span.parent is None


async def test_scheduled_firing_has_its_own_root_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A schedule fires in its own trace, even when the app started inside a span."""
    manager = TaskManager(tracing=provider)
    fired = asyncio.Event()

    @manager.schedule(every=3600, run_on_startup=True)
    async def nightly() -> None:
        fired.set()

    with provider.get_tracer("test").start_as_current_span("startup"):
        await manager.startup()
    await asyncio.wait_for(fired.wait(), timeout=10)
    await manager.join()
    await manager.shutdown()

    (span,) = attempt_spans(exporter)
    assert span.parent is None
    assert dict(span.attributes or {})["taskflow.source"] == "scheduled"


async def test_requeued_task_stays_in_the_original_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A task journaled at shutdown runs after the restart as a child of its request span."""
    backend = MemoryBackend()
    gate = asyncio.Event()

    def build() -> tuple[TaskManager, Any, Any]:
        manager = TaskManager(
            tracing=provider,
            snapshot_backend=backend,
            close_backend=False,
            requeue_pending=True,
            queues={"one": QueueConfig(concurrency=1)},
            drain_timeout=0,
        )

        @manager.task(queue="one", name="blocker")
        async def blocker() -> None:
            await gate.wait()

        @manager.task(queue="one", name="later")
        async def later() -> None:
            return None

        return manager, blocker, later

    first, blocker, later = build()
    await first.startup()
    first.add_task(blocker)
    with provider.get_tracer("test").start_as_current_span("request") as request:
        waiting = first.add_task(later)
    await first.shutdown()

    gate.set()
    second, _, _ = build()
    await second.startup()
    await second.join(timeout=10)
    await second.shutdown()

    spans = [
        s
        for s in attempt_spans(exporter)
        if dict(s.attributes or {})["taskflow.task_id"] == waiting.task_id
    ]
    assert len(spans) == 1
    assert parent_of(spans[0]) == request.get_span_context().span_id
    assert dict(spans[0].attributes or {})["taskflow.source"] == "requeue"


def test_journal_entry_round_trip_keeps_the_trace_context() -> None:
    """The W3C carrier survives the journal's JSON."""
    carrier = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    entry = JournalEntry(task_id="t", func_name="f", payload=b"{}", trace_context=carrier)
    assert JournalEntry.from_json(entry.to_json()).trace_context == carrier
    plain = JournalEntry(task_id="t", func_name="f", payload=b"{}")
    assert JournalEntry.from_json(plain.to_json()).trace_context is None


async def test_tracing_is_off_by_default_and_never_imports_opentelemetry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without tracing=..., tasks run with opentelemetry unimportable (no import is tried)."""
    for name in [n for n in sys.modules if n.startswith("opentelemetry")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    manager = TaskManager()

    @manager.task()
    async def job() -> None:
        return None

    await manager.startup()
    handle = manager.add_task(job)
    await manager.join()
    await manager.shutdown()
    assert manager.dispatcher.hooks is None
    assert handle.record.trace_context is None
    assert handle.status.value == "success"


def test_tracing_without_opentelemetry_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """tracing=True without the otel extra is a ConfigurationError naming the extra."""
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)
    with pytest.raises(ConfigurationError, match=r"fastapi-taskflow\[otel\]"):
        TaskManager(tracing=True)
