"""EventHub bounds its observer queue: when observers fall behind, new events are dropped."""

from __future__ import annotations

import asyncio
import logging

import pytest

from fastapi_taskflow import TaskObserver
from fastapi_taskflow.dispatch.events import OBSERVER_QUEUE_SIZE, EventHub
from fastapi_taskflow.loggers.chain import ObserverChain
from fastapi_taskflow.loopref import LoopRef
from fastapi_taskflow.models import LifecycleEvent, TaskRecord, TaskStatus
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
