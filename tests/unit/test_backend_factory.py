"""build_backend: the one factory behind snapshot_db=, the DI container and the CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fastapi_taskflow import (
    MemoryBackend,
    MySQLBackend,
    PostgresBackend,
    RedisBackend,
    SqliteBackend,
    TaskManager,
)
from fastapi_taskflow.backends.factory import BACKEND_KINDS, build_backend
from fastapi_taskflow.errors import ConfigurationError


def test_each_kind_builds_its_backend_unopened(tmp_path: Path) -> None:
    """Each kind builds its class with the options given, not opened."""
    assert isinstance(build_backend("memory"), MemoryBackend)
    sqlite = build_backend("sqlite", path=tmp_path / "t.db")
    assert isinstance(sqlite, SqliteBackend)
    assert not (tmp_path / "t.db").exists()
    redis = build_backend("redis", url="redis://:pw@host:1/0", prefix="app")
    assert isinstance(redis, RedisBackend)
    assert redis.describe() == "redis://:***@host:1/0"
    assert redis.key("records").startswith("app")
    postgres = build_backend("postgres", url="postgresql://u:pw@host/db", table_prefix="app_")
    assert isinstance(postgres, PostgresBackend)
    assert postgres.describe() == "postgresql://u:***@host/db (tables app_*)"
    mysql = build_backend("mysql", url="mysql://u:pw@host/db")
    assert isinstance(mysql, MySQLBackend)
    assert BACKEND_KINDS == ("memory", "sqlite", "redis", "postgres", "mysql")


def test_unknown_kind_is_a_configuration_error() -> None:
    """A kind that does not exist names the kinds that do."""
    with pytest.raises(ConfigurationError, match=r"memory, sqlite, redis.*'mongo'"):
        build_backend("mongo")  # type: ignore[arg-type]


def test_missing_driver_is_a_configuration_error_naming_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A backend whose driver is not installed fails with the package to install."""
    monkeypatch.delitem(sys.modules, "fastapi_taskflow.backends.redis", raising=False)
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ConfigurationError, match="'redis' backend needs the package 'redis"):
        build_backend("redis", url="redis://localhost:6379/0")


def test_manager_snapshot_db_builds_through_the_factory(tmp_path: Path) -> None:
    """TaskManager(snapshot_db=...) gets the SQLite backend build_backend makes for that path."""
    manager = TaskManager(snapshot_db=str(tmp_path / "tasks.db"))
    assert isinstance(manager.backend, SqliteBackend)
    assert str(tmp_path / "tasks.db") in manager.backend.describe()
