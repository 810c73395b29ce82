"""The backend contract on every built-in backend, against real storage.

MemoryBackend; SqliteBackend on a real file (a second backend object on the same file plays
the other process); RedisBackend on a real ``redis-server`` the session starts (a fresh key
prefix per test); PostgresBackend and MySQLBackend on a real PostgreSQL and MariaDB the session
starts (a fresh table prefix per test). The tests themselves live in
``fastapi_taskflow.testing_contract``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from fastapi_taskflow.backends.base import TaskBackend
from fastapi_taskflow.backends.memory import MemoryBackend
from fastapi_taskflow.backends.mysql import MySQLBackend
from fastapi_taskflow.backends.postgres import PostgresBackend
from fastapi_taskflow.backends.redis import RedisBackend
from fastapi_taskflow.backends.sql import SqlBackend
from fastapi_taskflow.backends.sqlite import SqliteBackend
from fastapi_taskflow.testing_contract import GARBAGE, BackendContract
from sqlite_files import sqlite_file


async def _open(backend: TaskBackend) -> TaskBackend:
    await backend.open()
    return backend


class TestBuiltinBackends(BackendContract):
    """The contract on every built-in backend: memory, a file, and real servers."""

    @pytest.fixture(
        params=[
            "memory",
            "sqlite",
            pytest.param("redis", marks=pytest.mark.redis),
            pytest.param("postgres", marks=pytest.mark.postgres),
            pytest.param("mysql", marks=pytest.mark.mysql),
        ]
    )
    async def backend(
        self, request: pytest.FixtureRequest, tmp_path: Path
    ) -> AsyncIterator[TaskBackend]:
        if request.param == "memory":
            backend: TaskBackend = MemoryBackend()
        elif request.param == "sqlite":
            backend = SqliteBackend(tmp_path / "db" / "taskflow.sqlite3")
        elif request.param == "redis":
            url = request.getfixturevalue("redis_url")
            backend = RedisBackend(url, prefix=request.getfixturevalue("redis_prefix"))
        elif request.param == "postgres":
            backend = PostgresBackend(
                request.getfixturevalue("postgres_server").url,
                table_prefix=request.getfixturevalue("table_prefix"),
            )
        else:
            backend = MySQLBackend(
                request.getfixturevalue("mariadb_server").url_for("taskflow"),
                table_prefix=request.getfixturevalue("table_prefix"),
            )
        await backend.open()
        yield backend
        await backend.close()

    @pytest.fixture
    async def peer(self, backend: TaskBackend) -> AsyncIterator[TaskBackend]:
        if isinstance(backend, SqliteBackend):
            other: TaskBackend = await _open(SqliteBackend(backend.path))
        elif isinstance(backend, RedisBackend):
            other = await _open(RedisBackend(backend.url, prefix=backend.prefix))
        elif isinstance(backend, PostgresBackend | MySQLBackend):
            assert backend.url is not None
            kind = type(backend)
            other = await _open(kind(backend.url, table_prefix=backend.table_prefix))
        else:
            yield backend
            return
        yield other
        await other.close()

    async def write_corrupt_record(
        self, backend: TaskBackend, task_id: str, created_at: float
    ) -> None:
        """Bypass the backend: a raw INSERT, raw Redis commands, or the primitive."""
        if isinstance(backend, SqliteBackend):
            with sqlite_file(backend.path) as db:
                db.execute(
                    "INSERT INTO tf_records (task_id, func_name, status, queue, created_at, data)"
                    " VALUES (?, 'x', 'success', 'default', ?, ?)",
                    (task_id, created_at, GARBAGE),
                )
        elif isinstance(backend, RedisBackend):
            client = aioredis.Redis.from_url(backend.url)
            try:
                await client.set(backend.key("rec", task_id), GARBAGE)
                await client.zadd(backend.key("idx"), {task_id: created_at})
            finally:
                await client.aclose()
        elif isinstance(backend, SqlBackend):
            await backend.execute(
                "INSERT INTO {t}records (task_id, func_name, status, queue, created_at, data)"
                " VALUES (?, 'x', 'success', 'default', ?, ?)",
                [task_id, created_at, GARBAGE],
            )
        else:
            await super().write_corrupt_record(backend, task_id, created_at)
