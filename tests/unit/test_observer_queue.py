"""EventHub bounds its observer queue: when observers fall behind, new events are dropped."""

from __future__ import annotations

import asyncio
import logging

import pytest
from control_helpers import running

from fastapi_taskflow import TaskObserver, task_log
from fastapi_taskflow.dispatch.events import OBSERVER_QUEUE_SIZE, EventHub
from fastapi_taskflow.loggers.chain import ObserverChain
from fastapi_taskflow.loopref import LoopRef
from fastapi_taskflow.models import LifecycleEvent, LogEvent, TaskRecord, TaskStatus
from fastapi_taskflow.store import TaskStore


class GatedObserver(TaskObserver):
    """Holds every event until ``gate`` is set, like an observer stuck on slow I/O."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.seen: list[LifecycleEvent] = []

    async def on_lifecycle(self, event: LifecycleEvent) -> None:
        await self.gate.wait()
        self.seen.append(event)


async def test_full_queue_drops_new_events_counts_them_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Events past max_pending are dropped and counted, with one warning per overflow."""
    caplog.set_level(logging.WARNING, logger="fastapi_taskflow")
    observer = GatedObserver()
    hub = EventHub(TaskStore(), ObserverChain([observer]), LoopRef(), max_pending=2)
    await hub.start()
    record = TaskRecord(task_id="t1", func_name="m:f")
    for _ in range(5):
        hub.lifecycle(record, TaskStatus.RUNNING, 1)
    assert hub.dropped_events == 3
    warnings = [r for r in caplog.records if "dropping new events" in r.getMessage()]
    assert len(warnings) == 1
    observer.gate.set()
    await hub.drain()
    assert len(observer.seen) == 2
    assert any("caught up; 3 events dropped" in r.getMessage() for r in caplog.records)
    await hub.stop()


async def test_stop_delivers_what_is_queued_even_when_full() -> None:
    """stop() waits for room for its end marker, so a full queue still shuts down cleanly."""
    observer = GatedObserver()
    hub = EventHub(TaskStore(), ObserverChain([observer]), LoopRef(), max_pending=1)
    await hub.start()
    hub.lifecycle(TaskRecord(task_id="t1", func_name="m:f"), TaskStatus.RUNNING, 1)
    stopping = asyncio.create_task(hub.stop())
    await asyncio.sleep(0)
    assert not stopping.done()
    observer.gate.set()
    await stopping
    assert len(observer.seen) == 1


def test_the_default_bound_is_documented_size() -> None:
    """A hub made without max_pending holds OBSERVER_QUEUE_SIZE events."""
    hub = EventHub(TaskStore(), ObserverChain(), LoopRef())
    assert hub.max_pending == OBSERVER_QUEUE_SIZE == 10_000


class GatedCountingObserver(TaskObserver):
    """Holds every event (log or lifecycle) until ``gate`` is set, then counts it."""

    def __init__(self) -> None:
        super().__init__(min_level="debug")
        self.gate = asyncio.Event()
        self.seen = 0

    async def on_log(self, event: LogEvent) -> None:
        await self.gate.wait()
        self.seen += 1

    async def on_lifecycle(self, event: LifecycleEvent) -> None:
        await self.gate.wait()
        self.seen += 1


async def test_manager_counts_dropped_events_and_keeps_the_record_whole() -> None:
    """metrics() reports dropped observer events; the task's own log keeps every line."""
    observer = GatedCountingObserver()
    lines = OBSERVER_QUEUE_SIZE + 50

    async def chatty() -> None:
        for n in range(lines):
            task_log(f"line {n}")

    async with running(loggers=[observer]) as manager:
        handle = manager.add_task(chatty)
        await handle.wait(timeout=30)
        dropped = manager.metrics()["observer_events_dropped"]
        assert dropped >= 50
        record = await manager.get_record(handle)
        assert record is not None
        assert len(record.logs) == lines
        observer.gate.set()
        await manager.hub.drain()
        # Every event (the lines, running and success) was either delivered or counted.
        assert observer.seen + dropped == lines + 2
