"""The app the multi-instance tests run under uvicorn (several processes on one backend).

TF_BACKEND  a backend spec (app_backends.py): ``sqlite:<path>``, ``redis:<url>|<prefix>``...
TF_GATES    a folder: a ``hold`` task runs until a file named after its key appears there
TF_LEASE    the lease in seconds (default 2)

Queue ``solo`` runs one task at a time, so a second ``hold`` task stays PENDING. Every response
says which instance answered (``X-Instance``), so a test can tell the processes apart even
behind ``uvicorn --workers``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from app_backends import backend_from_spec
from fastapi import Depends, FastAPI, Request, Response

from fastapi_taskflow import (
    ManagedBackgroundTasks,
    QueueConfig,
    TaskAdmin,
    TaskManager,
    set_progress,
)

GATES = Path(os.environ["TF_GATES"])

task_manager = TaskManager(
    snapshot_backend=backend_from_spec(os.environ["TF_BACKEND"]),
    requeue_pending=True,
    queues={"solo": QueueConfig(concurrency=1)},
    heartbeat_interval=0.5,
    lease_ttl=float(os.environ.get("TF_LEASE", "2.0")),
    snapshot_interval=0.5,
    drain_timeout=0.5,
)
app = FastAPI()
TaskAdmin(app, task_manager, path="/tasks")


@app.middleware("http")
async def say_which_instance(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    response = await call_next(request)
    response.headers["X-Instance"] = task_manager.instance_id
    return response


@task_manager.task(name="cluster.hold", queue="solo")
async def hold(key: str) -> str:
    set_progress(0.5, "halfway")
    # The gate is opened by the test process: a file, so polling is the only way to see it.
    while not (GATES / key).exists():  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    return key


@task_manager.task(name="cluster.quick")
async def quick(n: int) -> int:
    await asyncio.sleep(0.01)
    return n


@app.get("/health")
async def health() -> dict[str, str]:
    return {"instance": task_manager.instance_id}


@app.post("/hold/{key}")
async def add_hold(
    key: str,
    tasks: ManagedBackgroundTasks = Depends(task_manager.get_tasks),  # noqa: B008
) -> dict[str, str]:
    return {"task_id": tasks.add_task(hold, key)}


@app.post("/quick/{n}")
async def add_quick(
    n: int,
    tasks: ManagedBackgroundTasks = Depends(task_manager.get_tasks),  # noqa: B008
) -> dict[str, str]:
    return {"task_id": tasks.add_task(quick, n)}
