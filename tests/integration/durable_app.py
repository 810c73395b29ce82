"""The app the crash and outage tests run under uvicorn, configured by environment variables.

TF_BACKEND     a backend spec (app_backends.py): ``sqlite:<path>``, ``redis:<url>|<prefix>``...
TF_SIDE        a file each task appends ``S <n> <pid>`` (start) and ``E <n> <pid>`` (end) to
TF_CONCURRENCY max_concurrent_tasks
TF_HEARTBEAT, TF_LEASE, TF_TASK_SECONDS  lease timings and how long each task takes
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from app_backends import backend_from_spec
from fastapi import Depends, FastAPI

from fastapi_taskflow import ManagedBackgroundTasks, TaskManager

SIDE = os.environ["TF_SIDE"]
TASK_SECONDS = float(os.environ.get("TF_TASK_SECONDS", "0.05"))

task_manager = TaskManager(
    snapshot_backend=backend_from_spec(os.environ["TF_BACKEND"]),
    requeue_pending=True,
    max_concurrent_tasks=int(os.environ.get("TF_CONCURRENCY", "4")),
    heartbeat_interval=float(os.environ.get("TF_HEARTBEAT", "0.5")),
    lease_ttl=float(os.environ.get("TF_LEASE", "2.0")),
    snapshot_interval=0.5,
    drain_timeout=1.0,
)
app = FastAPI()
task_manager.init_app(app)


def _note(kind: str, n: int) -> None:
    fd = os.open(SIDE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{kind} {n} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


@task_manager.task(name="crash.work", persist=True)
async def work(n: int) -> None:
    _note("S", n)
    await asyncio.sleep(TASK_SECONDS)
    _note("E", n)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"instance": task_manager.instance_id}


@app.post("/enqueue/{n}")
async def enqueue(
    n: int,
    tasks: ManagedBackgroundTasks = Depends(task_manager.get_tasks),  # noqa: B008
) -> dict[str, str]:
    return {"task_id": tasks.add_task(work, n)}


@app.get("/stats")
async def stats() -> dict[str, Any]:
    return task_manager.metrics()
