"""FastAPI glue: lifespan, install(), TaskManagerDep / TasksDep / TaskHandleDep, and the plugin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from dependency_injector import containers, providers
from dependency_injector.wiring import Provide, inject
from fastapi import Depends, FastAPI

from fastapi_taskflow import InMemoryLogger, TaskManager, TaskRegistry, TaskStatus
from fastapi_taskflow.di import (
    TaskflowContainer,
    TaskHandleDep,
    TaskManagerDep,
    TasksDep,
    install,
    taskflow_lifespan,
)
from fastapi_taskflow.di.fastapi import resolve

tasks = TaskRegistry()


@tasks.task()
async def greet(name: str) -> str:
    return f"hello {name}"


@tasks.task()
def shout(name: str) -> str:
    return name.upper()


def make_routes(app: FastAPI) -> None:
    """Routes in both styles: async def and def, with all three aliases."""

    @app.post("/greet/{name}")
    async def enqueue(name: str, background: TasksDep) -> dict[str, str]:
        return {"task_id": background.add_task(greet, name).task_id}

    @app.post("/shout/{name}")
    def enqueue_sync(name: str, background: TasksDep) -> dict[str, str]:
        return {"task_id": background.add_task(shout, name).task_id}

    @app.get("/jobs/{task_id}")
    async def status(handle: TaskHandleDep) -> dict[str, str]:
        return {"status": handle.status.value}

    @app.get("/jobs-sync/{task_id}")
    def status_sync(handle: TaskHandleDep) -> dict[str, str]:
        return {"status": handle.status.value}

    @app.get("/manager")
    def manager_sync(manager: TaskManagerDep) -> dict[str, bool]:
        return {"is_manager": isinstance(manager, TaskManager)}


@pytest.fixture
def taskflow_registry() -> TaskRegistry:
    """The plugin's container runs this module's tasks."""
    return tasks


@pytest.fixture
def taskflow_app(taskflow_app: FastAPI) -> FastAPI:
    """The plugin's app with this module's routes."""
    make_routes(taskflow_app)
    return taskflow_app


async def test_async_route_enqueues_and_task_succeeds(
    taskflow_client: httpx.AsyncClient, taskflow_container: TaskflowContainer
) -> None:
    """POST enqueues through TasksDep; the task runs after the response and succeeds."""
    response = await taskflow_client.post("/greet/ada")
    manager = await taskflow_container.task_manager()
    await manager.join()
    task_id = response.json()["task_id"]
    record = (await manager.get_task(task_id)).record  # type: ignore[union-attr]
    assert record.status is TaskStatus.SUCCESS
    assert record.args == ("ada",)


async def test_sync_routes_get_the_same_dependencies(
    taskflow_client: httpx.AsyncClient, taskflow_container: TaskflowContainer
) -> None:
    """def routes receive TasksDep, TaskHandleDep and TaskManagerDep (never a Future)."""
    task_id = (await taskflow_client.post("/shout/ada")).json()["task_id"]
    await (await taskflow_container.task_manager()).join()
    assert (await taskflow_client.get(f"/jobs-sync/{task_id}")).json() == {"status": "success"}
    assert (await taskflow_client.get("/manager")).json() == {"is_manager": True}


async def test_handle_dependency_reads_status(taskflow_client: httpx.AsyncClient) -> None:
    """TaskHandleDep resolves the task_id path parameter to the task's handle."""
    task_id = (await taskflow_client.post("/greet/bob")).json()["task_id"]
    response = await taskflow_client.get(f"/jobs/{task_id}")
    assert response.status_code == 200
    assert response.json()["status"] in {"pending", "running", "success"}


async def test_unknown_task_id_is_a_json_404(taskflow_client: httpx.AsyncClient) -> None:
    """An unknown id in TaskHandleDep answers 404 with a JSON error."""
    response = await taskflow_client.get("/jobs/nope")
    assert response.status_code == 404
    assert response.json() == {
        "detail": {"error": "task_not_found", "message": "no such task", "task_id": "nope"}
    }


