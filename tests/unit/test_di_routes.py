"""Routes on the DI container: handles from any path parameter, the admin's warning at the first
startup, ``Provide[...]`` where the aliases cannot help, and what wiring really requires."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
import pytest
import wiring_tasks
from dependency_injector import providers
from dependency_injector.wiring import Provide, inject
from fastapi import APIRouter, Depends, FastAPI
from test_di_fastapi import AppContainer
from wiring_tasks import greet_inject_outside, greet_recommended

from fastapi_taskflow import MemoryBackend, TaskHandle, TaskManager, TaskRegistry, TaskStatus
from fastapi_taskflow.di import (
    InvalidConfigurationError,
    TaskflowContainer,
    TaskManagerDep,
    exit_on_config_error,
    install,
    running,
    stop_resources,
    task_handle_from,
    taskflow_lifespan,
)

tasks = TaskRegistry()


@tasks.task()
async def greet(name: str) -> str:
    return f"hello {name}"


def memory_container(**config: Any) -> TaskflowContainer:
    container = TaskflowContainer()
    container.config.from_dict({"backend": {"kind": "memory"}, **config})
    container.registry.override(tasks)
    return container


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


JobHandle = Annotated[TaskHandle, Depends(task_handle_from("job_id"))]


async def test_task_handle_from_any_path_parameter() -> None:
    """/jobs/{job_id} gets the handle; an unknown id is a JSON 404; the schema names job_id;
    a path without {job_id} answers 422 naming it."""
    container = memory_container()
    app = FastAPI()
    install(app, container)

    @app.get("/jobs/{job_id}")
    def job(handle: JobHandle) -> dict[str, str]:
        return {"task_id": handle.task_id, "status": handle.status.value}

    @app.get("/latest")
    def misdeclared(handle: JobHandle) -> dict[str, str]:
        return {"task_id": handle.task_id}

    async with serving(app) as client:
        manager = await container.task_manager()
        handle = manager.add_task(greet, "ada")
        await manager.join()
        found = await client.get(f"/jobs/{handle.task_id}")
        missing = await client.get("/jobs/nope")
        no_parameter = await client.get("/latest")
        schema = (await client.get("/openapi.json")).json()
    assert found.json() == {"task_id": handle.task_id, "status": "success"}
    assert missing.status_code == 404
    assert missing.json()["detail"] == {
        "error": "task_not_found",
        "message": "no such task",
        "task_id": "nope",
    }
    assert no_parameter.status_code == 422  # the path has no {job_id}: named, not a 500
    assert no_parameter.json()["detail"][0]["loc"] == ["path", "job_id"]
    parameters = schema["paths"]["/jobs/{job_id}"]["get"]["parameters"]
    assert [(p["name"], p["in"]) for p in parameters] == [("job_id", "path")]


def test_task_handle_from_refuses_unusable_names() -> None:
    """A name that cannot be a path parameter is refused when the dependency is made."""
    for name in ("job-id", "", "request"):
        with pytest.raises(ValueError, match="not a usable path parameter name"):
            task_handle_from(name)


@pytest.mark.parametrize("style", ["install", "taskflow_lifespan"])
async def test_no_auth_warning_at_the_first_startup(
    style: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A dashboard mounted from settings without auth warns at the first startup, once per run."""
    container = memory_container(admin={"enabled": True})
    if style == "install":
        app = FastAPI()
        install(app, container)
    else:
        app = FastAPI(lifespan=taskflow_lifespan(container))

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "has no auth" in r.getMessage()]

    with caplog.at_level(logging.WARNING):
        async with serving(app) as client:
            assert len(warnings()) == 1
            assert (await client.get("/tasks/dashboard")).status_code == 200
        async with serving(app):
            pass
    assert len(warnings()) == 2
    assert warnings()[0].startswith("TaskAdmin at /tasks has no auth")


# ---- Provide[...] where the aliases would serve: exactly how it behaves ------------------------


@pytest.fixture
def wired() -> Iterator[AppContainer]:
    """The user's container on memory, this module wired (and nothing else)."""
    container = AppContainer()
    container.taskflow.config.from_dict({"backend": {"kind": "memory"}})
    container.taskflow.registry.override(wiring_tasks.tasks)
    container.wire(modules=[__name__])
    yield container
    container.unwire()


