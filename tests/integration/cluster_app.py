"""The app the several-instance tests run as separate uvicorn processes on one backend.

TF_BACKEND  ``sqlite:<path>`` or ``redis:<url>|<prefix>``
TF_SIDE     a file each task appends a line to: ``S`` (hold started), ``A`` (a flaky attempt)
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from typing import Any

from fastapi import FastAPI

from fastapi_taskflow import TaskAdmin, TaskManager
from fastapi_taskflow.backends.base import TaskBackend


def _backend(spec: str) -> TaskBackend:
    kind, _, where = spec.partition(":")
    if kind == "sqlite":
        from fastapi_taskflow.backends.sqlite import SqliteBackend

        return SqliteBackend(where)
    from fastapi_taskflow.backends.redis import RedisBackend

    url, _, prefix = where.partition("|")
    return RedisBackend(url, prefix=prefix)


SIDE = os.environ["TF_SIDE"]

task_manager = TaskManager(
    snapshot_backend=_backend(os.environ["TF_BACKEND"]),
    requeue_pending=True,
    heartbeat_interval=0.3,
    lease_ttl=1.5,
    snapshot_interval=0.5,
    drain_timeout=0.2,
)
app = FastAPI()
TaskAdmin(app, task_manager)


def _note(line: str) -> int:
    """Append ``line`` to the side file; returns how many such lines it now has."""
    fd = os.open(SIDE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)
    with open(SIDE) as side:
        return sum(1 for seen in side if seen.strip() == line)


@task_manager.task(name="cluster.hold")
async def hold() -> None:
    _note("S")
    await asyncio.sleep(60)


@task_manager.task(name="cluster.flaky", retries=2)
async def flaky() -> None:
    # The second attempt hangs until a shutdown interrupts it; every other attempt fails.
    if _note("A") == 2:
        await asyncio.sleep(60)
    raise RuntimeError("this attempt fails")


@task_manager.task(name="cluster.remind")
async def remind(n: int) -> None:
    return None


@app.get("/health")
async def health() -> dict[str, str]:
    return {"instance": task_manager.instance_id}


@app.post("/hold")
async def start_hold() -> dict[str, str]:
    return {"task_id": task_manager.add_task(hold).task_id}


@app.post("/flaky")
async def start_flaky() -> dict[str, str]:
    return {"task_id": task_manager.add_task(flaky).task_id}


@app.post("/schedule/{n}")
async def schedule(n: int) -> dict[str, str]:
    key = await task_manager.schedule_once(remind, n, run_at=timedelta(hours=1))
    return {"run_key": key}


@app.get("/scheduled")
async def scheduled() -> list[dict[str, Any]]:
    return await task_manager.list_scheduled()
