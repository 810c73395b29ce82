"""Fixtures shared by the unit tests: an isolated settings folder, and backends for the tests
that run on every backend (memory, a real SQLite file, a real redis-server, PostgreSQL and
MariaDB)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from control_helpers import BackendFactory, SharedMemoryBackend

from fastapi_taskflow.backends.base import TaskBackend
from fastapi_taskflow.backends.mysql import MySQLBackend
from fastapi_taskflow.backends.postgres import PostgresBackend
from fastapi_taskflow.backends.redis import RedisBackend
from fastapi_taskflow.backends.sqlite import SqliteBackend

REAL = [
    "memory",
    "sqlite",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mysql", marks=pytest.mark.mysql),
]


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty working folder and no TASKFLOW_* variables: settings see only what a test sets."""
    for name in list(os.environ):
        if name.upper().startswith("TASKFLOW_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


async def _factory(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[BackendFactory]:
    made: list[TaskBackend] = []
    memory = SharedMemoryBackend()
    url = prefix = ""
    # Resolved before the test body runs (the servers are session-wide).
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")
    elif kind == "postgres":
        url = request.getfixturevalue("postgres_server").url
        prefix = request.getfixturevalue("table_prefix")
    elif kind == "mysql":
        url = request.getfixturevalue("mariadb_server").url_for("taskflow")
        prefix = request.getfixturevalue("table_prefix")

    def new() -> TaskBackend:
        backend: TaskBackend
        if kind == "memory":
            backend = memory
        elif kind == "sqlite":
            backend = SqliteBackend(tmp_path / "shared.sqlite3")
        elif kind == "redis":
            backend = RedisBackend(url, prefix=prefix)
        elif kind == "postgres":
            backend = PostgresBackend(url, table_prefix=prefix, max_size=4)
        else:
            backend = MySQLBackend(url, table_prefix=prefix, max_size=4)
        made.append(backend)
        return backend

    yield new
    for backend in made:
        await backend.close()


@pytest.fixture(params=REAL)
async def shared_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[BackendFactory]:
    """A factory of backend objects over one store, as separate instances hold them.

    memory: one shared-memory object (it cannot be shared between objects); sqlite: a new
    connection to one real file each call; redis: a new client on one key prefix of a real
    redis-server. Every object made is closed at the end (give managers close_backend=False).
    """
    async for factory in _factory(request.param, request, tmp_path):
        yield factory


@pytest.fixture(params=["none", *REAL])
async def maybe_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[[], dict[str, object]]]:
    """Manager options for no backend at all, or for each backend of ``shared_backend``."""
    if request.param == "none":
        yield dict
        return
    async for factory in _factory(request.param, request, tmp_path):
        yield lambda made=factory: {"snapshot_backend": made(), "close_backend": False}