# Module level: wiring patches the functions a wired module holds, not ones made in a function.
provide_routes = APIRouter()


@provide_routes.get("/provided")
@inject
async def provided(
    manager: TaskManager = Depends(Provide[AppContainer.taskflow.task_manager]),  # noqa: B008
) -> dict[str, bool]:
    return {"manager": isinstance(manager, TaskManager)}


@provide_routes.get("/provided-sync")
@inject
def provided_sync(
    manager: TaskManager = Depends(Provide[AppContainer.taskflow.task_manager]),  # noqa: B008
) -> dict[str, bool]:
    return {"manager": isinstance(manager, TaskManager)}


@inject  # above the route decorator: FastAPI registered the function before @inject wrapped it
@provide_routes.get("/inject-outside")
async def inject_outside(greeter: Any = Depends(Provide[AppContainer.greeter])) -> dict[str, str]:  # noqa: B008
    return {"greeter": type(greeter).__name__}


@provide_routes.get("/alias-sync")
def alias_sync(manager: TaskManagerDep) -> dict[str, bool]:
    return {"manager": isinstance(manager, TaskManager)}


async def test_provided_manager_in_a_def_route_fails_as_documented(wired: AppContainer) -> None:
    """The async Resource cannot be Provide'd into a def route (dependency-injector makes a
    future in FastAPI's worker thread); TaskManagerDep can."""
    app = FastAPI()
    app.include_router(provide_routes)
    install(app, wired)
    async with serving(app) as client:
        assert (await client.get("/provided")).json() == {"manager": True}
        assert (await client.get("/alias-sync")).json() == {"manager": True}
        with pytest.raises(RuntimeError, match="There is no current event loop in thread"):
            await client.get("/provided-sync")


async def test_provided_manager_without_a_lifespan_starts_it_unmanaged(
    wired: AppContainer,
) -> None:
    """Without install()/taskflow_lifespan(), a Provide route starts the manager on first use
    (dependency-injector's Resource), and nothing stops it; the aliases refuse instead."""
    app = FastAPI()
    app.include_router(provide_routes)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert not wired.taskflow.task_manager.initialized
        assert (await client.get("/provided")).json() == {"manager": True}
        assert wired.taskflow.task_manager.initialized  # started, by no lifespan
        with pytest.raises(RuntimeError, match=r"no taskflow container on app\.state"):
            await client.get("/alias-sync")
    await stop_resources(wired)


# ---- wiring and decorator order: what is required ----------------------------------------------


async def test_a_route_made_inside_a_function_is_not_wired(wired: AppContainer) -> None:
    """Wiring patches what a wired module holds: a route defined in a function gets the marker."""
    app = FastAPI()

    @app.get("/made-here")
    @inject
    async def made_here(greeter: Any = Depends(Provide[AppContainer.greeter])) -> dict[str, str]:  # noqa: B008
        return {"greeter": type(greeter).__name__}

    install(app, wired)
    async with serving(app) as client:
        assert (await client.get("/made-here")).json() == {"greeter": "Provide"}


async def run_then_retry(
    container: AppContainer, task: Any, label: str
) -> tuple[TaskHandle, TaskHandle]:
    """Run ``task`` (whose first run fails), then retry it: a retry runs the registered function."""
    async with running(container):
        manager = await container.taskflow.task_manager()
        first = manager.add_task(task, label)
        await manager.join()
        retried = await manager.retry(first.task_id)
        await manager.join()
    return first, retried


async def test_inject_above_the_route_decorator_gives_the_marker(wired: AppContainer) -> None:
    """On a route, @inject must sit under @router.get(...): above it, FastAPI calls the
    marker itself and the route receives a Provide object, not the service."""
    app = FastAPI()
    app.include_router(provide_routes)
    install(app, wired)
    async with serving(app) as client:
        assert (await client.get("/inject-outside")).json() == {"greeter": "Provide"}


