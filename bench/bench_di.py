"""Requests/s of a route that enqueues one task: the DI aliases vs the manager's own Depends.

Three routes, one app, one run, so the figures compare:

* ``direct``:  ``tasks = Depends(task_manager.get_tasks)`` on a plain ``TaskManager``;
* ``tasksdep``: ``tasks: TasksDep`` (the container found on ``app.state``);
* ``wired``:    a wired module's route: ``@inject``, ``TasksDep`` and a ``Provide[...]`` parameter.

Each request's task must have run (exact counts are checked) before a figure is printed.
Run: ``.venv/bin/python bench/bench_di.py [--requests 2000] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import httpx
from dependency_injector.wiring import Provide, inject
from fastapi import APIRouter, Depends, FastAPI

from fastapi_taskflow import ManagedBackgroundTasks, MemoryBackend, TaskManager, TaskRegistry
from fastapi_taskflow.di import TaskflowContainer, TasksDep, install

registry = TaskRegistry()
done = {"count": 0}


@registry.task()
async def record_signup(user_id: int) -> None:
    done["count"] += 1


router = APIRouter()


@router.post("/wired/{user_id}")
@inject
async def wired(
    user_id: int,
    tasks: TasksDep,
    manager: TaskManager = Depends(Provide[TaskflowContainer.task_manager]),  # noqa: B008
) -> dict[str, str]:
    """A wired route (module-level, so ``container.wire`` patches it)."""
    assert manager is not None
    return {"task_id": tasks.add_task(record_signup, user_id)}


def build_app(direct_manager: TaskManager, container: TaskflowContainer) -> FastAPI:
    app = FastAPI()

    @app.post("/direct/{user_id}")
    async def direct(
        user_id: int,
        tasks: ManagedBackgroundTasks = Depends(direct_manager.get_tasks),  # noqa: B008
    ) -> dict[str, str]:
        return {"task_id": tasks.add_task(record_signup, user_id)}

    @app.post("/tasksdep/{user_id}")
    async def via_alias(user_id: int, tasks: TasksDep) -> dict[str, str]:
        return {"task_id": tasks.add_task(record_signup, user_id)}

    app.include_router(router)
    install(app, container)
    direct_manager.init_app(app)
    return app


async def measure(client: httpx.AsyncClient, route: str, requests: int, manager: Any) -> float:
    """Seconds for ``requests`` sequential requests, after every task ran."""
    before = done["count"]
    start = time.perf_counter()
    for i in range(requests):
        response = await client.post(f"/{route}/{i}")
        assert response.status_code == 200, response.text
    await manager.join()
    elapsed = time.perf_counter() - start
    assert done["count"] - before == requests, (route, done["count"] - before)
    return elapsed


async def main(requests: int, repeats: int) -> None:
    container = TaskflowContainer(registry=registry)
    container.config.from_dict({"backend": {"kind": "memory"}, "admin": {"enabled": False}})
    container.wire(modules=[sys.modules[__name__]])
    # The same parts as the container builds from that config: a memory backend, no observers.
    direct_manager = TaskManager(registry=registry, snapshot_backend=MemoryBackend())
    app = build_app(direct_manager, container)
    from asgi_lifespan import LifespanManager

    async with LifespanManager(app) as managed:
        transport = httpx.ASGITransport(app=managed.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            di_manager = await container.task_manager()
            results: dict[str, list[float]] = {"direct": [], "tasksdep": [], "wired": []}
            for _ in range(repeats):
                for route in results:  # interleaved, so drift hits every route alike
                    manager = direct_manager if route == "direct" else di_manager
                    results[route].append(await measure(client, route, requests, manager))
    container.unwire()
    base = statistics.median(results["direct"])
    print(f"requests per route per repeat: {requests}, repeats: {repeats}")
    for route, times in results.items():
        median = statistics.median(times)
        print(
            f"{route:9s} {requests / median:8.0f} req/s"
            f"   median {median * 1e6 / requests:7.1f} us/req"
            f"   throughput vs direct: {base / median:.3f}x"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    asyncio.run(main(options.requests, options.repeats))
