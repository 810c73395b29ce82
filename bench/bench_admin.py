"""Benchmark of the task API and the live dashboard.

Measures, in one run:

* ``GET /tasks`` (first page of 50) and ``GET /tasks/metrics`` with 50,000 and 1,000,000
  finished records in memory (targets: <= 5 ms and <= 1 ms). Each figure is given twice:
  through HTTP (httpx's ASGI transport, the full FastAPI stack) and in-process (the work the
  route does: the merged page plus JSON, or the metrics plus JSON).
* the same first page with the records in SQLite (memory holds the default 10,000 newest);
* bytes sent over SSE per task change, with one dashboard connected;
* wall time per task for 20,000 no-op tasks with a dashboard connected vs without
  (target: <= 1.2x).

Every figure is checked against the work done (page sizes, counts) before it is printed.
Run: ``.venv/bin/python bench/bench_admin.py [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from fastapi_taskflow import TaskAdmin, TaskManager
from fastapi_taskflow.backends.base import RecordQuery
from fastapi_taskflow.models import TaskRecord, TaskStatus

_NO_KWARGS: dict[str, Any] = {}
_NO_TAGS: dict[str, str] = {}


async def noop() -> None:
    return None


def make_records(count: int) -> list[TaskRecord]:
    start = datetime.now(UTC) - timedelta(seconds=count)
    records = []
    for i in range(count):
        created = start + timedelta(seconds=i)
        records.append(
            TaskRecord(
                task_id=f"{i:012d}-bench",
                func_name="bench:job",
                status=TaskStatus.FAILED if i % 10 == 0 else TaskStatus.SUCCESS,
                created_at=created,
                start_time=created,
                end_time=created + timedelta(milliseconds=3),
                kwargs=_NO_KWARGS,
                tags=_NO_TAGS,
                error="boom" if i % 10 == 0 else None,
            )
        )
    return records


def fill(manager: TaskManager, records: list[TaskRecord]) -> None:
    for record in records:
        manager.store.add(record)


async def median_us(call: Any, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(samples)


async def bench_reads(count: int, repeat: int, backend: str) -> dict[str, float]:
    records = make_records(count)
    with tempfile.TemporaryDirectory() as folder:
        if backend == "sqlite":
            manager = TaskManager(snapshot_db=os.path.join(folder, "bench.db"))
        else:
            manager = TaskManager(max_history=count)
        app = FastAPI()
        TaskAdmin(app, manager)
        async with LifespanManager(app) as running:
            if backend == "sqlite":
                assert manager.backend is not None
                for i in range(0, count, 20_000):
                    await manager.backend.save_records(records[i : i + 20_000])
                fill(manager, records[-10_000:])
            else:
                fill(manager, records)
            transport = httpx.ASGITransport(app=running.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
                page = (await client.get("/tasks")).json()
                assert len(page) == 50
                assert page[0]["task_id"] == records[-1].task_id
                metrics = (await client.get("/tasks/metrics")).json()
                if backend == "memory":
                    assert metrics["total"] == count, metrics["total"]

                async def http_page() -> None:
                    response = await client.get("/tasks")
                    assert response.status_code == 200

                async def http_metrics() -> None:
                    response = await client.get("/tasks/metrics")
                    assert response.status_code == 200

                async def direct_page() -> None:
                    result = await manager.list_records(RecordQuery(limit=50))
                    json.dumps([r.to_dict() for r in result.records])

                async def direct_metrics() -> None:
                    json.dumps(manager.metrics())

                async def filtered_page() -> None:
                    response = await client.get("/tasks?status=failed")
                    assert len(response.json()) == 50

                return {
                    "page_http_us": await median_us(http_page, repeat),
                    "page_direct_us": await median_us(direct_page, repeat),
                    "failed_page_http_us": await median_us(filtered_page, repeat),
                    "metrics_http_us": await median_us(http_metrics, repeat * 4),
                    "metrics_direct_us": await median_us(direct_metrics, repeat * 4),
                }


async def run_tasks(manager: TaskManager, count: int) -> float:
    t0 = time.perf_counter()
    for _ in range(count):
        manager.add_task(noop)
    await manager.join(timeout=120)
    return (time.perf_counter() - t0) / count * 1e6


async def bench_live(count: int, rounds: int) -> dict[str, float]:
    manager = TaskManager(max_history=count)
    manager.task()(noop)
    app = FastAPI()
    admin = TaskAdmin(app, manager)
    async with LifespanManager(app):
        await run_tasks(manager, 2000)  # warm up
        without, with_dashboard, burst_bytes = [], [], 0
        for _ in range(rounds):
            without.append(await run_tasks(manager, count))
            client = admin.hub.subscribe()
            counted = {"bytes": 0, "deltas": 0}

            async def consume(client: Any = client, counted: dict[str, int] = counted) -> None:
                while True:
                    payload = await client.queue.get()
                    counted["bytes"] += len(payload)
                    counted["deltas"] += 1

            reader = asyncio.create_task(consume())
            with_dashboard.append(await run_tasks(manager, count))
            await asyncio.sleep(admin.hub.tick * 2)  # let the last tick go out
            reader.cancel()
            admin.hub.unsubscribe(client)
            assert counted["deltas"] >= 1
            burst_bytes += counted["bytes"]
        row_bytes, metrics_bytes = await one_change_sizes(manager, admin)
        await admin.close_streams()
    return {
        "task_us_without": statistics.median(without),
        "task_us_with_dashboard": statistics.median(with_dashboard),
        "ratio": statistics.median(with_dashboard) / statistics.median(without),
        "burst_bytes_per_task": burst_bytes / (count * rounds),
        "row_bytes": row_bytes,
        "metrics_bytes": metrics_bytes,
    }


async def one_change_sizes(manager: TaskManager, admin: TaskAdmin) -> tuple[float, float]:
    """Bytes of a delta carrying one changed task, without and with the counters."""
    tick, admin.hub.tick = admin.hub.tick, 3600.0  # flush by hand only
    await asyncio.sleep(tick * 2)  # the earlier ticker sees no client and ends
    client = admin.hub.subscribe()
    sizes, with_metrics = [], []
    for i in range(50):
        await manager.add_task(noop).wait(timeout=5)
        admin.hub.flush(with_metrics=i % 2 == 1)
        payload = client.queue.get_nowait()
        assert payload.count(b'"task_id"') == 1
        (with_metrics if i % 2 else sizes).append(len(payload))
    admin.hub.unsubscribe(client)
    admin.hub.tick = tick
    return statistics.median(sizes), statistics.median(with_metrics) - statistics.median(sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="50k only, fewer repeats")
    options = parser.parse_args()
    logging.getLogger("fastapi_taskflow.admin").setLevel(logging.ERROR)  # the open-API warning
    sizes = [50_000] if options.quick else [50_000, 1_000_000]
    print(
        f"# bench_admin  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  "
        f"python {platform.python_version()}  {platform.machine()}  cpus={os.cpu_count()}"
    )
    # First: the million-record heaps of the read benchmarks slow a later run through GC.
    live = asyncio.run(bench_live(5_000 if options.quick else 20_000, 3))
    print(
        f"per task: {live['task_us_without']:.1f} us without a dashboard, "
        f"{live['task_us_with_dashboard']:.1f} us with one connected "
        f"(ratio {live['ratio']:.2f}x, target <= 1.2x)"
    )
    print(
        f"SSE: {live['row_bytes']:.0f} bytes per changed task (+{live['metrics_bytes']:.0f} "
        f"bytes of counters, at most once a second); in a burst "
        f"{live['burst_bytes_per_task']:.1f} bytes per task (coalesced, overflow mode)"
    )
    for backend in ("memory", "sqlite"):
        for size in sizes:
            figures = asyncio.run(bench_reads(size, 50 if options.quick else 200, backend))
            print(
                f"{backend:>6} {size:>9,} records: "
                f"GET /tasks {figures['page_http_us'] / 1000:6.2f} ms http "
                f"({figures['page_direct_us'] / 1000:5.2f} ms in-process), "
                f"?status=failed {figures['failed_page_http_us'] / 1000:6.2f} ms; "
                f"GET /tasks/metrics {figures['metrics_http_us'] / 1000:5.3f} ms http "
                f"({figures['metrics_direct_us'] / 1000:5.3f} ms in-process)"
            )


if __name__ == "__main__":
    main()
