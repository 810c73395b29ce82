"""Damage in a real SQLite file is found at startup and by ``taskflow db check``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fastapi_taskflow import SqliteBackend, TaskManager
from fastapi_taskflow.backends.base import JournalEntry
from fastapi_taskflow.cli import build_app
from fastapi_taskflow.commands.common import ExitCode
from fastapi_taskflow.errors import ConfigurationError, DamagedDatabaseError
from fastapi_taskflow.serialization import encode_call
from sqlite_files import sqlite_file


async def _journaled_file(path: Path, count: int = 400) -> None:
    """A closed database whose journal spans several pages (the log checkpointed away)."""
    backend = SqliteBackend(path)
    await backend.open()
    entries = [
        JournalEntry(f"task-{n:05d}", "jobs.work", encode_call(("x" * 200,), {}), requeue=True)
        for n in range(count)
    ]
    await backend.journal_put(entries, owner="gone")
    await backend.close()


def _damage_table(path: Path, table: str) -> None:
    """Overwrite the root page of ``table`` with garbage, as a bad sector or a stray write."""
    with sqlite_file(path) as db:
        (root,) = db.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)
        ).fetchone()
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
    with path.open("r+b") as file:
        file.seek((root - 1) * page_size)
        file.write(b"\xde\xad\xbe\xef" * (page_size // 4))


@pytest.fixture
async def damaged(tmp_path: Path) -> Path:
    path = tmp_path / "tasks.db"
    await _journaled_file(path)
    _damage_table(path, "tf_journal")
    return path


async def test_startup_refuses_a_damaged_journal_naming_the_file(damaged: Path) -> None:
    """A damaged journal page stops startup with an error naming the file and the problem."""
    manager = TaskManager(snapshot_db=str(damaged), requeue_pending=True)
    with pytest.raises(DamagedDatabaseError) as caught:
        await manager.startup()
    message = str(caught.value)
    assert str(damaged) in message
    assert "quick_check" in message
    assert caught.value.problems


async def test_full_check_is_an_option_and_a_sound_file_opens(tmp_path: Path) -> None:
    """integrity_check="full" runs PRAGMA integrity_check; a sound file opens under every mode."""
    path = tmp_path / "tasks.db"
    await _journaled_file(path, count=10)
    for mode in ("off", "quick", "full"):
        backend = SqliteBackend(path, integrity_check=mode)
        await backend.open()
        assert len((await backend.journal_page(None, 100))[0]) == 10
        await backend.close()
    with pytest.raises(ConfigurationError, match="integrity_check"):
        SqliteBackend(path, integrity_check="sometimes")


async def test_check_off_opens_a_damaged_file(damaged: Path) -> None:
    """integrity_check="off" skips the check: the damaged file opens as it did before."""
    backend = SqliteBackend(damaged, integrity_check="off")
    await backend.open()
    await backend.close()


def test_db_check_command_reports_damage_with_a_nonzero_exit(damaged: Path) -> None:
    """`taskflow db check` says the file is damaged, what is wrong, and exits 6."""
    result = CliRunner().invoke(build_app(), ["db", "check", str(damaged)])
    assert result.exit_code == ExitCode.DAMAGED, result.output
    assert "DAMAGED" in result.output
    assert str(damaged) in result.output
    as_json = CliRunner().invoke(build_app(), ["db", "check", str(damaged), "--json", "--full"])
    report = json.loads(as_json.stdout)
    assert report["ok"] is False
    assert report["check"] == "integrity_check"
    assert any("Page" in problem for problem in report["problems"])


def test_db_check_command_on_a_sound_file(tmp_path: Path) -> None:
    """`taskflow db check` on a sound file exits 0, says ok and counts the journal."""
    path = tmp_path / "tasks.db"
    asyncio.run(_journaled_file(path, count=7))
    result = CliRunner().invoke(build_app(), ["db", "check", str(path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["tables"]["tf_journal"] == 7
    assert report["auto_vacuum"] == "incremental"


def test_db_check_command_on_a_missing_or_foreign_file(tmp_path: Path) -> None:
    """A missing file or one that is no database: exit 1 with the reason."""
    missing = CliRunner().invoke(build_app(), ["db", "check", str(tmp_path / "none.db")])
    assert missing.exit_code == ExitCode.ERROR
    assert "no database file" in missing.output
    foreign = tmp_path / "notes.db"
    foreign.write_bytes(b"not a database, just text" * 100)
    result = CliRunner().invoke(build_app(), ["db", "check", str(foreign)])
    assert result.exit_code == ExitCode.ERROR
    assert "not a readable SQLite database" in result.output