async def test_events_fixture_sees_the_task(
    taskflow_client: httpx.AsyncClient,
    taskflow_container: TaskflowContainer,
    taskflow_events: InMemoryLogger,
) -> None:
    """taskflow_events captures the lifecycle of tasks enqueued through the app."""
    await taskflow_client.post("/greet/eve")
    await (await taskflow_container.task_manager()).join()
    statuses = [e.status for e in taskflow_events.lifecycle_events]
    assert statuses == [TaskStatus.RUNNING, TaskStatus.SUCCESS]


async def test_manager_fixture_runs_tasks(
    taskflow_manager: TaskManager, mocker: Any, taskflow_events: InMemoryLogger
) -> None:
    """taskflow_manager is started; a spied task function is called once."""
    spy = mocker.spy(sys_module(), "shout")
    handle = taskflow_manager.add_task(sys_module().shout, "x")
    await taskflow_manager.join()
    assert handle.status is TaskStatus.SUCCESS
    spy.assert_called_once_with("x")


def sys_module() -> Any:
    import sys

    return sys.modules[__name__]


async def test_lifespan_composes_with_the_apps_own() -> None:
    """taskflow_lifespan starts resources around the app's lifespan and passes its state."""
    order: list[str] = []
    container = TaskflowContainer()
    container.config.from_dict({"backend": {"kind": "memory"}})

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[dict[str, str]]:
        order.append(f"app start (manager up: {container.task_manager.initialized})")
        yield {"greeting": "hi"}
        order.append(f"app stop (manager up: {container.task_manager.initialized})")

    app = FastAPI(lifespan=taskflow_lifespan(container, own))
    async with app.router.lifespan_context(app) as state:
        assert state == {"greeting": "hi"}
    assert order == ["app start (manager up: True)", "app stop (manager up: True)"]
    assert not container.task_manager.initialized


async def test_install_works_with_an_app_lifespan() -> None:
    """install() runs the container around an app that has its own lifespan=."""
    container = TaskflowContainer()
    container.config.from_dict({"backend": {"kind": "memory"}})
    seen: list[bool] = []

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[None]:
        seen.append(container.task_manager.initialized)
        yield

    app = FastAPI(lifespan=own)
    install(app, container)
    install(app, container)  # harmless twice
    async with app.router.lifespan_context(app):
        assert container.task_manager.initialized
    assert seen == [True]
    assert not container.task_manager.initialized


async def test_unstarted_container_is_a_clear_error() -> None:
    """Resolving the manager before the lifespan ran says how to start it (never starts it)."""
    container = TaskflowContainer()
    with pytest.raises(RuntimeError, match="not started"):
        await resolve(container.task_manager)
    assert not container.task_manager.initialized


class Greeter:
    """A service of the user's own container."""

    def word(self) -> str:
        return "hi"


class AppContainer(containers.DeclarativeContainer):
    """A user's container that embeds taskflow."""

    greeter = providers.Singleton(Greeter)
    taskflow = providers.Container(TaskflowContainer)


async def test_aliases_beside_wiring_in_async_and_sync_routes() -> None:
    """@inject routes mix Depends(Provide[...]) with TasksDep; the manager can be Provide'd too."""
    container = AppContainer()
    container.taskflow.config.from_dict({"backend": {"kind": "memory"}})
    container.taskflow.registry.override(tasks)
    app = FastAPI()

    @app.post("/wired/{name}")
    @inject
    async def wired(
        name: str,
        background: TasksDep,
        greeter: Greeter = Depends(Provide[AppContainer.greeter]),  # noqa: B008
        manager: TaskManager = Depends(Provide[AppContainer.taskflow.task_manager]),  # noqa: B008
    ) -> dict[str, Any]:
        handle = background.add_task(greet, name)
        return {"word": greeter.word(), "same": handle.record is manager.store.get(handle)}

    @app.post("/wired-sync/{name}")
    @inject
    def wired_sync(
        name: str,
        background: TasksDep,
        greeter: Greeter = Depends(Provide[AppContainer.greeter]),  # noqa: B008
    ) -> dict[str, str]:
        return {"word": greeter.word(), "task_id": background.add_task(shout, name).task_id}

    container.wire(modules=[__name__])
    install(app, container)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                assert (await client.post("/wired/a")).json() == {"word": "hi", "same": True}
                assert (await client.post("/wired-sync/a")).json()["word"] == "hi"
                await (await container.taskflow.task_manager()).join()
    finally:
        container.unwire()


