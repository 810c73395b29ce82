"""A SQLite path that cannot be opened fails cleanly: one clear error, no thread traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from sqlite_files import sqlite_file

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from fastapi_taskflow import TaskManager
    from fastapi_taskflow.errors import BackendError

    async def main():
        try:
            await TaskManager(snapshot_db=sys.argv[1]).startup()
        except BackendError as exc:
            print("refused:", exc)

    asyncio.run(main())
    """
)


def test_a_directory_at_snapshot_db_is_one_clear_error(tmp_path: Path) -> None:
    """A directory at snapshot_db: a BackendError naming it, and nothing else on stderr."""
    folder = tmp_path / "tasks.db"
    folder.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(folder)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert f"refused: cannot open SQLite database {folder}: it is a directory" in done.stdout
    assert done.stderr == ""


async def test_two_connections_opening_an_older_file_at_once_both_open(tmp_path: Path) -> None:
    """Two instances opening one pre-WAL file together (workers starting at once) both open:
    the switch to WAL that fails at once with "database is locked" is tried again."""
    import asyncio

    from fastapi_taskflow.backends.sqlite import SqliteBackend

    for attempt in range(60):
        path = tmp_path / f"old-{attempt}.db"
        with sqlite_file(path) as older:  # a file made in the default rollback-journal mode
            older.execute("CREATE TABLE task_snapshots (task_id TEXT PRIMARY KEY, data TEXT)")
        first, second = SqliteBackend(str(path)), SqliteBackend(str(path))
        try:
            await asyncio.gather(first.open(), second.open())
        finally:
            await first.close()
            await second.close()
