"""How long a finished journaled task can run again after a crash: from its end to the commit
that removes its journal entry (a kill inside that window runs it once more after restart).

    .venv/bin/python bench/bench_finish_window.py [--tasks 200] [--work 0.05] [--concurrency 4]

Durable SQLite (``requeue_pending=True``, ``synchronous=NORMAL``), the crash test's shape by
default: 200 tasks of 50 ms, 4 at a time. Each entry's removal is timed when its transaction
commits (wall clock, like the record's ``end_time``); prints the median, p99 and max window.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from fastapi_taskflow import SqliteBackend, TaskManager


class TimedBackend(SqliteBackend):
    """Notes the wall-clock time at which each journal removal committed."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.removed_at: dict[str, float] = {}

    async def _journal_delete(self, task_ids: list[str]) -> None:
        await super()._journal_delete(task_ids)
        now = time.time()
        for task_id in task_ids:
            self.removed_at[task_id] = now


async def measure(tasks: int, work: float, concurrency: int) -> list[float]:
    path = Path(tempfile.mkdtemp(prefix="tf-window-")) / "tasks.db"
    backend = TimedBackend(path)
    manager = TaskManager(
        snapshot_backend=backend, requeue_pending=True, max_concurrent_tasks=concurrency
    )

    @manager.task(name="bench.work")
    async def job(n: int) -> int:
        await asyncio.sleep(work)
        return n

    await manager.startup()
    handles = [manager.add_task(job, n) for n in range(tasks)]
    await manager.join()
    assert manager.persister is not None
    await manager.persister.drain()
    windows = []
    for handle in handles:
        record = manager.store.get(handle.task_id)
        assert record is not None
        assert record.end_time is not None
        windows.append((backend.removed_at[handle.task_id] - record.end_time.timestamp()) * 1000)
    await manager.shutdown()
    return windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--work", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    windows = sorted(asyncio.run(measure(args.tasks, args.work, args.concurrency)))
    p99 = windows[min(len(windows) - 1, int(len(windows) * 0.99))]
    print(
        f"{len(windows)} tasks of {args.work * 1000:g} ms, {args.concurrency} at a time: "
        f"end -> entry removed committed: median {statistics.median(windows):.2f} ms, "
        f"p99 {p99:.2f} ms, max {windows[-1]:.2f} ms"
    )


if __name__ == "__main__":
    main()
