"""Core benchmark: what a managed background task costs next to FastAPI's own, in one run.

Scenarios (each repeated, medians reported; every figure is printed only after the work it
measures was verified by exact counts):

  floor          bare ``asyncio.create_task`` of a no-op coroutine, per task
  plain          one request = one task through FastAPI's ``BackgroundTasks`` (httpx ASGI transport)
  managed-mem    the same through ``Depends(task_manager.get_tasks)``, in-memory manager
  managed-sqlite the same with ``snapshot_db`` (history written to a SQLite file)
  fan-out        one request adding 20,000 tasks; library cost per task (total and minus floor)
  metrics        ``GET /tasks/metrics`` with 50,000 records in the store

Usage: python bench/bench_core.py [--quick] [--reps N] [--profile SCENARIO]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import BackgroundTasks, Depends, FastAPI

from fastapi_taskflow import ManagedBackgroundTasks, TaskAdmin, TaskManager

TARGET_RATIO = 1.10  # managed per request-task vs plain BackgroundTasks
TARGET_FANOUT_RATIO = 1.3  # a task of the 20,000 fan-out vs a bare asyncio.create_task
TARGET_METRICS_MS = 1.0  # GET /tasks/metrics at 50,000 records


class Counter:
    """Counts task runs, so each scenario can prove its work was done."""

    def __init__(self) -> None:
        self.n = 0

    async def hit(self) -> None:
        self.n += 1


@dataclass
class Result:
    name: str
    unit: str
    samples: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"benchmark verification failed: {message}")


async def client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench")


# ---- scenarios -------------------------------------------------------------------------------


async def floor(n: int) -> float:
    """Microseconds per bare asyncio.create_task + run of a no-op coroutine."""
    counter = Counter()
    gc.collect()
    start = time.perf_counter()
    tasks = [asyncio.create_task(counter.hit()) for _ in range(n)]
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    check(counter.n == n, f"floor ran {counter.n} of {n} tasks")
    return elapsed / n * 1e6


async def timed_posts(
    app: FastAPI,
    counter: Counter,
    requests: int,
    settle: Callable[[], Awaitable[None]] | None = None,
) -> float:
    """Microseconds per POST /signup after one warm-up; ``settle`` (awaited after the warm-up
    and inside the timing) waits until the tasks have run when they run apart from requests."""
    async with await client_for(app) as client:
        await client.post("/signup")  # warm-up
        if settle is not None:
            await settle()
        counter.n = 0
        gc.collect()
        start = time.perf_counter()
        for _ in range(requests):
            await client.post("/signup")
        if settle is not None:
            await settle()
        elapsed = time.perf_counter() - start
    return elapsed / requests * 1e6


async def plain_requests(requests: int) -> float:
    """Microseconds per request adding one task through FastAPI's BackgroundTasks."""
    counter = Counter()
    app = FastAPI()

    @app.post("/signup")
    async def signup(background_tasks: BackgroundTasks) -> dict[str, bool]:
        background_tasks.add_task(counter.hit)
        return {"ok": True}

    per_request = await timed_posts(app, counter, requests)
    check(counter.n == requests, f"plain ran {counter.n} of {requests} tasks")
    return per_request


async def depends_requests(requests: int) -> float:
    """Plain BackgroundTasks reached through an async Depends: FastAPI's own cost of a Depends."""
    counter = Counter()
    app = FastAPI()

    async def get_background(background_tasks: BackgroundTasks) -> BackgroundTasks:
        return background_tasks

    @app.post("/signup")
    async def signup(
        background_tasks: BackgroundTasks = Depends(get_background),  # noqa: B008
    ) -> dict[str, bool]:
        background_tasks.add_task(counter.hit)
        return {"ok": True}

    per_request = await timed_posts(app, counter, requests)
    check(counter.n == requests, f"depends ran {counter.n} of {requests} tasks")
    return per_request


async def managed_requests(requests: int, snapshot_db: str | None) -> float:
    """Microseconds per request adding one task through Depends(task_manager.get_tasks)."""
    counter = Counter()
    task_manager = TaskManager(snapshot_db=snapshot_db)
    task_manager.task()(counter.hit)
    app = FastAPI()

    @app.post("/signup")
    async def signup(
        tasks: ManagedBackgroundTasks = Depends(task_manager.get_tasks),  # noqa: B008
    ) -> dict[str, bool]:
        tasks.add_task(counter.hit)
        return {"ok": True}

    await task_manager.startup()
    try:
        per_request = await timed_posts(app, counter, requests, settle=task_manager.join)
    finally:
        await task_manager.shutdown()
    check(counter.n == requests, f"managed ran {counter.n} of {requests} tasks")
    metrics = task_manager.metrics()
    check(metrics["success"] == requests + 1, f"managed counted {metrics['success']} successes")
    if snapshot_db is not None:
        with sqlite3.connect(snapshot_db) as db:
            (rows,) = db.execute("SELECT COUNT(*) FROM tf_records").fetchone()
        check(rows == requests + 1, f"snapshot_db holds {rows} of {requests + 1} records")
    return per_request


