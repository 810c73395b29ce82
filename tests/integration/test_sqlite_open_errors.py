"""A SQLite path that cannot be opened fails cleanly: one clear error, no thread traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

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
