"""Task logs through the manager: JSON lines with the full id; an unwritable file fails no task."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastapi_taskflow import TaskManager, TaskStatus, task_log


@pytest.fixture
def unwritable_log(tmp_path: Path) -> Iterator[Path]:
    """A log path in a read-only place (a 0o555 folder; /sys when root ignores modes)."""
    if os.geteuid() == 0:
        yield Path("/sys/taskflow-test/tasks.log")
        return
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder / "tasks.log"
    folder.chmod(0o755)


async def test_json_lines_from_the_manager_carry_the_full_task_id(tmp_path: Path) -> None:
    """log_file=...: every line parses as JSON and names the task by its full 36-char id."""
    path = tmp_path / "tasks.log"
    manager = TaskManager(log_file=str(path), log_lifecycle=True)

    @manager.task(name="reports.build")
    async def build(month: str) -> None:
        task_log("building", month=month, rows=3)

    await manager.startup()
    handle = manager.add_task(build, "2025-01")
    await manager.join()
    await manager.shutdown()

    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(handle.task_id) == 36
    assert {line["task_id"] for line in lines} == {handle.task_id}
    (log,) = [line for line in lines if line.get("message") == "building"]
    assert (log["func_name"], log["month"], log["rows"]) == ("reports.build", "2025-01", 3)
    assert [line["status"] for line in lines if "status" in line][-1] == "success"


async def test_unwritable_log_file_never_fails_a_task(
    unwritable_log: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A log file that cannot be opened is reported once; the tasks still succeed."""
    manager = TaskManager(log_file=str(unwritable_log), log_lifecycle=True)

    @manager.task()
    async def work(n: int) -> int:
        task_log("step", n=n)
        return n

    caplog.set_level(logging.ERROR)
    await manager.startup()
    handles = [manager.add_task(work, n) for n in range(5)]
    await manager.join()
    await manager.shutdown()

    assert [h.status for h in handles] == [TaskStatus.SUCCESS] * 5
    reports = [r for r in caplog.records if str(unwritable_log) in r.getMessage()]
    assert len(reports) == 1
