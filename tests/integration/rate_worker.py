"""One instance for the cross-process rate limit test: runs ``count`` rate-limited tasks on a
shared SQLite file and appends each start time to a side file.

Usage: python rate_worker.py <db> <side file> <count> <limit> <start at (epoch seconds)>
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from fastapi_taskflow import TaskManager
from fastapi_taskflow.backends.sqlite import SqliteBackend


def note_start(side: str) -> None:
    with open(side, "a") as out:  # one short line: appends from two processes do not mix
        out.write(f"{time.time()!r} {os.getpid()}\n")


async def run(db: str, side: str, count: int, limit: str, start_at: float) -> None:
    manager = TaskManager(snapshot_backend=SqliteBackend(db))

    @manager.task(name="shared-limited", rate_limit=limit)
    async def work(n: int) -> int:
        note_start(side)
        return n

    await manager.startup()
    # Both processes begin enqueueing at the same moment, so their tasks compete.
    await asyncio.sleep(max(0.0, start_at - time.time()))
    for n in range(count):
        manager.add_task(work, n)
    await manager.join()
    await manager.shutdown()


if __name__ == "__main__":
    db, side, count, limit, start_at = sys.argv[1:6]
    asyncio.run(run(db, side, int(count), limit, float(start_at)))
