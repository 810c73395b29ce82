"""The write buffer under a flood: is ``max_buffered`` a bound when the backend is merely slow?

    .venv/bin/python bench/bench_write_buffer.py [--tasks 300000] [--chunk 1000] [--journaled]

Pushes ``--tasks`` tiny tasks into a manager on a fresh SQLite file, ``--chunk`` per loop tick
(unpaced: nothing waits for the backend), samples ``buffered_writes`` and the process's resident
memory every tick, and reports the peaks, ``dropped_writes``, how many rows were committed while
the flood lasted, and the totals once everything settled. Exits non-zero when the peak buffer
exceeds ``max_buffered`` (100,000 by default).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

from fastapi_taskflow import TaskManager


def rss_mb() -> float:
    """Resident set size of this process now, in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def committed_rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM tf_records").fetchone()[0])


async def flood(tasks: int, chunk: int, journaled: bool) -> int:
    folder = tempfile.mkdtemp(prefix="tf-buffer-")
    path = Path(folder) / "tasks.db"
    manager = TaskManager(snapshot_db=str(path), requeue_pending=journaled, snapshot_interval=5.0)

    @manager.task(name="bench.tiny")
    async def tiny(n: int) -> int:
        return n

    await manager.startup()
    bound = manager.persister.settings.max_buffered if manager.persister else 0
    rss_start = rss_mb()
    peak_buffer = 0
    peak_rss = rss_start
    started = time.perf_counter()
    for start in range(0, tasks, chunk):
        for n in range(start, min(start + chunk, tasks)):
            manager.add_task(tiny, n)
        await asyncio.sleep(0)
        peak_buffer = max(peak_buffer, manager.metrics()["buffered_writes"])
        peak_rss = max(peak_rss, rss_mb())
    pushed = time.perf_counter() - started
    during = committed_rows(path)
    await manager.join()
    peak_buffer = max(peak_buffer, manager.metrics()["buffered_writes"])
    metrics = manager.metrics()
    await manager.shutdown()
    settled = time.perf_counter() - started
    final_rows = committed_rows(path)
    print(f"tasks {tasks:,}, {chunk:,} per tick, journaled={journaled}, max_buffered={bound:,}")
    print(f"pushed in {pushed:.2f} s, all ran and written in {settled:.2f} s")
    print(f"peak buffered_writes {peak_buffer:,} (bound {bound:,})")
    failures = metrics["backend_write_failures"]
    print(f"dropped_writes {metrics['dropped_writes']:,}, write failures {failures}")
    print(f"rows committed during the flood {during:,}; at the end {final_rows:,}")
    print(f"RSS {rss_start:.0f} MB before, peak {peak_rss:.0f} MB, {rss_mb():.0f} MB after")
    return 0 if peak_buffer <= bound else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300_000)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--journaled", action="store_true", help="requeue_pending=True")
    args = parser.parse_args()
    raise SystemExit(asyncio.run(flood(args.tasks, args.chunk, args.journaled)))


if __name__ == "__main__":
    main()
