"""One instance for the cross-process results test: runs a report task on a shared SQLite
file, prints its task id, and stops (its shutdown writes the finished record).

Usage: python result_worker.py <db> <report id>
"""

from __future__ import annotations

import asyncio
import sys

import result_tasks

from fastapi_taskflow import TaskManager
from fastapi_taskflow.backends.sqlite import SqliteBackend


async def run(db: str, report_id: int) -> None:
    manager = TaskManager(snapshot_backend=SqliteBackend(db))
    manager.task(name="report", executor="thread")(result_tasks.report)
    await manager.startup()
    handle = manager.add_task(result_tasks.report, report_id)
    await handle.wait()
    await manager.shutdown()
    print(handle.task_id, flush=True)


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1], int(sys.argv[2])))
