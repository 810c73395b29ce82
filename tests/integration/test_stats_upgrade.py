"""Data written before the backends kept stats gets them once, at the first open."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from fastapi_taskflow.backends.redis import RedisBackend
from fastapi_taskflow.backends.sqlite import SqliteBackend
from fastapi_taskflow.models import TaskStatus
from sqlite_files import sqlite_file

# The record table of schema version 1 (no duration column, no stats tables).
V1_SCHEMA = """
CREATE TABLE tf_schema (version INTEGER NOT NULL);
INSERT INTO tf_schema VALUES (1);
CREATE TABLE tf_records (
    task_id TEXT PRIMARY KEY, func_name TEXT NOT NULL, status TEXT NOT NULL,
    queue TEXT NOT NULL, created_at REAL NOT NULL, end_time REAL, error TEXT,
    data TEXT NOT NULL
);
"""


def v1_row(task_id: str, status: str, queue: str, start: float, end: float | None) -> tuple:
    doc = {
        "task_id": task_id,
        "func_name": "jobs.x",
        "status": status,
        "created_at": "2025-01-01T12:00:00+00:00",
        "start_time": "2025-01-01T12:00:00+00:00",
        "queue": queue,
    }
    if end is not None:
        doc["end_time"] = f"2025-01-01T12:00:0{int(end - start)}+00:00"
    return (task_id, "jobs.x", status, queue, start, end, None, json.dumps(doc))


async def test_a_version_1_sqlite_file_gets_its_stats_on_open(tmp_path: Path) -> None:
    """Opening a schema-1 file adds the duration column and counts its rows once."""
    path = tmp_path / "old.db"
    start = 1735732800.0  # 2025-01-01T12:00:00Z
    with sqlite_file(path) as db:
        db.executescript(V1_SCHEMA)
        db.executemany(
            "INSERT INTO tf_records VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                v1_row("a", "success", "default", start, start + 2),
                v1_row("b", "failed", "mail", start, start + 4),
                v1_row("c", "pending", "default", start, None),
            ],
        )
    backend = SqliteBackend(path)
    await backend.open()
    try:
        stats = await backend.read_stats()
        assert stats.counts[TaskStatus.SUCCESS] == 1
        assert stats.counts[TaskStatus.PENDING] == 1
        assert stats.queue("mail")[TaskStatus.FAILED] == 1
        assert stats.durations.total == 2
        assert abs(stats.durations.sum - 6.0) < 1e-3
    finally:
        await backend.close()
    again = SqliteBackend(path)
    await again.open()  # a second open does not count them again
    try:
        assert (await again.read_stats()).counts[TaskStatus.SUCCESS] == 1
    finally:
        await again.close()


@pytest.mark.redis
async def test_redis_records_written_without_stats_are_counted_at_the_first_open(
    redis_url: str, redis_prefix: str
) -> None:
    """Records whose index predates the stats are counted once, by the first open."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await client.hset(
            f"{redis_prefix}:info",
            mapping={
                "a": json.dumps(["success", "jobs.x", "default"]),
                "b": json.dumps(["failed", "jobs.x", "mail"]),
            },
        )
    finally:
        await client.aclose()
    for _ in range(2):
        backend = RedisBackend(redis_url, prefix=redis_prefix)
        await backend.open()
        try:
            stats = await backend.read_stats()
            assert stats.counts[TaskStatus.SUCCESS] == 1
            assert stats.queue("mail")[TaskStatus.FAILED] == 1
        finally:
            await backend.close()
