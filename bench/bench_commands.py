"""Command latency across instances: a cancel or a queue change made on instance B, until it has
taken effect on instance A, through the backend's command channel.

Two managers in one process, each with its own backend object (its own SQLite connection to one
file, its own Redis client on one prefix of a real redis-server), so every command crosses the
backend as between two processes. Per sample:

* cancel: A runs a task that waits forever; B's ``cancel_anywhere`` is timed until A's record
  is CANCELLED (B's answer, naming A, comes back in the same time);
* queue change: B's ``change_queue`` is timed until A's queue has the new concurrency.

A random pause before each sample keeps the samples out of step with SQLite's 0.1 s polls.

Each figure is checked: every cancel must have reached A (status CANCELLED, answer "owner").
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fastapi_taskflow import QueueConfig, TaskManager, TaskRegistry, TaskStatus
from fastapi_taskflow.backends.base import TaskBackend
from fastapi_taskflow.backends.sqlite import SqliteBackend
from fastapi_taskflow.control import cancel_anywhere

registry = TaskRegistry()


STARTED: list[asyncio.Event] = []


@registry.task(name="bench.forever")
async def forever() -> None:
    STARTED[-1].set()
    await asyncio.Event().wait()


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure(make: Callable[[], TaskBackend], samples: int) -> dict[str, list[float]]:
    options = {"registry": registry, "queues": {"q": QueueConfig(concurrency=1)}}
    a, b = (
        TaskManager(snapshot_backend=make(), **options),
        TaskManager(snapshot_backend=make(), **options),
    )
    await a.startup()
    await b.startup()
    cancels: list[float] = []
    queue_changes: list[float] = []
    try:
        # Polling is the observation here: nothing on B signals A's first announcement.
        while len(await b.instances()) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        for _ in range(samples):
            await asyncio.sleep(random.uniform(0, 0.1))  # not in step with the channel's polls
            STARTED.append(asyncio.Event())
            handle = a.add_task(forever)
            await STARTED[-1].wait()
            start = time.perf_counter()
            outcome = await cancel_anywhere(b, handle.task_id)
            record = await handle.wait(timeout=5)
            cancels.append(time.perf_counter() - start)
            assert (outcome.where, outcome.instance_id) == ("owner", a.instance_id)
            assert record.status is TaskStatus.CANCELLED
        for n in range(samples):
            wanted = 2 + n % 50
            await asyncio.sleep(random.uniform(0, 0.1))
            start = time.perf_counter()
            await b.change_queue("q", concurrency=wanted)
            # Polled: a queue's caps changing raises no event to wait for.
            while a.queue_stats()["q"]["concurrency"] != wanted:  # noqa: ASYNC110
                await asyncio.sleep(0.0005)
            queue_changes.append(time.perf_counter() - start)
    finally:
        await b.shutdown()
        await a.shutdown()
    return {"cancel": cancels, "queue change": queue_changes}


def report(name: str, figures: dict[str, list[float]]) -> None:
    for what, samples in figures.items():
        ms = [s * 1000 for s in samples]
        print(
            f"{name:7} {what:13} p50 {statistics.median(ms):7.2f} ms   "
            f"p99 {percentile(ms, 0.99):7.2f} ms   max {max(ms):7.2f} ms   ({len(ms)} samples)"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.sqlite3"
        report("sqlite", await measure(lambda: SqliteBackend(path), args.samples))
    from fastapi_taskflow.backends.redis import RedisBackend
    from servers import redis_url_if_installed

    with redis_url_if_installed() as url:
        if url is None:
            print("redis: skipped (no redis-server binary)")
            return
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        figures = await measure(lambda: RedisBackend(url, prefix=prefix), args.samples)
    report("redis", figures)


if __name__ == "__main__":
    asyncio.run(main())