async def fan_out(n: int) -> float:
    """Microseconds per task for one request that adds ``n`` tasks, until all have run."""
    counter = Counter()
    task_manager = TaskManager(max_history=n)
    task_manager.task()(counter.hit)
    app = FastAPI()

    @app.post("/broadcast")
    async def broadcast(
        tasks: ManagedBackgroundTasks = Depends(task_manager.get_tasks),  # noqa: B008
    ) -> dict[str, int]:
        for _ in range(n):
            tasks.add_task(counter.hit)
        return {"queued": n}

    await task_manager.startup()
    try:
        async with await client_for(app) as client:
            gc.collect()
            start = time.perf_counter()
            response = await client.post("/broadcast")
            await task_manager.join()
            elapsed = time.perf_counter() - start
    finally:
        await task_manager.shutdown()
    check(response.json() == {"queued": n}, f"fan-out answered {response.text}")
    check(counter.n == n, f"fan-out ran {counter.n} of {n} tasks")
    check(task_manager.metrics()["success"] == n, "fan-out success count")
    return elapsed / n * 1e6


async def metrics_endpoint(records: int, calls: int) -> tuple[list[float], str]:
    """Milliseconds per metrics call with ``records`` finished records in the store."""
    counter = Counter()
    task_manager = TaskManager(max_history=records)
    task_manager.task()(counter.hit)
    app = FastAPI()
    TaskAdmin(app, task_manager)
    await task_manager.startup()
    samples: list[float] = []
    try:
        for _ in range(records):
            task_manager.add_task(counter.hit)
        await task_manager.join()
        check(counter.n == records, f"metrics setup ran {counter.n} of {records}")
        check(len(task_manager.store) == records, "all records kept in memory")
        how = "GET /tasks/metrics through httpx ASGITransport"
        async with await client_for(app) as client:
            first = await client.get("/tasks/metrics")
            check(first.status_code == 200, f"metrics answered {first.status_code}")
            for _ in range(calls):
                start = time.perf_counter()
                response = await client.get("/tasks/metrics")
                samples.append((time.perf_counter() - start) * 1e3)
            data = response.json()
        check(data["total"] == records, f"metrics total {data['total']} != {records}")
        check(data["success"] == records, f"metrics success {data['success']} != {records}")
    finally:
        await task_manager.shutdown()
    return samples, how


async def request_floor(calls: int) -> float:
    """Microseconds per request of a route doing nothing (the transport's own cost)."""
    app = FastAPI()

    @app.get("/nothing")
    async def nothing() -> dict[str, bool]:
        return {"ok": True}

    async with await client_for(app) as client:
        await client.get("/nothing")
        start = time.perf_counter()
        for _ in range(calls):
            await client.get("/nothing")
        return (time.perf_counter() - start) / calls * 1e6


# ---- the run ---------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu,
        "nproc": str(os.cpu_count()),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


async def run(reps: int, quick: bool) -> dict[str, Any]:
    requests = 300 if quick else 2000
    fan_n = 20_000
    records = 10_000 if quick else 50_000
    tmp = Path(tempfile.mkdtemp(prefix="taskflow-bench-"))
    results = {
        name: Result(name, unit)
        for name, unit in [
            ("floor", "us/task"),
            ("request-floor", "us/request"),
            ("plain", "us/request"),
            ("plain-depends", "us/request"),
            ("managed-mem", "us/request"),
            ("managed-sqlite", "us/request"),
            ("fan-out", "us/task"),
        ]
    }
    for rep in range(reps):
        # Interleaved, so drift (thermal, other load) hits every scenario alike.
        results["floor"].samples.append(await floor(fan_n))
        results["request-floor"].samples.append(await request_floor(requests))
        results["plain"].samples.append(await plain_requests(requests))
        results["plain-depends"].samples.append(await depends_requests(requests))
        results["managed-mem"].samples.append(await managed_requests(requests, None))
        db = str(tmp / f"bench-{rep}.db")
        results["managed-sqlite"].samples.append(await managed_requests(requests, db))
        results["fan-out"].samples.append(await fan_out(fan_n))
        print(f"  repetition {rep + 1}/{reps} done", file=sys.stderr)
    metrics_samples, how = await metrics_endpoint(records, 200)
    metrics = Result("metrics", "ms/call", metrics_samples, note=f"{records} records, {how}")
    return {"results": results, "metrics": metrics, "requests": requests, "fan_n": fan_n}


