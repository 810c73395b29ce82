"""Results and rate limits: what keeping a return value costs, and what a rate-limited queue
costs when its limit is never reached, next to plain FastAPI and a bare asyncio floor.

Scenarios (medians of ``--reps`` runs; every figure is printed after its work was verified):

  per request (one task each, httpx ASGI transport)
    plain          FastAPI's ``BackgroundTasks``
    managed-none   ``Depends(task_manager.get_tasks)``, the task returns None (nothing kept)
    managed-small  the same, the task returns a small dict (kept on the record)
    managed-100k   the same, the task returns 100 KB of bytes (kept)
    managed-rate   the task returns None and has ``rate_limit`` far above the load

  per task (``n`` tasks added by ``add_task`` in one go, until all have run)
    floor          bare ``asyncio.create_task`` of a no-op coroutine
    none / small / 100k / rate    as above, without the HTTP layer
    rate-sqlite    rate-limited on a SQLite backend (one transaction per start)

Usage: python bench/bench_results_rates.py [--quick] [--reps N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from fastapi import BackgroundTasks, Depends, FastAPI

from fastapi_taskflow import ManagedBackgroundTasks, RateLimit, TaskManager
from fastapi_taskflow.backends.sqlite import SqliteBackend

SMALL = {"ok": True, "pages": 3, "id": "r-1"}
LARGE = os.urandom(100 * 1024)
NEVER_REACHED = RateLimit(1_000_000, per=1.0)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"benchmark verification failed: {message}")


class Counter:
    def __init__(self) -> None:
        self.n = 0


def make_job(counter: Counter, value: Any) -> Callable[[], Awaitable[Any]]:
    async def job() -> Any:
        counter.n += 1
        return value

    return job


async def floor(n: int) -> float:
    counter = Counter()
    job = make_job(counter, None)
    gc.collect()
    start = time.perf_counter()
    await asyncio.gather(*(asyncio.create_task(job()) for _ in range(n)))
    elapsed = time.perf_counter() - start
    check(counter.n == n, f"floor ran {counter.n} of {n}")
    return elapsed / n * 1e6


async def per_task(n: int, value: Any, rate: bool, backend_dir: str | None) -> float:
    counter = Counter()
    backend = (
        SqliteBackend(Path(backend_dir) / f"b{time.monotonic_ns()}.db") if backend_dir else None
    )
    manager = TaskManager(max_history=n, snapshot_backend=backend)
    job = manager.task(rate_limit=NEVER_REACHED if rate else None)(make_job(counter, value))
    await manager.startup()
    try:
        gc.collect()
        start = time.perf_counter()
        handles = [manager.add_task(job) for _ in range(n)]
        await manager.join()
        elapsed = time.perf_counter() - start
        check(counter.n == n, f"per-task ran {counter.n} of {n}")
        kept = sum(h.record.has_result for h in handles)
        check(kept == (n if value is not None else 0), f"{kept} results kept of {n}")
    finally:
        await manager.shutdown()
    return elapsed / n * 1e6


async def timed_posts(app: FastAPI, requests: int, settle: Callable[[], Awaitable[None]]) -> float:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        await client.post("/work")
        await settle()
        gc.collect()
        start = time.perf_counter()
        for _ in range(requests):
            await client.post("/work")
        await settle()
        elapsed = time.perf_counter() - start
    return elapsed / requests * 1e6


async def plain_requests(requests: int) -> float:
    counter = Counter()
    job = make_job(counter, None)
    app = FastAPI()

    @app.post("/work")
    async def work(background_tasks: BackgroundTasks) -> dict[str, bool]:
        background_tasks.add_task(job)
        return {"ok": True}

    async def nothing() -> None:
        return None

    per_request = await timed_posts(app, requests, nothing)
    check(counter.n == requests + 1, f"plain ran {counter.n}")
    return per_request


async def managed_requests(requests: int, value: Any, rate: bool) -> float:
    counter = Counter()
    manager = TaskManager(max_history=requests + 1)
    job = manager.task(rate_limit=NEVER_REACHED if rate else None)(make_job(counter, value))
    app = FastAPI()

    @app.post("/work")
    async def work(
        tasks: ManagedBackgroundTasks = Depends(manager.get_tasks),  # noqa: B008
    ) -> dict[str, bool]:
        tasks.add_task(job)
        return {"ok": True}

    await manager.startup()
    try:
        per_request = await timed_posts(app, requests, manager.join)
    finally:
        await manager.shutdown()
    check(counter.n == requests + 1, f"managed ran {counter.n}")
    return per_request


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=5)
    options = parser.parse_args()
    requests = 500 if options.quick else 2000
    n = 2000 if options.quick else 10_000
    reps = 2 if options.quick else options.reps
    tmp = tempfile.mkdtemp(prefix="bench-results-")
    scenarios: list[tuple[str, str, Callable[[], Awaitable[float]]]] = [
        ("plain", "us/request", lambda: plain_requests(requests)),
        ("managed-none", "us/request", lambda: managed_requests(requests, None, False)),
        ("managed-small", "us/request", lambda: managed_requests(requests, SMALL, False)),
        ("managed-100k", "us/request", lambda: managed_requests(requests, LARGE, False)),
        ("managed-rate", "us/request", lambda: managed_requests(requests, None, True)),
        ("floor", "us/task", lambda: floor(n)),
        ("none", "us/task", lambda: per_task(n, None, False, None)),
        ("small", "us/task", lambda: per_task(n, SMALL, False, None)),
        ("100k", "us/task", lambda: per_task(n // 10, LARGE, False, None)),
        ("rate", "us/task", lambda: per_task(n, None, True, None)),
        ("rate-sqlite", "us/task", lambda: per_task(n // 10, None, True, tmp)),
    ]
    samples: dict[str, list[float]] = {name: [] for name, _, _ in scenarios}
    for _ in range(reps):  # interleaved, so drift on a shared machine hits every scenario
        for name, _, run in scenarios:
            samples[name].append(await run())
    print(
        f"# {platform.node()} · {platform.processor() or platform.machine()} · "
        f"{os.cpu_count()} cpus · Python {sys.version.split()[0]} · "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · reps {reps}"
    )
    medians = {name: statistics.median(values) for name, values in samples.items()}
    for name, unit, _ in scenarios:
        spread = f"{min(samples[name]):.1f}-{max(samples[name]):.1f}"
        print(f"{name:14s} {medians[name]:9.1f} {unit:10s} (runs {spread})")
    print(
        f"result kept, small:  +{medians['small'] - medians['none']:.1f} us/task, "
        f"+{medians['managed-small'] - medians['managed-none']:.1f} us/request"
    )
    print(
        f"result kept, 100 KB: +{medians['100k'] - medians['none']:.1f} us/task, "
        f"+{medians['managed-100k'] - medians['managed-none']:.1f} us/request"
    )
    print(
        f"rate limit not reached: +{medians['rate'] - medians['none']:.1f} us/task, "
        f"+{medians['managed-rate'] - medians['managed-none']:.1f} us/request"
    )
    print(
        f"managed-none / plain: {medians['managed-none'] / medians['plain']:.2f}x; "
        f"none - floor: {medians['none'] - medians['floor']:.1f} us/task"
    )


if __name__ == "__main__":
    asyncio.run(main())
