"""The FastAPI internals fastapi_glue relies on, pinned against the installed FastAPI, and what
happens when they are missing: a FastAPI that changes them fails here, by name."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import BackgroundTasks, FastAPI, HTTPException, Request

from fastapi_taskflow import TaskManager, fastapi_glue
from fastapi_taskflow.fastapi_glue import request_exit_stack, route_background_params


async def test_the_request_exit_stack_closes_after_background_tasks_with_the_routes_error() -> None:
    """FastAPI gives each route an exit stack that closes after the response was sent and the
    background tasks ran, and that sees the exception of a route that raised."""
    app = FastAPI()
    events: list[str] = []

    def closed(exc_type: type[BaseException] | None, *_: Any) -> bool:
        events.append(f"closed {exc_type.__name__ if exc_type else 'cleanly'}")
        return False

    @app.get("/ok")
    async def ok(request: Request, background_tasks: BackgroundTasks) -> dict[str, bool]:
        stack = request_exit_stack(request.scope)
        assert isinstance(stack, AsyncExitStack)
        stack.push(closed)
        background_tasks.add_task(events.append, "background task")
        return {"ok": True}

    @app.get("/fails")
    async def fails(request: Request) -> None:
        stack = request_exit_stack(request.scope)
        assert stack is not None
        stack.push(closed)
        raise HTTPException(status_code=409)

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        assert (await client.get("/ok")).status_code == 200
        assert (await client.get("/fails")).status_code == 409
    assert events == ["background task", "closed cleanly", "closed HTTPException"]


def test_without_the_exit_stack_the_lookup_gives_none_and_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A FastAPI that puts no exit stack in the scope (older than 0.118, or one that renamed the
    key) is told once in the log; the lookup answers None instead of failing the request."""
    monkeypatch.setattr(fastapi_glue, "_missing_stack_warned", False)
    with caplog.at_level(logging.WARNING, logger="fastapi_taskflow"):
        assert request_exit_stack({"type": "http"}) is None
        assert request_exit_stack({"type": "http", "fastapi_inner_astack": "not a stack"}) is None
    warnings = [r for r in caplog.records if "per-request exit stack" in r.getMessage()]
    assert len(warnings) == 1
    assert "0.118" in warnings[0].getMessage()


def test_the_dependant_still_names_its_background_tasks_parameter() -> None:
    """install() moves a route's BackgroundTasks parameter to another dependency through
    ``Dependant.background_tasks_param_name``: the installed FastAPI still has it."""
    app = FastAPI()

    @app.get("/")
    async def route(background_tasks: BackgroundTasks) -> None:
        pass

    (dependant,) = [r.dependant for r in app.router.routes if getattr(r, "name", "") == "route"]
    assert dependant.background_tasks_param_name == "background_tasks"


def test_a_dependant_without_that_attribute_fails_install_with_what_to_do_instead() -> None:
    """Under a FastAPI whose Dependant lost the attribute, install() says so and names the
    public way instead of failing somewhere inside FastAPI's solver."""
    app = FastAPI()

    @app.get("/")
    async def route() -> None:
        pass

    (api_route,) = [r for r in app.router.routes if getattr(r, "name", "") == "route"]
    api_route.dependant = SimpleNamespace(call=route, dependencies=[])  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match=r"Depends\(task_manager.get_tasks\)"):
        route_background_params(app, TaskManager().get_tasks)