async def test_install_mounts_the_admin_from_settings() -> None:
    """admin.enabled mounts TaskAdmin at admin.path, with the container's manager behind it."""
    container = TaskflowContainer()
    container.config.from_dict(
        {"backend": {"kind": "memory"}, "admin": {"enabled": True, "path": "/ops/tasks"}}
    )
    container.registry.override(tasks)
    app = FastAPI()
    install(app, container)
    async with app.router.lifespan_context(app):
        manager = await container.task_manager()
        handle = manager.add_task(greet, "admin")
        await manager.join()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get(f"/ops/tasks/{handle.task_id}")
    assert response.status_code == 200
    assert response.json()["status"] == "success"


flaky_runs: list[str] = []


@tasks.task()
async def flaky(label: str) -> str:
    """Fails on its first run for ``label``, succeeds after."""
    if label not in flaky_runs:
        flaky_runs.append(label)
        raise RuntimeError("first run fails")
    return label


async def test_admin_follows_the_manager_of_each_lifespan_run() -> None:
    """Run twice, the admin serves the second run's manager: its tasks are listed, retry works."""
    container = TaskflowContainer()
    container.config.from_dict({"backend": {"kind": "memory"}, "admin": {"enabled": True}})
    container.registry.override(tasks)
    app = FastAPI()
    install(app, container)
    async with app.router.lifespan_context(app):
        first = await container.task_manager()
    async with app.router.lifespan_context(app):
        manager = await container.task_manager()
        assert manager is not first
        failed = manager.add_task(flaky, "second-run")
        await manager.join()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            listed = (await client.get("/tasks", params={"status": "failed"})).json()
            assert [t["task_id"] for t in listed] == [failed.task_id]
            # An open admin's changes need proof of the same origin, as a script's header.
            retried = await client.post(
                f"/tasks/{failed.task_id}/retry", headers={"X-CSRF-Token": "1"}
            )
            assert retried.status_code == 200, retried.text
            await manager.join()
            new_id = retried.json()["task_id"]
            record = manager.store.get(new_id)
            assert record is not None
            assert record.status is TaskStatus.SUCCESS
        assert manager.queue_stats()["default"]["started"] == 2  # the retry ran here
        assert not first.started  # the first run's manager stays stopped


async def test_admin_queue_and_history_routes_use_the_second_runs_manager(tmp_path: Any) -> None:
    """Second lifespan run: GET /queues shows the new manager; DELETE /history hits its backend."""
    container = TaskflowContainer()
    container.config.from_dict(
        {
            "backend": {"kind": "sqlite", "sqlite": {"path": str(tmp_path / "t.sqlite3")}},
            "admin": {"enabled": True},
        }
    )
    container.registry.override(tasks)
    app = FastAPI()
    install(app, container)
    async with app.router.lifespan_context(app):
        first = await container.task_manager()
        first.add_task(greet, "a")
        first.add_task(greet, "b")
        await first.join()
    async with app.router.lifespan_context(app):
        manager = await container.task_manager()
        manager.add_task(greet, "c")
        await manager.join()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            queues = (await client.get("/tasks/queues")).json()
            assert queues["default"]["started"] == 1  # this run's one task, not the first's two
            deleted = (
                await client.delete(
                    "/tasks/history", params={"all": "true"}, headers={"X-CSRF-Token": "1"}
                )
            ).json()
            # The first run's two records and this run's one (its write is flushed before the
            # delete, so no buffered write brings a deleted row back).
            assert deleted["backend"] == 3
