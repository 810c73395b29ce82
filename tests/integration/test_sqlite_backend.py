"""SqliteBackend specifics beyond the contract: file settings, schema, errors, query plans."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fastapi_taskflow.backends.base import RecordQuery
from fastapi_taskflow.backends.sqlite import SqliteBackend
from fastapi_taskflow.errors import BackendError, ConfigurationError
from fastapi_taskflow.models import TaskRecord, TaskStatus
from sqlite_files import sqlite_file


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[SqliteBackend]:
    backend = SqliteBackend(tmp_path / "nested" / "dir" / "tasks.db", synchronous="full")
    await backend.open()
    yield backend
    await backend.close()


async def test_open_creates_parent_and_sets_wal_and_synchronous(backend: SqliteBackend) -> None:
    """open() creates missing directories, turns WAL on and applies the synchronous level."""
    assert backend.path.exists()
    assert (await backend._fetch("PRAGMA journal_mode"))[0][0] == "wal"
    assert (await backend._fetch("PRAGMA synchronous"))[0][0] == 2  # FULL
    tables = {row[0] for row in await backend._fetch("SELECT name FROM sqlite_master")}
    expected = {"tf_records", "tf_journal", "tf_owners", "tf_keys", "tf_locks", "tf_meta"}
    assert expected | {"tf_schema"} <= tables
    assert backend.describe() == f"sqlite:{backend.path}"


async def test_records_survive_reopen(backend: SqliteBackend) -> None:
    """What one backend object wrote, a new one on the same file reads."""
    await backend.save_records([TaskRecord("t1", "app:f", status=TaskStatus.SUCCESS)])
    await backend.close()
    again = SqliteBackend(backend.path)
    await again.open()
    try:
        got = await again.get_record("t1")
        assert got is not None
        assert got.status is TaskStatus.SUCCESS
    finally:
        await again.close()


async def test_unopenable_file_raises_backend_error_naming_it(tmp_path: Path) -> None:
    """A path under a regular file cannot be opened: BackendError names the path."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    backend = SqliteBackend(blocker / "tasks.db")
    with pytest.raises(BackendError, match=re.escape("file/tasks.db")):
        await backend.open()


async def test_not_a_database_raises_backend_error(tmp_path: Path) -> None:
    """A file that is not SQLite raises BackendError, and the connection is closed."""
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database file" * 100)
    with pytest.raises(BackendError, match=re.escape("junk.db")):
        await SqliteBackend(path).open()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A file written by a newer schema version is refused instead of misread."""
    backend = SqliteBackend(tmp_path / "tasks.db")
    await backend.open()
    await backend.close()
    with sqlite_file(backend.path) as db:
        db.execute("UPDATE tf_schema SET version = 99")
    with pytest.raises(BackendError, match="schema version 99"):
        await backend.open()


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    """An unknown synchronous level or a negative busy timeout raises ConfigurationError."""
    with pytest.raises(ConfigurationError, match="synchronous"):
        SqliteBackend(tmp_path / "a.db", synchronous="SOMETIMES")
    with pytest.raises(ConfigurationError, match="busy_timeout"):
        SqliteBackend(tmp_path / "a.db", busy_timeout=-1)


async def test_unopened_backend_raises_backend_error(tmp_path: Path) -> None:
    """Using a backend before open() raises BackendError, not an AttributeError."""
    with pytest.raises(BackendError, match="not open"):
        await SqliteBackend(tmp_path / "a.db").get_record("x")


async def test_first_page_walks_the_index(backend: SqliteBackend) -> None:
    """The newest-first page query reads the index in order: no sort of the whole table."""
    from fastapi_taskflow.backends.sqlite import _where

    for query, after in ((RecordQuery(), None), (RecordQuery(), (1.0, "x"))):
        where, params = _where(query, after)
        plan = await backend._fetch(
            f"EXPLAIN QUERY PLAN SELECT task_id, data FROM tf_records{where}"
            " ORDER BY created_at DESC, task_id DESC LIMIT ?",
            [*params, 10],
        )
        detail = " ".join(str(row[3]) for row in plan)
        assert "tf_records_page" in detail
        assert "TEMP B-TREE" not in detail
