"""A requeueable task that only waited at a clean shutdown: its record is saved PENDING."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi_taskflow import SqliteBackend, TaskManager, TaskStatus

FAST = {"heartbeat_interval": 0.05, "lease_ttl": 0.3, "drain_timeout": 0.0}


async def test_a_waiting_task_kept_at_shutdown_has_its_record_saved(tmp_path: Path) -> None:
    """The waiting task stays in the journal and its record is in the backend as PENDING;
    after the restart both tasks run and the counters show two successes."""
    path = tmp_path / "tasks.db"
    started, release = asyncio.Event(), asyncio.Event()

    def make() -> tuple[TaskManager, object]:
        manager = TaskManager(
            snapshot_db=str(path), requeue_pending=True, max_concurrent_tasks=1, **FAST
        )

        @manager.task(name="jobs.hold")
        async def hold() -> None:
            started.set()
            await release.wait()

        return manager, hold

    manager, hold = make()
    await manager.startup()
    manager.add_task(hold)
    waiting = manager.add_task(hold)
    await started.wait()
    await manager.shutdown()
    backend = SqliteBackend(path)
    await backend.open()
    try:
        saved = await backend.get_record(waiting.task_id)
        journal, _ = await backend.journal_page(None, 10)
    finally:
        await backend.close()
    assert saved is not None
    assert saved.status is TaskStatus.PENDING
    assert waiting.task_id in {entry.task_id for entry in journal}

    again, _ = make()
    release.set()
    await again.startup()
    try:
        await again.join(timeout=5)
        metrics = again.metrics()
    finally:
        await again.shutdown()
    assert (metrics["success"], metrics["pending"], metrics["total"]) == (2, 0, 2)
