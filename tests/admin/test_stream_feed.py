"""The dashboard stream follows the backend's change feed: other instances' changes arrive as
deltas, and a stream that missed entries is told to reload."""

from __future__ import annotations

import asyncio

from fastapi_taskflow import TaskManager
from fastapi_taskflow.admin.sse import StreamHub
from fastapi_taskflow.backends import MemoryBackend
from fastapi_taskflow.backends.memory import CHANGES_KEPT
from fastapi_taskflow.models import TaskRecord, TaskStatus, utcnow


def other_instance_record(task_id: str) -> TaskRecord:
    return TaskRecord(task_id, "elsewhere.job", status=TaskStatus.RUNNING, created_at=utcnow())


async def next_event(queue: asyncio.Queue[bytes], name: str) -> bytes:
    """The next payload of event ``name`` on a client's queue (others are skipped)."""
    async with asyncio.timeout(5):
        while True:
            payload = await queue.get()
            if payload.startswith(f"event: {name}\n".encode()):
                return payload


async def test_another_instance_change_arrives_and_a_gap_resets_the_page() -> None:
    """A row another instance wrote reaches this stream as a delta; when the feed was pruned
    past this stream's cursor, dashboards get a ``reset`` event."""
    backend = MemoryBackend()
    manager = TaskManager(snapshot_backend=backend)
    await manager.startup()
    hub = StreamHub(lambda: manager, tick=0.01)
    client = hub.subscribe()
    try:
        seen = other_instance_record("from-elsewhere")
        # Until the hub has its starting cursor a write may land before it: write until seen.
        async with asyncio.timeout(5):
            while True:
                await backend.save_records([seen], origin="another-instance")
                try:
                    delta = await asyncio.wait_for(next_event(client.queue, "delta"), 0.2)
                except TimeoutError:
                    continue
                break
        assert b'"from-elsewhere"' in delta
        assert b'"running"' in delta
        # More batches than the feed keeps; memory writes never yield to the loop, so the hub
        # cannot read in between and misses some.
        for n in range(CHANGES_KEPT + 5):
            await backend.save_records([other_instance_record(f"r{n}")], origin="another")
        reset = await next_event(client.queue, "reset")
        assert b"missed changes" in reset
    finally:
        hub.unsubscribe(client)
        await hub.close()
        await manager.shutdown()
