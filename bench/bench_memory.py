"""Memory benchmark: the bytes one finished task keeps alive in an in-memory manager.

Runs ``--tasks`` no-op tasks (no arguments, no tags, no result) through a ``TaskManager``
whose ``max_history`` keeps them all, waits with ``join()``, collects garbage and reads
``tracemalloc``'s current total; the figure is that total minus the one taken before the
tasks were added, divided by the number of tasks. It is everything a finished task leaves
behind: its record, its id, its entries in the store's indexes, and whatever else still
refers to it. The task handles are dropped as they are made, as a route drops them.

A first burst of as many tasks on a throwaway manager runs before the measure: asyncio's own
set of live tasks grows with a burst and never shrinks, and that is asyncio's, not the
record's. What the manager keeps of its own burst (its job table, sized for the peak) counts.

Usage: python bench/bench_memory.py [--tasks 20000] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tracemalloc

from fastapi_taskflow import TaskManager

TARGET_BYTES = 500  # per finished record


class Counter:
    def __init__(self) -> None:
        self.n = 0

    async def hit(self) -> None:
        self.n += 1


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"benchmark verification failed: {message}")


async def burst(tasks: int) -> None:
    counter = Counter()
    manager = TaskManager(max_history=1)
    manager.task()(counter.hit)
    await manager.startup()
    for _ in range(tasks):
        manager.add_task(counter.hit)
    await manager.join()
    await manager.shutdown()
    check(counter.n == tasks, f"warm-up burst ran {counter.n} of {tasks} tasks")


async def bytes_per_record(tasks: int) -> float:
    await burst(tasks)
    counter = Counter()
    manager = TaskManager(max_history=tasks + 1)
    manager.task()(counter.hit)
    await manager.startup()
    try:
        manager.add_task(counter.hit)  # warm-up: first-use caches are not per task
        await manager.join()
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(tasks):
            manager.add_task(counter.hit)
        await manager.join()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        check(counter.n == tasks + 1, f"ran {counter.n} of {tasks + 1} tasks")
        check(len(manager.store) == tasks + 1, "every finished record kept in memory")
        check(manager.metrics()["success"] == tasks + 1, "every task succeeded")
    finally:
        await manager.shutdown()
    return (after - before) / tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    tracemalloc.start()
    samples = [asyncio.run(bytes_per_record(args.tasks)) for _ in range(args.reps)]
    tracemalloc.stop()
    median = statistics.median(samples)
    print(
        f"bytes per finished record ({args.tasks} tasks, median of {args.reps}, Python "
        f"{sys.version.split()[0]}): {median:.0f}  (samples: "
        + ", ".join(f"{s:.0f}" for s in samples)
        + f"; target <= {TARGET_BYTES})"
    )


if __name__ == "__main__":
    main()
