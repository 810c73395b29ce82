"""add_lifespan: parts hook an app's lifespan once each, around the app's own, in nesting order."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import State

from fastapi_taskflow.fastapi_glue import add_lifespan


def _recorder(order: list[str], name: str) -> tuple[Callable[[], Awaitable[None]], ...]:
    async def startup() -> None:
        order.append(f"{name} start")

    async def shutdown() -> None:
        order.append(f"{name} stop")

    return startup, shutdown


async def test_hooks_wrap_the_router_lifespan_once_and_nest_in_order() -> None:
    """The router's lifespan is replaced once; the last hook starts first and stops last."""
    order: list[str] = []

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[dict[str, str]]:
        order.append("app start")
        yield {"greeting": "hi"}
        order.append("app stop")

    app = FastAPI(lifespan=own)
    manager, admin = object(), object()
    assert add_lifespan(app, manager, *_recorder(order, "manager"))
    wrapped = app.router.lifespan_context
    assert add_lifespan(app, admin, *_recorder(order, "admin"))
    assert not add_lifespan(app, manager, *_recorder(order, "manager again"))
    assert app.router.lifespan_context is wrapped
    async with app.router.lifespan_context(app) as state:
        assert state == {"greeting": "hi"}
    assert order == [
        "admin start",
        "manager start",
        "app start",
        "app stop",
        "manager stop",
        "admin stop",
    ]


async def test_a_failed_startup_stops_only_the_hooks_already_started() -> None:
    """A hook whose startup raises is not stopped; the hooks started before it are."""
    order: list[str] = []

    async def broken() -> None:
        raise RuntimeError("cannot start")

    app = FastAPI()
    add_lifespan(app, "inner", broken, _recorder(order, "inner")[1])
    add_lifespan(app, "outer", *_recorder(order, "outer"))
    try:
        async with app.router.lifespan_context(app):
            order.append("app ran")
    except RuntimeError:
        order.append("raised")
    assert order == ["outer start", "outer stop", "raised"]


class _GuardedState(State):
    """A State that fails when fastapi_glue reaches into its private ``_state`` dict."""

    def __getattribute__(self, name: str) -> Any:
        if (
            name == "_state"
            and sys._getframe(1).f_globals.get("__name__") == add_lifespan.__module__
        ):
            raise AssertionError("fastapi_glue read State._state")
        return super().__getattribute__(name)


def test_hooks_are_kept_through_the_public_state_api() -> None:
    """add_lifespan reads and writes app.state only through attributes, never State._state."""
    app = FastAPI()
    app.state = _GuardedState()

    async def hook() -> None:
        pass

    assert add_lifespan(app, "key", hook, hook)
    assert not add_lifespan(app, "key", hook, hook)


async def test_a_hook_added_while_another_starts_joins_the_run_under_way() -> None:
    """Added during a hook's startup (the DI container mounting TaskAdmin), a hook starts right
    after it and stops right before it in that same run, and takes part in later runs."""
    order: list[str] = []
    app = FastAPI()
    joiner = _recorder(order, "admin")

    async def container_start() -> None:
        order.append("container start")
        add_lifespan(app, "admin", *joiner)

    async def container_stop() -> None:
        order.append("container stop")

    add_lifespan(app, "container", container_start, container_stop)
    async with app.router.lifespan_context(app):
        order.append("serving")
    assert order == ["container start", "admin start", "serving", "admin stop", "container stop"]
    order.clear()
    async with app.router.lifespan_context(app):
        pass
    assert order == ["admin start", "container start", "container stop", "admin stop"]
