"""With a backend, the backend is the system of record: rows from enqueue to the end, stats kept
with the rows (surviving restarts, following deletes), and a warned fallback for an older
backend. Several processes on real servers: tests/integration/test_cluster.py."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI

from fastapi_taskflow import ManagedBackgroundTasks, QueueConfig, TaskManager, set_progress
from fastapi_taskflow.admin.metrics import (
    SHARED_THROUGHPUT_MAX_AGE,
    ThroughputSeries,
    dashboard_metrics,
)
from fastapi_taskflow.backends import MemoryBackend
from fastapi_taskflow.backends.base import RecordQuery
from fastapi_taskflow.backends.sqlite import SqliteBackend
from fastapi_taskflow.models import TaskRecord, TaskStatus, utcnow
from fastapi_taskflow.testing_contract import eventually

FAST = {"heartbeat_interval": 0.05, "lease_ttl": 0.3, "drain_timeout": 0.0}


class OlderBackend(MemoryBackend):
    """A backend written against the contract before stats and the change feed."""

    system_of_record = False

    async def _write_rows(self, rows: list[dict[str, Any]]) -> None:  # type: ignore[override]
        await super()._write_rows(rows)


async def test_a_response_means_the_pending_row_is_in_the_backend() -> None:
    """When the barrier lets a response go, the task's PENDING row is already stored."""
    backend = MemoryBackend()
    tm = TaskManager(
        snapshot_backend=backend,
        requeue_pending=True,
        queues={"solo": QueueConfig(concurrency=1)},
        **FAST,
    )
    app = FastAPI()
    tm.init_app(app)
    gate = asyncio.Event()

    @tm.task(name="jobs.hold", queue="solo")
    async def hold() -> None:
        await gate.wait()

    @app.post("/run")
    async def run(tasks: ManagedBackgroundTasks = Depends(tm.get_tasks)) -> dict[str, str]:  # noqa: B008
        return {"task_id": tasks.add_task(hold)}

    await tm.startup()
    try:
        tm.add_task(hold)  # takes the queue's only slot: the request's task stays PENDING
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            task_id = (await client.post("/run")).json()["task_id"]
        stored = await backend.get_record(task_id)
        assert stored is not None
        assert stored.status is TaskStatus.PENDING
    finally:
        gate.set()
        await tm.shutdown()


async def test_running_progress_reaches_the_backend() -> None:
    """A running task's progress is written to its row while it runs."""
    backend = MemoryBackend()
    tm = TaskManager(snapshot_backend=backend, **FAST)
    gate = asyncio.Event()

    @tm.task(name="jobs.progress")
    async def progress() -> None:
        set_progress(0.25, "a quarter")
        await gate.wait()

    await tm.startup()
    try:
        handle = tm.add_task(progress)

        async def shows_progress() -> bool:
            row = await backend.get_record(handle.task_id)
            return row is not None and row.status is TaskStatus.RUNNING and row.progress == 0.25

        await eventually(shows_progress)
        gate.set()
        await handle.wait(timeout=5)
    finally:
        gate.set()
        await tm.shutdown()


def sqlite_manager(path: Path) -> tuple[TaskManager, Any]:
    tm = TaskManager(snapshot_backend=SqliteBackend(path), **FAST)

    @tm.task(name="jobs.maybe")
    async def maybe(fail: bool) -> None:
        await asyncio.sleep(0.002)
        if fail:
            raise RuntimeError("asked to fail")

    return tm, maybe


async def test_metrics_come_from_the_backend_and_survive_a_restart(tmp_path: Path) -> None:
    """Counts and duration percentiles read after a restart are the ones written before it."""
    first, maybe = sqlite_manager(tmp_path / "tasks.db")
    await first.startup()
    for fail in (False, False, True):
        first.add_task(maybe, fail)
    await first.join(timeout=5)
    await first.shutdown()

    again, _ = sqlite_manager(tmp_path / "tasks.db")
    await again.startup()
    try:
        metrics = await again.read_metrics(throughput=True)
        assert (metrics["success"], metrics["failed"], metrics["total"]) == (2, 1, 3)
        assert metrics["duration_p50"] is not None
        assert metrics["queues"]["default"]["counts"]["success"] == 2
        assert metrics["throughput"][-1][1:] == [2, 1]
    finally:
        await again.shutdown()


async def test_counts_follow_a_replaced_retry_and_a_partial_history_delete() -> None:
    """A retry that replaces its original and clear_history(before=...) lower the counts."""
    backend = MemoryBackend()
    tm = TaskManager(snapshot_backend=backend, retry_replaces_original=True, **FAST)
    calls: list[int] = []

    @tm.task(name="jobs.flaky")
    async def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first call fails")

    await tm.startup()
    try:
        failed = tm.add_task(flaky)
        await failed.wait(timeout=5)
        await tm.join(timeout=5)
        await tm.persister.drain()  # type: ignore[union-attr]
        assert (await tm.read_metrics())["failed"] == 1
        retried = await tm.retry(failed.task_id)
        await retried.wait(timeout=5)
        await tm.join(timeout=5)
        await tm.persister.drain()  # type: ignore[union-attr]
        metrics = await tm.read_metrics()
        assert (metrics["failed"], metrics["success"], metrics["total"]) == (0, 1, 1)
        await tm.clear_history(before=utcnow())
        metrics = await tm.read_metrics()
        assert (metrics["success"], metrics["total"], metrics["duration_p50"]) == (0, 0, None)
    finally:
        await tm.shutdown()