async def test_task_module_need_not_be_wired_if_a_wired_module_imports_the_task(
    wired: AppContainer,
) -> None:
    """Wiring patches the function wherever a wired module holds it: here this module imports
    it from wiring_tasks, which is not wired, and the task receives the service."""
    handle, retried = await run_then_retry(wired, greet_recommended, "wired-elsewhere")
    assert handle.status is TaskStatus.FAILED  # the deliberate first failure
    assert retried.status is TaskStatus.SUCCESS  # greeter.word() worked: the service arrived


async def test_task_no_wired_module_reaches_gets_the_marker(wired: AppContainer) -> None:
    """A task in no wired module (not imported by name into one) gets the Provide marker
    itself: it fails, and the error names the marker."""
    async with running(wired):
        manager = await wired.taskflow.task_manager()
        handle = manager.add_task(wiring_tasks.greet_unreached, "nowhere")
        await manager.join()
    assert handle.status is TaskStatus.FAILED
    assert "'Provide' object has no attribute 'word'" in (handle.record.error or "")


async def test_inject_above_the_task_decorator_breaks_retries_and_requeues(
    wired: AppContainer,
) -> None:
    """@inject above @tasks.task(): add_task still injects (it calls the wrapper it was given),
    but a retry or a requeue after restart runs the registered, plain function: no service."""
    first, retried = await run_then_retry(wired, greet_inject_outside, "outside")
    assert first.record.error == "RuntimeError: the first run fails"  # it ran, injected
    assert retried.status is TaskStatus.FAILED
    assert "'Provide' object has no attribute 'word'" in (retried.record.error or "")


async def test_requeue_after_restart_runs_the_registered_function(wired: AppContainer) -> None:
    """Pending at shutdown and requeued at the next start, a task runs what the registry holds:
    with @tasks.task() above @inject it gets the service; the other order gets the marker."""
    shared = MemoryBackend()  # outlives both runs, as a database would
    wired.taskflow.backend.override(providers.Object(shared))
    wired.taskflow.config.from_dict(
        {"requeue_pending": True, "max_concurrent_tasks": 1, "drain_timeout": 0.05}
    )
    started, gate = asyncio.Event(), asyncio.Event()

    async def block() -> None:
        started.set()
        await gate.wait()

    wiring_tasks.first_runs.update({"requeued-recommended", "requeued-outside"})
    async with running(wired):
        manager = await wired.taskflow.task_manager()
        manager.add_task(block)
        await started.wait()  # the one slot is taken: both wait in the queue
        recommended = manager.add_task(greet_recommended, "requeued-recommended")
        outside = manager.add_task(greet_inject_outside, "requeued-outside")
    async with running(wired):
        manager = await wired.taskflow.task_manager()
        await manager.join()
        after = {h.task_id: await manager.get_record(h.task_id) for h in (recommended, outside)}
    assert after[recommended.task_id].status is TaskStatus.SUCCESS  # type: ignore[union-attr]
    failed = after[outside.task_id]
    assert failed is not None
    assert failed.status is TaskStatus.FAILED
    assert "'Provide' object has no attribute 'word'" in (failed.error or "")


# ---- configuration errors while the app is built -----------------------------------------------


@pytest.mark.parametrize(
    "build",
    [lambda container: install(FastAPI(), container), taskflow_lifespan],
    ids=["install", "taskflow_lifespan"],
)
def test_bad_settings_fail_when_the_app_is_built(build: Any) -> None:
    """install() and taskflow_lifespan() validate at once, not inside the server's startup."""
    container = memory_container(max_histroy=3)
    with pytest.raises(InvalidConfigurationError, match="did you mean 'max_history'"):
        build(container)


def test_exit_on_config_error_turns_the_error_into_its_message() -> None:
    """A decorated factory exits with the message alone (status 1); other errors pass through."""

    @exit_on_config_error
    def create_app(broken: bool) -> FastAPI:
        if broken:
            install(FastAPI(), memory_container(max_histroy=3))
        raise KeyError("not a configuration error")

    with pytest.raises(SystemExit) as stopped:
        create_app(True)
    assert str(stopped.value.code).startswith("invalid taskflow configuration (1 problem):")
    with pytest.raises(KeyError):
        create_app(False)
