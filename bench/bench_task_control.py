"""Benchmark of task control: a priority fan-out through a named queue, and set_progress.

Measures, in one run:

* 20,000 no-op async tasks added to a named queue (concurrency 64) with priorities 0..9:
  the time to enqueue them all, the time until all have finished, and tasks per second.
  Checked: every task succeeded, none ran above the cap, and the start order respected
  priority (each task started no earlier than any waiting lower-priority task).
* the cost of ``set_progress`` in a tight loop inside an async task and inside a thread task
  (per call, in microseconds), and how many change notifications the throttle let through.

Run: ``.venv/bin/python bench/bench_task_control.py [--tasks N] [--progress-calls N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import time
from typing import Any

from fastapi_taskflow import QueueConfig, TaskManager, TaskRecord, TaskStatus, set_progress

CONCURRENCY = 64


class Probe:
    """What the fan-out tasks report: concurrency and the priority order they started in."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.order: list[int] = []

    async def work(self, priority: int) -> None:
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.order.append(priority)
        await asyncio.sleep(0)
        self.running -= 1


async def fan_out(count: int) -> dict[str, Any]:
    probe = Probe()
    manager = TaskManager(queues={"fanout": QueueConfig(concurrency=CONCURRENCY)})
    await manager.startup()
    try:
        blocker = asyncio.Event()
        # Hold every slot first so the whole batch queues, then let priority decide the order.
        holders = [manager.add_task(blocker.wait, queue="fanout") for _ in range(CONCURRENCY)]
        start = time.perf_counter()
        for i in range(count):
            manager.add_task(probe.work, i % 10, queue="fanout", priority=i % 10)
        enqueued = time.perf_counter() - start
        blocker.set()
        await manager.join()
        total = time.perf_counter() - start
        counts = manager.store.counts()
    finally:
        await manager.shutdown()
    assert counts[TaskStatus.SUCCESS] == count + len(holders), counts
    assert probe.peak <= CONCURRENCY, probe.peak
    assert probe.order == sorted(probe.order, reverse=True), "priority order broken"
    return {
        "tasks": count,
        "enqueue_s": enqueued,
        "total_s": total,
        "per_s": count / total,
        "peak": probe.peak,
    }


async def progress_cost(calls: int) -> dict[str, Any]:
    manager = TaskManager()
    await manager.startup()
    notified = 0

    def listener(record: TaskRecord) -> None:
        nonlocal notified
        if record.status is TaskStatus.RUNNING:
            notified += 1

    manager.store.add_listener(listener)
    timings: dict[str, float] = {}

    async def async_loop() -> None:
        start = time.perf_counter()
        for i in range(calls):
            set_progress(i / calls, "working")
        timings["async"] = time.perf_counter() - start

    def thread_loop() -> None:
        start = time.perf_counter()
        for i in range(calls):
            set_progress(i / calls, "working")
        timings["thread"] = time.perf_counter() - start

    try:
        first = await manager.add_task(async_loop).wait()
        async_notified, notified = notified, 0
        second = await manager.add_task(thread_loop).wait()
        thread_notified = notified
    finally:
        await manager.shutdown()
    assert first.progress is not None
    assert second.progress is not None
    return {
        "calls": calls,
        "async_us": timings["async"] / calls * 1e6,
        "thread_us": timings["thread"] / calls * 1e6,
        "async_notified": async_notified,
        "thread_notified": thread_notified,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--progress-calls", type=int, default=100_000)
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"python {platform.python_version()} on {platform.machine()}")
    fan = asyncio.run(fan_out(options.tasks))
    print(
        f"fan-out: {fan['tasks']} tasks through queue 'fanout' (concurrency {CONCURRENCY}, "
        f"priorities 0..9): enqueue {fan['enqueue_s'] * 1000:.0f} ms "
        f"({fan['enqueue_s'] / fan['tasks'] * 1e6:.1f} us/task), all done in "
        f"{fan['total_s'] * 1000:.0f} ms = {fan['per_s']:,.0f} tasks/s, peak {fan['peak']}"
    )
    cost = asyncio.run(progress_cost(options.progress_calls))
    print(
        f"set_progress: {cost['calls']} calls: {cost['async_us']:.2f} us/call in an async "
        f"task ({cost['async_notified']} notifications), {cost['thread_us']:.2f} us/call in a "
        f"thread task ({cost['thread_notified']} notifications)"
    )


if __name__ == "__main__":
    main()
