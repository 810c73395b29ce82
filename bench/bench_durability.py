"""Durability benchmarks: what the journal costs, Redis with two instances, shutdown time.

    .venv/bin/python bench/bench_durability.py [--tasks 20000] [--history 50000]

1. Per-task cost of a no-op task, in memory vs durable (``requeue_pending=True``: every task
   journaled at enqueue, record saved and entry removed at the end) on SQLite, Redis,
   PostgreSQL and MariaDB (servers started here from throwaway directories), in the same run.
   "run" stops when every task finished; "durable" also waits until every write is committed.
2. Redis backend: two managers (two instances) on one redis-server, each enqueueing half.
3. Shutdown time with ``--history`` finished records in history (SQLite), nothing pending:
   shutdown writes only what changed, so it must not grow with history (target <= 50 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from fastapi_taskflow import TaskManager
from fastapi_taskflow.backends.base import TaskBackend
from fastapi_taskflow.backends.sqlite import SqliteBackend

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def manager(backend: TaskBackend | None, **options: Any) -> tuple[TaskManager, Any]:
    tm = TaskManager(
        snapshot_backend=backend, requeue_pending=backend is not None, max_history=10_000, **options
    )

    @tm.task(name="bench.noop")
    async def noop(i: int) -> None:
        return None

    return tm, noop


async def settle(tm: TaskManager) -> None:
    """Every write committed (journal, records, history)."""
    if tm.persister is not None:
        await tm.persister.drain()


async def run_tasks(tm: TaskManager, noop: Any, count: int, offset: int = 0) -> None:
    for i in range(count):
        tm.add_task(noop, offset + i)
        if i % 500 == 499:
            await asyncio.sleep(0)  # like requests arriving over many loop ticks
    await tm.join()


async def per_task(backend: TaskBackend | None, count: int) -> tuple[float, float]:
    """(µs per task until all finished, µs per task until all durable)."""
    tm, noop = manager(backend)
    await tm.startup()
    start = time.perf_counter()
    await run_tasks(tm, noop, count)
    finished = time.perf_counter() - start
    await settle(tm)
    durable = time.perf_counter() - start
    if tm.backend is not None:  # every record reached the backend, or the figure means nothing
        stored = (await tm.backend.count_by_status()).get("success", 0)
        assert stored == count, f"{tm.backend.describe()} holds {stored} of {count} records"
    await tm.shutdown()
    return finished / count * 1e6, durable / count * 1e6


@contextmanager
def durable_backends() -> Iterator[dict[str, Callable[[], TaskBackend]]]:
    """name -> a factory of empty backends, for every durable backend this machine can run
    (servers started here, on free ports, removed afterwards)."""
    from fastapi_taskflow.backends.mysql import MySQLBackend
    from fastapi_taskflow.backends.postgres import PostgresBackend
    from fastapi_taskflow.backends.redis import RedisBackend
    from servers import (
        MariaDBServer,
        PostgresServer,
        find_mariadb,
        find_postgres,
        find_redis_server,
        running,
        running_redis_server,
    )

    def fresh() -> str:
        return f"b{uuid.uuid4().hex[:8]}_"

    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        made: dict[str, Callable[[], TaskBackend]] = {
            "SQLite": lambda: SqliteBackend(Path(tmp) / f"{fresh()}.db")
        }
        redis_binary = find_redis_server()
        if redis_binary is not None:
            redis = stack.enter_context(running_redis_server(redis_binary))
            made["Redis"] = lambda: RedisBackend(redis.url, prefix=fresh())
        postgres_bin = find_postgres()
        if postgres_bin is not None:
            pg = stack.enter_context(running(PostgresServer(postgres_bin)))
            made["PostgreSQL"] = lambda: PostgresBackend(pg.url, table_prefix=fresh())
        mariadb = find_mariadb()
        if mariadb is not None:
            maria = stack.enter_context(running(MariaDBServer(*mariadb)))
            url = maria.create_database("bench")
            made["MariaDB"] = lambda: MySQLBackend(url, table_prefix=fresh())
        skipped = {"Redis", "PostgreSQL", "MariaDB"} - made.keys()
        if skipped:
            print(f"skipped (no server binary): {', '.join(sorted(skipped))}")
        yield made


async def bench_cost(count: int, rounds: int) -> None:
    memory: list[float] = []
    run: dict[str, list[float]] = {}
    durable: dict[str, list[float]] = {}
    with durable_backends() as backends:
        for _ in range(rounds):
            memory.append((await per_task(None, count))[0])
            for name, make in backends.items():
                r, d = await per_task(make(), count)
                run.setdefault(name, []).append(r)
                durable.setdefault(name, []).append(d)
    m = statistics.median(memory)
    print(f"per task ({count} no-op tasks, requeue_pending=True, median of {rounds}):")
    print(f"  in memory                     {m:7.1f} us")
    for name in run:
        r, d = statistics.median(run[name]), statistics.median(durable[name])
        print(f"  {name + ', until run':<29} {r:7.1f} us   ({r / m:.2f}x)")
        print(f"  {name + ', until durable':<29} {d:7.1f} us   ({d / m:.2f}x)")


async def bench_redis(count: int) -> None:
    from fastapi_taskflow.backends.redis import RedisBackend
    from servers import find_redis_server, running_redis_server

    binary = find_redis_server()
    if binary is None:
        print("redis: skipped (no redis-server binary)")
        return
    with running_redis_server(binary) as server:
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        pair = [manager(RedisBackend(server.url, prefix=prefix)) for _ in range(2)]
        for tm, _ in pair:
            await tm.startup()
        start = time.perf_counter()
        half = count // 2
        await asyncio.gather(
            *(run_tasks(tm, noop, half, k * half) for k, (tm, noop) in enumerate(pair))
        )
        finished = time.perf_counter() - start
        await asyncio.gather(*(settle(tm) for tm, _ in pair))
        durable = time.perf_counter() - start
        for tm, _ in pair:
            await tm.shutdown()
    print(f"Redis, two instances in one process ({count} no-op tasks):")
    print(f"  {count / finished:8.0f} tasks/s until run, {count / durable:8.0f} tasks/s durable")


async def bench_shutdown(history: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        backend = SqliteBackend(Path(tmp) / "bench.db")
        tm, noop = manager(backend)
        await tm.startup()
        await run_tasks(tm, noop, history)
        await settle(tm)
        assert tm.backend is not None
        in_backend = sum((await tm.backend.count_by_status()).values())
        start = time.perf_counter()
        await tm.shutdown()
        quiet = (time.perf_counter() - start) * 1e3

        tm, noop = manager(SqliteBackend(Path(tmp) / "bench.db"))
        await tm.startup()
        await run_tasks(tm, noop, 1000, offset=history)
        start = time.perf_counter()
        await tm.shutdown()
        busy = (time.perf_counter() - start) * 1e3
        tm, _ = manager(SqliteBackend(Path(tmp) / "bench.db"))
        start = time.perf_counter()
        await tm.startup()
        startup = (time.perf_counter() - start) * 1e3
        loaded = len(tm.store)
        await tm.shutdown()
    print(f"shutdown with {in_backend} records in history (SQLite):")
    print(f"  nothing outstanding          {quiet:7.1f} ms  (target <= 50 ms)")
    print(f"  right after 1,000 new tasks  {busy:7.1f} ms  (writes those 1,000)")
    print(f"  startup on that history      {startup:7.1f} ms  ({loaded} records loaded)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--history", type=int, default=50_000)
    options = parser.parse_args()
    await bench_cost(options.tasks, options.rounds)
    await bench_redis(options.tasks)
    await bench_shutdown(options.history)


if __name__ == "__main__":
    asyncio.run(main())