async def test_a_record_deleted_by_another_instance_is_gone_here_too(tmp_path: Path) -> None:
    """Memory is a cache: after another instance clears history, this one no longer shows it."""
    here, maybe = sqlite_manager(tmp_path / "tasks.db")
    there, _ = sqlite_manager(tmp_path / "tasks.db")
    await here.startup()
    await there.startup()
    try:
        handle = here.add_task(maybe, False)
        await handle.wait(timeout=5)
        await here.persister.drain()  # type: ignore[union-attr]
        assert await there.get_record(handle.task_id) is not None
        await there.clear_history()
        assert await here.get_record(handle.task_id) is None
        assert (await here.list_records(RecordQuery())).records == []
        assert (await here.read_metrics())["total"] == 0
    finally:
        await here.shutdown()
        await there.shutdown()


async def test_an_older_backend_is_warned_about_and_uses_this_instance_numbers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A backend without the system-of-record primitives still runs tasks; startup warns that
    metrics and the live dashboard cover this instance only, and metrics come from memory."""
    caplog.set_level(logging.WARNING)
    tm = TaskManager(snapshot_backend=OlderBackend(), **FAST)

    @tm.task(name="jobs.quick")
    async def quick() -> None:
        return None

    await tm.startup()
    try:
        assert "older contract" in caplog.text
        handle = tm.add_task(quick)
        await handle.wait(timeout=5)
        await tm.join(timeout=5)
        assert (await tm.read_metrics())["success"] == tm.metrics()["success"] == 1
        assert await tm.get_record(handle.task_id) is not None
    finally:
        await tm.shutdown()


async def test_a_task_not_written_yet_is_listed_and_found_at_once() -> None:
    """Right after add_task, before its row is written, this instance lists and finds it."""
    backend = MemoryBackend()
    tm = TaskManager(snapshot_backend=backend, **FAST)
    gate = asyncio.Event()

    @tm.task(name="jobs.wait")
    async def wait() -> None:
        await gate.wait()

    await tm.startup()
    try:
        handle = tm.add_task(wait)
        assert await backend.get_record(handle.task_id) is None  # the writer has not run yet
        listed = await tm.list_records(RecordQuery(status="running"))
        assert [r.task_id for r in listed.records] == [handle.task_id]
        found = await tm.get_record(handle.task_id)
        assert found is not None
        assert found.status is TaskStatus.RUNNING
    finally:
        gate.set()
        await tm.shutdown()


async def test_retention_at_startup_takes_the_pruned_rows_out_of_the_counts() -> None:
    """Records the startup retention prune deletes no longer count in the metrics."""
    backend = MemoryBackend()
    await backend.open()
    old = utcnow() - timedelta(days=10)
    await backend.save_records(
        [
            TaskRecord(
                f"old{i}",
                "jobs.x",
                status=TaskStatus.SUCCESS,
                created_at=old,
                start_time=old,
                end_time=old,
            )
            for i in range(5)
        ]
    )
    assert (await backend.read_stats()).counts[TaskStatus.SUCCESS] == 5
    tm = TaskManager(snapshot_backend=backend, retention_days=1, **FAST)
    await tm.startup()
    try:
        metrics = await tm.read_metrics()
        assert (metrics["success"], metrics["total"], metrics["duration_p50"]) == (0, 0, None)
    finally:
        await tm.shutdown()


async def test_dashboard_metrics_counts_are_fresh_and_throughput_at_most_a_second_old(
    tmp_path: Path,
) -> None:
    """Each metrics read has the counts as stored now; the throughput series read from the
    backend is served again for up to SHARED_THROUGHPUT_MAX_AGE, then read anew."""
    clock = [100.0]
    series = ThroughputSeries(clock=lambda: clock[0])
    tm, maybe = sqlite_manager(tmp_path / "tasks.db")
    await tm.startup()
    try:

        async def stored_success(count: int) -> bool:
            return (await tm.read_metrics())["success"] == count

        tm.add_task(maybe, False)
        await tm.join(timeout=5)
        await eventually(lambda: stored_success(1))
        first = await dashboard_metrics(tm, series)
        assert (first["success"], first["throughput"][-1][1]) == (1, 1)

        tm.add_task(maybe, False)
        await tm.join(timeout=5)
        await eventually(lambda: stored_success(2))
        clock[0] += SHARED_THROUGHPUT_MAX_AGE - 0.01
        cached = await dashboard_metrics(tm, series)
        assert cached["success"] == 2, "the counts must not be cached"
        assert cached["throughput"] == first["throughput"]

        clock[0] += 0.01
        fresh = await dashboard_metrics(tm, series)
        assert (fresh["success"], fresh["throughput"][-1][1]) == (2, 2)
    finally:
        await tm.shutdown()
