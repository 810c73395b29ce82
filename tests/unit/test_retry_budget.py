"""The retry budget survives requeues: ``retries_used`` travels with the journal entry."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi_taskflow import TaskManager, TaskStatus
from fastapi_taskflow.backends.sqlite import SqliteBackend


async def test_a_requeued_task_keeps_its_retry_count_across_restarts(tmp_path: Path) -> None:
    """retries=2, interrupted by a clean shutdown in two runs: 3 counted attempts, not more."""
    path = tmp_path / "tasks.sqlite3"
    attempts: list[str] = []  # "failed" or "interrupted", in order, across the three runs
    task_id = None
    for run in range(3):
        manager = TaskManager(
            snapshot_backend=SqliteBackend(path), requeue_pending=True, drain_timeout=0.0
        )
        blocking = asyncio.Event()

        @manager.task(name="budget.flaky", retries=2, delay=0.0)
        async def flaky(run: int = run, blocking: asyncio.Event = blocking) -> None:
            # Each run: the first attempt fails, a second one hangs until shutdown stops it.
            if attempts and attempts[-1] == "failed" and run < 2:
                attempts.append("interrupted")
                blocking.set()
                await asyncio.Event().wait()
            attempts.append("failed")
            raise RuntimeError("boom")

        await manager.startup()
        try:
            if task_id is None:
                task_id = manager.add_task(flaky).task_id
            if run < 2:
                await asyncio.wait_for(blocking.wait(), 5)
            else:
                await manager.join(timeout=5)
                record = await manager.get_record(task_id)
                assert record is not None
                assert record.status is TaskStatus.FAILED
                assert record.retries_used == 2
        finally:
            await manager.shutdown()
    assert attempts.count("failed") == 3  # retries + 1
    assert attempts.count("interrupted") == 2  # plus the ones shutdowns interrupted
