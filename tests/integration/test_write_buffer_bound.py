"""The write buffer stays within max_buffered when SQLite is slow (its write lock held by
another connection), not only when it is down; the batch being written counts too."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from fastapi_taskflow import TaskManager, WriteBufferFullError
from sqlite_files import sqlite_file


async def test_a_slow_backend_keeps_the_buffer_within_its_bound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """2,000 tasks finish while the write lock is held: buffered_writes never exceeds
    max_buffered=500, the excess is dropped, counted and logged, and the rest is written."""
    caplog.set_level(logging.WARNING, "fastapi_taskflow.persistence")
    path = tmp_path / "tasks.db"
    manager = TaskManager(snapshot_db=str(path), max_buffered=500, snapshot_interval=60)

    @manager.task(name="jobs.tiny")
    async def tiny(n: int) -> int:
        return n

    await manager.startup()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    peak = 0
    try:
        for start in range(0, 2000, 100):
            for n in range(start, start + 100):
                manager.add_task(tiny, n)
            await asyncio.sleep(0.01)
            peak = max(peak, manager.metrics()["buffered_writes"])
        await manager.join()
        peak = max(peak, manager.metrics()["buffered_writes"])
    finally:
        other.execute("COMMIT")
        other.close()
    assert manager.persister is not None
    await manager.persister.drain()
    dropped = manager.metrics()["dropped_writes"]
    await manager.shutdown()
    with sqlite_file(path) as db:
        written = db.execute("SELECT COUNT(*) FROM tf_records").fetchone()[0]
    assert peak <= 500
    assert dropped >= 1500
    assert written + dropped == 2000
    assert any("max_buffered=500" in r.getMessage() for r in caplog.records)


async def test_journaled_tasks_past_the_bound_are_refused_not_buffered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With journal_backpressure and the lock held, journaled tasks past max_buffered=300 are
    refused with WriteBufferFullError (counted, logged, no record left behind), and every
    accepted task runs and is committed once the lock is released."""
    caplog.set_level(logging.WARNING, "fastapi_taskflow.persistence")
    path = tmp_path / "tasks.db"
    manager = TaskManager(
        snapshot_db=str(path), max_buffered=300, requeue_pending=True, journal_backpressure=True
    )
    release = asyncio.Event()

    @manager.task(name="jobs.wait")
    async def wait(n: int) -> int:
        await release.wait()
        return n

    await manager.startup()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    accepted, refused = [], 0
    try:
        for start in range(0, 1000, 50):
            for n in range(start, start + 50):
                try:
                    accepted.append(manager.add_task(wait, n).task_id)
                except WriteBufferFullError:
                    refused += 1
            await asyncio.sleep(0.01)
            assert manager.metrics()["buffered_writes"] <= 300
    finally:
        other.execute("COMMIT")
        other.close()
    release.set()
    await manager.join()
    metrics = manager.metrics()
    await manager.shutdown()
    assert refused > 0
    assert len(accepted) + refused == 1000
    assert metrics["refused_tasks"] == refused
    assert metrics["total"] == len(accepted)
    assert metrics["success"] == len(accepted)
    assert any("WriteBufferFullError" in r.getMessage() for r in caplog.records)
    with sqlite_file(path) as db:
        (written,) = db.execute("SELECT COUNT(*) FROM tf_records").fetchone()
    assert written == len(accepted)
