"""Routes on the DI container: handles from any path parameter, the admin's warning at the first
startup, ``Provide[...]`` where the aliases cannot help, and what wiring really requires."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI

from fastapi_taskflow import TaskHandle, TaskRegistry
from fastapi_taskflow.di import (
    TaskflowContainer,
    install,
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
    """/jobs/{job_id} gets the handle; an unknown id is a JSON 404; the schema names job_id."""
    container = memory_container()
    app = FastAPI()
    install(app, container)

    @app.get("/jobs/{job_id}")
    def job(handle: JobHandle) -> dict[str, str]:
        return {"task_id": handle.task_id, "status": handle.status.value}

    async with serving(app) as client:
        manager = await container.task_manager()
        handle = manager.add_task(greet, "ada")
        await manager.join()
        found = await client.get(f"/jobs/{handle.task_id}")
        missing = await client.get("/jobs/nope")
        schema = (await client.get("/openapi.json")).json()
    assert found.json() == {"task_id": handle.task_id, "status": "success"}
    assert missing.status_code == 404
    assert missing.json()["detail"] == {
        "error": "task_not_found",
        "message": "no such task",
        "task_id": "nope",
    }
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
