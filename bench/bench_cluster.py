"""Several instances on one backend: what the shared records cost, and how fast they travel.

    .venv/bin/python bench/bench_cluster.py [--compare OLD_SRC] [--records 1000000]

1. Per-task cost, durable SQLite and Redis (``requeue_pending=True``: every task journaled, its
   row written PENDING, RUNNING and finished), until every write is committed. With
   ``--compare OLD_SRC`` (a checkout's ``src``), the same harness runs alternately on that code
   and on this one, each in a fresh process, and both are reported (CPU time of the process and
   wall time, medians): before/after on one machine at one moment.
2. Latency from a change on instance A to its delta on instance B's dashboard stream: two
   managers on one backend, B's ``StreamHub`` at its default tick (0.2 s); p50 and p99.
3. Reads at ``--records`` records stored in the backend (nothing in memory): the first page and
   the metrics, through the manager and through the HTTP API (TaskAdmin, httpx ASGI transport).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from servers import find_redis_server, running_redis_server  # noqa: E402


def backend_for(spec: str) -> Any:
    kind, _, where = spec.partition(":")
    if kind == "sqlite":
        from fastapi_taskflow.backends.sqlite import SqliteBackend

        return SqliteBackend(where)
    from fastapi_taskflow.backends.redis import RedisBackend

    url, _, prefix = where.partition("|")
    return RedisBackend(url, prefix=prefix)


# ---- 1. per-task cost (runs in a child process, on whichever code is on sys.path) ----------


async def child_cost(spec: str, count: int) -> dict[str, float]:
    from bench_durability import manager, run_tasks, settle

    tm, noop = manager(backend_for(spec))
    await tm.startup()
    wall, cpu = time.perf_counter(), time.process_time()
    await run_tasks(tm, noop, count)
    await settle(tm)
    result = {
        "wall_us": (time.perf_counter() - wall) / count * 1e6,
        "cpu_us": (time.process_time() - cpu) / count * 1e6,
    }
    assert tm.backend is not None
    done = (await tm.backend.count_by_status()).get("success", 0)
    assert done == count, f"{done} of {count} records in the backend"
    await tm.shutdown()
    return result


def run_child(src: str | None, spec: str, count: int) -> dict[str, float]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src
    out = subprocess.run(
        [sys.executable, __file__, "--child", spec, "--tasks", str(count)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def bench_cost(compare: str | None, count: int, rounds: int, redis_url: str | None) -> None:
    kinds = ["sqlite"] + (["redis"] if redis_url else [])
    trees: list[tuple[str, str | None]] = [("now", None)]
    if compare:
        trees.insert(0, ("before", compare))
    for kind in kinds:
        samples: dict[str, list[dict[str, float]]] = {name: [] for name, _ in trees}
        for _ in range(rounds):
            for name, src in trees:
                with tempfile.TemporaryDirectory() as folder:
                    spec = (
                        f"sqlite:{folder}/bench.db"
                        if kind == "sqlite"
                        else f"redis:{redis_url}|bench-{uuid.uuid4().hex[:8]}"
                    )
                    samples[name].append(run_child(src, spec, count))
        print(f"per task, durable {kind} ({count} no-op tasks, median of {rounds}):")
        for name, runs in samples.items():
            cpu = statistics.median(r["cpu_us"] for r in runs)
            wall = statistics.median(r["wall_us"] for r in runs)
            print(f"  {name:>6}: {cpu:7.1f} us CPU  {wall:7.1f} us wall")


# ---- 2. change on A -> delta on B's stream ---------------------------------------------------


async def bench_latency(spec: str, changes: int) -> tuple[float, float]:
    from fastapi_taskflow import TaskManager
    from fastapi_taskflow.admin.sse import StreamHub

    pair = [TaskManager(snapshot_backend=backend_for(spec)) for _ in range(2)]

    async def quick() -> None:
        return None

    for tm in pair:
        tm.task(name="bench.quick")(quick)
        await tm.startup()
    a, b = pair
    hub = StreamHub(lambda: b)
    client = hub.subscribe()
    await asyncio.sleep(0.5)  # the hub has read its starting point in the feed
    samples = []
    try:
        for _ in range(changes):
            # At a random moment of B's tick, as changes come in real life.
            await asyncio.sleep(random.uniform(0, hub.tick))
            sent = time.perf_counter()
            handle = a.add_task(quick)
            while True:
                payload = await asyncio.wait_for(client.queue.get(), 5)
                if handle.task_id.encode() in payload and b'"success"' in payload:
                    samples.append((time.perf_counter() - sent) * 1e3)
                    break
    finally:
        hub.unsubscribe(client)
        await hub.close()
        for tm in pair:
            await tm.shutdown()
    samples.sort()
    return statistics.median(samples), samples[max(0, int(len(samples) * 0.99) - 1)]


# ---- 3. reads at a million records -------------------------------------------------------------


@asynccontextmanager
async def filled(spec: str, count: int) -> AsyncIterator[Any]:
    from fastapi_taskflow.models import TaskRecord, TaskStatus

    backend = backend_for(spec)
    await backend.open()
    start = datetime.now(UTC) - timedelta(seconds=count)
    batch = []
    for i in range(count):
        created = start + timedelta(seconds=i)
        batch.append(
            TaskRecord(
                task_id=f"{i:012d}-bench",
                func_name="bench:job",
                status=TaskStatus.FAILED if i % 10 == 0 else TaskStatus.SUCCESS,
                created_at=created,
                start_time=created,
                end_time=created + timedelta(milliseconds=3),
                error="boom" if i % 10 == 0 else None,
            )
        )
        if len(batch) == 20_000:
            await backend.save_records(batch)
            batch = []
    if batch:
        await backend.save_records(batch)
    await backend.close()
    yield backend


async def median_ms(call: Callable[[], Awaitable[Any]], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


async def bench_reads(spec: str, count: int, repeat: int) -> dict[str, float]:
    import httpx
    from asgi_lifespan import LifespanManager
    from fastapi import FastAPI

    from fastapi_taskflow import TaskAdmin, TaskManager
    from fastapi_taskflow.admin.metrics import ThroughputSeries, dashboard_metrics
    from fastapi_taskflow.backends.base import RecordQuery

    async with filled(spec, count):
        manager = TaskManager(snapshot_backend=backend_for(spec))
        app = FastAPI()
        TaskAdmin(app, manager)
        async with LifespanManager(app) as running:
            metrics = await manager.read_metrics()
            assert metrics["total"] == count, metrics["total"]
            transport = httpx.ASGITransport(app=running.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:

                async def http_page() -> None:
                    assert len((await client.get("/tasks")).json()) == 50

                async def http_metrics() -> None:
                    assert (await client.get("/tasks/metrics")).json()["total"] == count

                async def page() -> None:
                    assert len((await manager.list_records(RecordQuery(limit=50))).records) == 50

                async def read_metrics() -> None:
                    await manager.read_metrics()

                async def read_dashboard_metrics() -> None:
                    await manager.read_metrics(throughput=True)

                series = ThroughputSeries()

                async def admin_metrics() -> None:  # what GET /tasks/metrics serves
                    await dashboard_metrics(manager, series)

                return {
                    "page_http": await median_ms(http_page, repeat),
                    "page": await median_ms(page, repeat),
                    "metrics_http": await median_ms(http_metrics, repeat),
                    "metrics": await median_ms(read_metrics, repeat),
                    "dashboard_metrics": await median_ms(read_dashboard_metrics, repeat),
                    "admin_metrics": await median_ms(admin_metrics, repeat),
                }


async def main_async(options: argparse.Namespace, redis_url: str | None) -> None:
    with tempfile.TemporaryDirectory() as folder:
        specs = [("sqlite", f"sqlite:{folder}/latency.db")]
        if redis_url:
            specs.append(("redis", f"redis:{redis_url}|lat-{uuid.uuid4().hex[:8]}"))
        for name, spec in specs:
            p50, p99 = await bench_latency(spec, options.changes)
            print(
                f"{name}: change on A -> delta on B's stream: p50 {p50:.0f} ms, p99 {p99:.0f} ms"
                f" ({options.changes} changes, tick 0.2 s)"
            )
        specs = [("sqlite", f"sqlite:{folder}/reads.db")]
        if redis_url:
            specs.append(("redis", f"redis:{redis_url}|reads-{uuid.uuid4().hex[:8]}"))
        for name, spec in specs:
            figures = await bench_reads(spec, options.records, 100)
            print(
                f"{name} {options.records:,} records: first page {figures['page']:.2f} ms "
                f"({figures['page_http']:.2f} ms http), metrics {figures['metrics']:.3f} ms "
                f"(with throughput {figures['dashboard_metrics']:.3f} ms, as the admin "
                f"serves it {figures['admin_metrics']:.3f} ms; "
                f"{figures['metrics_http']:.3f} ms http)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", help="the src folder of the code to compare against")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--skip", default="", help="comma list of parts to skip: cost,reads")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        print(json.dumps(asyncio.run(child_cost(options.child, options.tasks))))
        return
    logging.getLogger("fastapi_taskflow").setLevel(logging.ERROR)
    print(
        f"# bench_cluster  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  "
        f"python {platform.python_version()}  {platform.machine()}  cpus={os.cpu_count()}"
    )
    binary = find_redis_server()
    if binary is None:
        print("redis: skipped (no redis-server binary)")
    skip = set(options.skip.split(","))
    with running_redis_server(binary) if binary else contextlib.nullcontext() as server:
        url = server.url if server is not None else None
        if "cost" not in skip:
            bench_cost(options.compare, options.tasks, options.rounds, url)
        if "reads" not in skip:
            asyncio.run(main_async(options, url))


if __name__ == "__main__":
    main()
