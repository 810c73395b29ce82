"""add_lifespan: parts hook an app's lifespan once each, around the app's own, in nesting order;
a part that is replaced takes its hook off, and the app then lets go of it."""

from __future__ import annotations

import gc
import sys
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import BackgroundTasks, FastAPI
from starlette.datastructures import State

from fastapi_taskflow import ManagedBackgroundTasks, TaskManager, TaskStatus
from fastapi_taskflow.di import TaskflowContainer, install
from fastapi_taskflow.fastapi_glue import add_lifespan, remove_lifespan


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
    assert add_lifespan(app, manager, *_recorder(order, "manager")) is not None
    wrapped = app.router.lifespan_context
    assert add_lifespan(app, admin, *_recorder(order, "admin")) is not None
    assert add_lifespan(app, manager, *_recorder(order, "manager again")) is None
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

    added = add_lifespan(app, "key", hook, hook)
    assert added is not None
    assert add_lifespan(app, "key", hook, hook) is None
    assert added.remove()
    assert add_lifespan(app, "key", hook, hook) is not None


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


async def test_a_removed_hook_runs_in_no_later_lifespan() -> None:
    """remove() (or remove_lifespan by key) takes a hook off: the next lifespan runs the others
    only, and the key may hook in again."""
    order: list[str] = []
    app = FastAPI()
    old = add_lifespan(app, "old", *_recorder(order, "old"))
    add_lifespan(app, "other", *_recorder(order, "other"))
    assert old is not None
    assert old.key == "old"
    assert old.remove()
    assert not old.remove()
    assert not remove_lifespan(app, "old")
    async with app.router.lifespan_context(app):
        pass
    assert order == ["other start", "other stop"]
    assert remove_lifespan(app, "other")
    order.clear()
    async with app.router.lifespan_context(app):
        pass
    assert order == []


async def test_a_hook_removed_during_a_run_still_stops_in_that_run() -> None:
    """Taken off while the app runs, a hook still shuts down at the end of that run."""
    order: list[str] = []
    app = FastAPI()
    hook = add_lifespan(app, "part", *_recorder(order, "part"))
    assert hook is not None
    async with app.router.lifespan_context(app):
        hook.remove()
    assert order == ["part start", "part stop"]


async def _run_lifespan(app: FastAPI) -> None:
    async with LifespanManager(app):
        pass


async def test_a_detached_manager_is_not_started_again_and_can_be_collected() -> None:
    """manager.detach(app) before a new manager's init_app: the next lifespan starts the new
    one only, and nothing of the app keeps the old manager alive."""
    app = FastAPI()
    old = TaskManager()
    old.init_app(app)
    await _run_lifespan(app)
    new = TaskManager()
    old.detach(app)
    new.init_app(app)
    gone = weakref.ref(old)
    del old
    gc.collect()
    assert gone() is None
    seen: list[bool] = []

    @app.get("/")
    async def route() -> None:
        seen.append(new.started)

    async with LifespanManager(app) as running:
        transport = httpx.ASGITransport(app=running.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            assert (await client.get("/")).status_code == 200
    assert seen == [True]
    assert not new.started


async def test_detach_gives_installed_routes_back_for_the_next_managers_install() -> None:
    """The BackgroundTasks parameters old.install() rewired go back to FastAPI on detach, so
    new.install() gives them its own tasks; a route's own Depends(old.get_tasks) stays."""
    app = FastAPI()
    old, new = TaskManager(), TaskManager()
    ran: list[str] = []

    async def note(word: str) -> None:
        ran.append(word)

    @app.post("/plain")
    async def plain(background_tasks: BackgroundTasks) -> dict[str, str]:
        assert isinstance(background_tasks, ManagedBackgroundTasks)
        return {"id": background_tasks.add_task(note, "plain")}

    old.install(app)
    assert app.state._taskflow_install is old
    old.detach(app)
    assert getattr(app.state, "_taskflow_install", None) is None
    new.install(app)
    async with LifespanManager(app) as running:
        transport = httpx.ASGITransport(app=running.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            task_id = (await client.post("/plain")).json()["id"]
            await new.join(timeout=5)
    record = new.store.get(task_id)
    assert record is not None
    assert record.status is TaskStatus.SUCCESS
    assert old.store.get(task_id) is None
    assert ran == ["plain"]


def test_detach_before_start_takes_the_managers_journal_barrier_off(tmp_path: Any) -> None:
    """A manager with a backend adds a journal barrier middleware; detached before the app
    started, it takes it off too (the app would otherwise hold the manager through it)."""
    app = FastAPI()
    old = TaskManager(snapshot_db=str(tmp_path / "tasks.db"))
    old.init_app(app)
    assert [m.kwargs.get("manager") for m in app.user_middleware] == [old]
    old.detach(app)
    assert app.user_middleware == []


async def test_installing_another_container_replaces_the_one_before() -> None:
    """install(app, second) after install(app, first): the lifespan runs the second
    container's resources only, and the first can be collected."""
    app = FastAPI()
    first = TaskflowContainer()
    first.config.from_dict({"backend": {"kind": "memory"}})
    install(app, first)
    install(app, first)  # harmless twice
    second = TaskflowContainer()
    second.config.from_dict({"backend": {"kind": "memory"}})
    install(app, second)
    gone = weakref.ref(first)
    del first
    gc.collect()
    assert gone() is None
    async with LifespanManager(app):
        assert second.task_manager.initialized
    assert not second.task_manager.initialized
