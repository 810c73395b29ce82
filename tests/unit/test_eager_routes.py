"""eager=True from async routes, sync (def) routes and outside any request."""

from __future__ import annotations

import asyncio
import threading
import warnings

import httpx
from control_helpers import running
from fastapi import Depends, FastAPI
from starlette.exceptions import StarletteDeprecationWarning

from fastapi_taskflow import ManagedBackgroundTasks, TaskManager, TaskStatus

with warnings.catch_warnings():
    # This Starlette prefers httpx2 for TestClient and warns at import when only httpx is there.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient


def build_app(tm: TaskManager, signal: threading.Event) -> FastAPI:
    """Routes whose response waits for the task: only an eager task can have run by then."""
    app = FastAPI()
    tasks_dependency = Depends(tm.get_tasks)

    def mark(label: str) -> None:
        signal.set()

    @app.post("/sync-eager")
    def sync_eager(tasks: ManagedBackgroundTasks = tasks_dependency) -> dict[str, str]:
        handle = tasks.add_task(mark, "sync", eager=True)
        ran = signal.wait(5)  # this thread waits; the loop runs the task meanwhile
        return {"task_id": handle, "ran_before_response": str(ran)}

    @app.post("/sync-deferred")
    def sync_deferred(tasks: ManagedBackgroundTasks = tasks_dependency) -> dict[str, str]:
        handle = tasks.add_task(mark, "deferred")
        return {"task_id": handle, "ran_before_response": str(signal.is_set())}

    return app


async def test_eager_in_async_route_starts_before_the_response() -> None:
    """An eager task added in an async route runs while the request is still open."""
    started = asyncio.Event()

    async def job() -> None:
        started.set()

    async with running() as tm:
        app = FastAPI()

        @app.post("/async-eager")
        async def route(
            tasks: ManagedBackgroundTasks = Depends(tm.get_tasks),  # noqa: B008
        ) -> dict[str, str]:
            handle = tasks.add_task(job, eager=True)
            await asyncio.wait_for(started.wait(), 5)
            return {"task_id": handle}

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post("/async-eager")
        assert response.status_code == 200
        await tm.join(timeout=5)
        assert tm.store.get(response.json()["task_id"]).status is TaskStatus.SUCCESS


def test_eager_in_sync_route_runs_from_the_worker_thread() -> None:
    """eager=True in a def route schedules onto the app's loop; no 'no running event loop'."""
    tm = TaskManager()
    signal = threading.Event()
    app = build_app(tm, signal)
    tm.init_app(app)
    with TestClient(app) as client:
        response = client.post("/sync-eager")
        assert response.status_code == 200
        assert response.json()["ran_before_response"] == "True"
        client.portal.call(tm.join, 5)  # type: ignore[union-attr]
        assert tm.store.get(response.json()["task_id"]).status is TaskStatus.SUCCESS


def test_eager_in_sync_route_before_startup_binds_the_app_loop() -> None:
    """Without lifespan wiring, an eager task from a def route still runs (the loop is found)."""
    tm = TaskManager()
    signal = threading.Event()
    client = TestClient(build_app(tm, signal))  # no `with`: no lifespan, no startup()
    response = client.post("/sync-eager")
    assert response.status_code == 200
    assert response.json()["ran_before_response"] == "True"


def test_deferred_in_sync_route_runs_after_the_response() -> None:
    """Without eager, a def route's task starts after the response is sent."""
    tm = TaskManager()
    signal = threading.Event()
    app = build_app(tm, signal)
    tm.init_app(app)
    with TestClient(app) as client:
        response = client.post("/sync-deferred")
        assert response.json()["ran_before_response"] == "False"
        client.portal.call(tm.join, 5)  # type: ignore[union-attr]
        assert signal.is_set()


async def test_add_task_from_a_plain_thread_outside_requests() -> None:
    """add_task from a non-loop thread (a script's worker) is handed to the loop safely."""
    ran = threading.Event()

    def job() -> None:
        ran.set()

    async with running() as tm:
        handle = await asyncio.to_thread(tm.add_task, job)
        record = await handle.wait(timeout=5)
    assert record.status is TaskStatus.SUCCESS
    assert ran.is_set()


async def test_add_task_before_startup_runs_at_startup() -> None:
    """A task added before any loop exists waits, PENDING, and runs once startup() is called."""
    tm = TaskManager()
    ran: list[int] = []

    async def job() -> None:
        ran.append(1)

    handle = await asyncio.to_thread(tm.add_task, job)  # no running loop in that thread
    assert handle.status is TaskStatus.PENDING
    await tm.startup()
    try:
        assert (await handle.wait(timeout=5)).status is TaskStatus.SUCCESS
    finally:
        await tm.shutdown()
    assert ran == [1]
