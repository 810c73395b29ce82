"""Retention on a real SQLite file: batched deletes, space given back, a settable interval."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fastapi_taskflow import SqliteBackend, TaskManager
from fastapi_taskflow.backends import sqlite as sqlite_module
from fastapi_taskflow.models import TaskRecord, TaskStatus

LONG_AGO = datetime.now(UTC) - timedelta(days=30)


def _old_records(count: int, prefix: str = "old") -> list[TaskRecord]:
    return [
        TaskRecord(
            f"{prefix}-{n:06d}",
            "jobs.report",
            status=TaskStatus.SUCCESS,
            created_at=LONG_AGO,
            start_time=LONG_AGO,
            end_time=LONG_AGO,
            args=("r" * 1000,),
        )
        for n in range(count)
    ]


def _size(path: Path) -> int:
    return os.path.getsize(path)


class WalWatcher:
    """Samples the size of the write-ahead log from a thread while a delete runs."""

    def __init__(self, db: Path) -> None:
        self.wal = Path(f"{db}-wal")
        self.largest = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):  # not there between checkpoints
                self.largest = max(self.largest, os.path.getsize(self.wal))
            time.sleep(0.0005)

    def __enter__(self) -> WalWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def test_a_large_delete_keeps_the_log_small_and_shrinks_the_file(tmp_path: Path) -> None:
    """Deleting 8,000 rows (~10 MB) runs in batches (the log stays a few MB) and the file
    gives the space back."""
    path = tmp_path / "tasks.db"
    backend = SqliteBackend(path)
    await backend.open()
    for start in range(0, 8000, 2000):
        await backend.save_records(_old_records(2000, prefix=f"old{start}"))
    await backend.save_records(_old_records(10, prefix="new"))  # kept: see the cutoff below
    await backend.compact()
    before = _size(path)
    assert before > 8_000_000
    with WalWatcher(path) as watcher:
        deleted = await backend.delete_records_before(LONG_AGO + timedelta(seconds=1))
    assert deleted == 8010
    after = _size(path)
    await backend.close()
    assert watcher.largest < before / 3, (watcher.largest, before)
    assert after < before / 4, (after, before)


async def test_deleting_fewer_rows_than_a_batch_gives_space_back(tmp_path: Path) -> None:
    """A delete smaller than one batch still ends with no free pages left in the file."""
    path = tmp_path / "tasks.db"
    backend = SqliteBackend(path)
    await backend.open()
    await backend.save_records(_old_records(sqlite_module.DELETE_BATCH // 2))
    assert await backend.delete_records_before(datetime.now(UTC)) == sqlite_module.DELETE_BATCH // 2
    free = (await backend._fetch("PRAGMA freelist_count"))[0][0]
    await backend.close()
    assert free == 0


async def test_prune_interval_is_a_setting(tmp_path: Path) -> None:
    """With prune_interval=0.2, records older than retention_days written while the app runs
    are deleted within a few intervals, not after an hour."""
    path = tmp_path / "tasks.db"
    manager = TaskManager(snapshot_db=str(path), retention_days=1, prune_interval=0.2)
    await manager.startup()
    try:
        assert manager.backend is not None
        await manager.backend.save_records(_old_records(5))
        deadline = time.monotonic() + 5
        while (await manager.backend.count_by_status()).get("success", 0):
            assert time.monotonic() < deadline, "the periodic prune did not run"
            await asyncio.sleep(0.05)
    finally:
        await manager.shutdown()


def test_bad_durability_settings_name_the_key() -> None:
    """prune_interval, barrier_timeout and max_buffered must be positive: the error names it."""
    for key, value in (("prune_interval", 0), ("barrier_timeout", -1), ("max_buffered", 1.5)):
        with pytest.raises(ValueError, match=key):
            TaskManager(**{key: value})