def report(data: dict[str, Any], reps: int) -> dict[str, Any]:
    r: dict[str, Result] = data["results"]
    floor_us = r["floor"].median
    plain = r["plain"].median
    mem = r["managed-mem"].median
    sql = r["managed-sqlite"].median
    fan = r["fan-out"].median
    fan_lib = fan - floor_us
    metrics_ms = data["metrics"].median
    info = machine()
    print()
    print(f"fastapi-taskflow core benchmark, {info['date']}")
    print(f"machine: {info['cpu']}, nproc={info['nproc']}, Python {info['python']}")
    print(
        f"medians of {reps} repetitions ({data['requests']} requests each; fan-out {data['fan_n']})"
    )
    print()
    rows = [
        ("bare asyncio.create_task (floor)", f"{floor_us:8.2f} us/task", ""),
        ("empty route (transport floor)", f"{r['request-floor'].median:8.1f} us/req", ""),
        ("plain BackgroundTasks", f"{plain:8.1f} us/req", "1.00x plain"),
        (
            "plain BackgroundTasks via Depends",
            f"{r['plain-depends'].median:8.1f} us/req",
            f"{r['plain-depends'].median / plain:.3f}x plain (FastAPI's own Depends cost)",
        ),
        (
            "Depends(get_tasks), memory",
            f"{mem:8.1f} us/req",
            f"{mem / plain:.3f}x plain (target <= {TARGET_RATIO:.2f})",
        ),
        (
            "Depends(get_tasks), snapshot_db",
            f"{sql:8.1f} us/req",
            f"{sql / plain:.3f}x plain (target <= {TARGET_RATIO:.2f})",
        ),
        (
            f"fan-out {data['fan_n']} in one request",
            f"{fan:8.2f} us/task",
            f"{fan / floor_us:.2f}x floor (target <= {TARGET_FANOUT_RATIO:g}x); "
            f"library {fan_lib:.2f} us/task",
        ),
        (
            "GET /tasks/metrics",
            f"{metrics_ms:8.3f} ms",
            f"{data['metrics'].note} (target <= {TARGET_METRICS_MS:g} ms)",
        ),
    ]
    for name, value, extra in rows:
        print(f"  {name:36} {value:>16}   {extra}")
    verdicts = {
        "managed-mem ratio": mem / plain <= TARGET_RATIO,
        "managed-sqlite ratio": sql / plain <= TARGET_RATIO,
        "fan-out vs floor": fan / floor_us <= TARGET_FANOUT_RATIO,
        "metrics at 50k": metrics_ms <= TARGET_METRICS_MS,
    }
    print()
    for name, ok in verdicts.items():
        print(f"  {'met   ' if ok else 'MISSED'} {name}")
    return {
        "machine": info,
        "reps": reps,
        "medians": {k: v.median for k, v in r.items()} | {"metrics_ms": metrics_ms},
        "samples": {k: v.samples for k, v in r.items()},
        "ratios": {"managed-mem": mem / plain, "managed-sqlite": sql / plain},
        "fan_out_library_us": fan_lib,
        "fan_out_vs_floor": fan / floor_us,
        "targets_met": verdicts,
    }


async def profile(name: str) -> None:
    scenarios: dict[str, Callable[[], Awaitable[Any]]] = {
        "plain": lambda: plain_requests(2000),
        "plain-depends": lambda: depends_requests(2000),
        "managed-mem": lambda: managed_requests(2000, None),
        "managed-sqlite": lambda: managed_requests(2000, str(Path(tempfile.mkdtemp()) / "p.db")),
        "fan-out": lambda: fan_out(20_000),
        "metrics": lambda: metrics_endpoint(50_000, 200),
    }
    profiler = cProfile.Profile()
    profiler.enable()
    await scenarios[name]()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).sort_stats("tottime")
    stats.print_stats(30)
    print(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions (medians are reported)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument(
        "--profile",
        choices=["plain", "plain-depends", "managed-mem", "managed-sqlite", "fan-out", "metrics"],
        help="profile one scenario with cProfile instead of benchmarking",
    )
    args = parser.parse_args()
    if args.profile:
        asyncio.run(profile(args.profile))
        return
    data = asyncio.run(run(args.reps, args.quick))
    summary = report(data, args.reps)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
