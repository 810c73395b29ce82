"""Results across a restart and rate limits across instances, on real SQLite and Redis."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import result_tasks

from fastapi_taskflow import RateLimit, TaskManager
from fastapi_taskflow.backends.redis import RedisBackend
from fastapi_taskflow.backends.sqlite import SqliteBackend
from sqlite_files import sqlite_file

WORKER = Path(__file__).with_name("rate_worker.py")


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def make_backend(request: pytest.FixtureRequest, tmp_path: Path) -> object:
    """A factory of backend objects on one store: a SQLite file or a Redis key prefix."""
    if request.param == "sqlite":
        return lambda: SqliteBackend(tmp_path / "taskflow.db")
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    return lambda: RedisBackend(url, prefix=prefix)


def register(manager: TaskManager) -> None:
    manager.task(name="report", executor="process")(result_tasks.report)
    manager.task(name="summary")(result_tasks.summary)
    manager.task(name="async_total")(result_tasks.async_total)


async def test_results_of_async_sync_and_process_tasks_survive_a_restart(
    make_backend: object,
) -> None:
    """After a restart, get_result(id) reads each task's value from the backend."""
    first = TaskManager(snapshot_backend=make_backend(), max_process_workers=1)  # type: ignore[operator]
    register(first)
    await first.startup()
    handles = {
        "process": first.add_task(result_tasks.report, 7),
        "sync": first.add_task(result_tasks.summary, 3),
        "async": first.add_task(result_tasks.async_total, 2, 5),
    }
    expected = {
        "process": b"%PDF report 7",
        "sync": result_tasks.summary(3),
        "async": 7,
    }
    for kind, handle in handles.items():
        assert await handle.result() == expected[kind]
    await first.shutdown()

    second = TaskManager(snapshot_backend=make_backend())  # type: ignore[operator]
    register(second)
    await second.startup()
    try:
        for kind, handle in handles.items():
            assert second.store.get(handle.task_id) is None  # read from the backend
            assert await second.get_result(handle.task_id, timeout=5) == expected[kind]
    finally:
        await second.shutdown()


@pytest.fixture
async def redis_pair(redis_url: str, redis_prefix: str) -> AsyncIterator[list[TaskManager]]:
    """Two started managers sharing one real redis-server (one key prefix)."""
    managers = [
        TaskManager(snapshot_backend=RedisBackend(redis_url, prefix=redis_prefix)) for _ in range(2)
    ]
    for manager in managers:
        await manager.startup()
    yield managers
    for manager in managers:
        await manager.shutdown()


def assert_spaced(starts: list[float], limit: RateLimit, run: int = 8, slack: float = 0.15) -> None:
    """Any ``run`` consecutive starts span at least (run - 1) intervals, less some slack."""
    starts = sorted(starts)
    spans = [starts[i + run - 1] - starts[i] for i in range(len(starts) - run + 1)]
    assert spans, "too few starts to judge"
    assert min(spans) >= (run - 1) * limit.interval - slack, spans


@pytest.mark.redis
async def test_two_managers_on_one_redis_share_the_rate_limit(
    redis_pair: list[TaskManager],
) -> None:
    """Two instances on one Redis together start no faster than the one shared limit."""
    limit = RateLimit(10, per=1.0)
    starts: list[float] = []
    loop = asyncio.get_running_loop()

    async def call_api(n: int) -> int:
        starts.append(loop.time())
        return n

    for manager in redis_pair:
        manager.task(name="shared-limited", rate_limit=limit)(call_api)
    handles = [m.add_task(call_api, n) for n in range(8) for m in redis_pair]
    await asyncio.gather(*(h.wait() for h in handles))
    assert len(starts) == 16
    assert_spaced(starts, limit)


@pytest.mark.slow
def test_two_processes_on_one_sqlite_file_share_the_rate_limit(tmp_path: Path) -> None:
    """Two processes on one SQLite file together start no faster than the shared limit."""
    db, side = tmp_path / "shared.db", tmp_path / "starts.txt"
    start_at = time.time() + 2.0  # both are up and enqueue together
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(db), str(side), "8", "10/s", repr(start_at)]
        )
        for _ in range(2)
    ]
    for worker in workers:
        assert worker.wait(timeout=60) == 0
    lines = [line.split() for line in side.read_text().splitlines()]
    assert len(lines) == 16
    assert len({pid for _, pid in lines}) == 2
    assert_spaced([float(t) for t, _ in lines], RateLimit(10, per=1.0))


async def test_sqlite_file_from_before_rate_limits_gets_its_table(tmp_path: Path) -> None:
    """A SQLite file made before rate limits existed gains tf_rates when opened."""
    path = tmp_path / "old.db"
    backend = SqliteBackend(path)
    await backend.open()
    await backend.close()
    with sqlite_file(path) as db:
        db.execute("DROP TABLE tf_rates")
    reopened = SqliteBackend(path)
    await reopened.open()
    try:
        assert await reopened.take_rate_token("k", RateLimit(1, per=10.0)) == 0.0
        assert await reopened.take_rate_token("k", RateLimit(1, per=10.0)) > 0.0
    finally:
        await reopened.close()


@pytest.mark.slow
async def test_result_written_by_another_process_is_read_here(tmp_path: Path) -> None:
    """A result one process kept on a SQLite file is read by get_result in another."""
    db = tmp_path / "shared.db"
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).with_name("result_worker.py")),
        str(db),
        "9",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(worker.communicate(), 60)
    assert worker.returncode == 0
    task_id = out.decode().strip()
    manager = TaskManager(snapshot_backend=SqliteBackend(db))
    register(manager)
    await manager.startup()
    try:
        assert await manager.get_result(task_id, timeout=5) == b"%PDF report 9"
    finally:
        await manager.shutdown()


@pytest.mark.redis
async def test_get_result_on_another_instance_waits_for_a_running_task(
    redis_pair: list[TaskManager],
) -> None:
    """Instance B's get_result of a task running on A returns A's value once it finishes."""
    runner, reader = redis_pair
    release = asyncio.Event()

    async def slow_total(a: int, b: int) -> int:
        await release.wait()
        return a + b

    for manager in redis_pair:
        manager.task(name="slow_total")(slow_total)
    handle = runner.add_task(slow_total, 20, 22)
    waiting = asyncio.ensure_future(reader.get_result(handle.task_id, timeout=15))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    release.set()
    assert await waiting == 42
