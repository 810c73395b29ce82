"""The core rules of the foundation: handles, dependencies, install, bad input, store, names."""

from __future__ import annotations

import asyncio
import gc
import importlib
import inspect
import logging
import sys
import threading
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from control_helpers import running as started
from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException, Response, WebSocket
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from starlette.background import BackgroundTask

from fastapi_taskflow import (
    InMemoryLogger,
    ManagedBackgroundTasks,
    TaskHandle,
    TaskManager,
    TaskObserver,
    TaskRecord,
    TaskStatus,
    task_log,
)
from fastapi_taskflow.loggers import FileLogger


@asynccontextmanager
async def client_for(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app's lifespan running, and a client talking to it in process."""
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client


async def post_and_settle(app: FastAPI, manager: TaskManager) -> TaskRecord:
    """POST /go with the app's lifespan running, and the record of the task id it answers once
    the manager has settled."""
    async with client_for(app) as client:
        response = await client.post("/go")
        await manager.join(timeout=5)
    record = manager.store.get(response.json()["id"])
    assert record is not None
    return record


def noting_app() -> tuple[TaskManager, FastAPI, list[str], Callable[..., Any]]:
    """A manager wired to a new app, and its registered task ``note(word)`` that records words."""
    manager = TaskManager()
    app = FastAPI()
    manager.init_app(app)
    ran: list[str] = []

    @manager.task()
    async def note(word: str) -> None:
        ran.append(word)

    return manager, app, ran, note


# ---- TaskHandle ------------------------------------------------------------------------------


async def test_handle_is_the_task_id_string_with_status_record_wait_and_cancel() -> None:
    """add_task returns a TaskHandle: a str equal to the id, with status, record, wait, cancel."""
    release = asyncio.Event()
    async with started() as manager:

        @manager.task()
        async def slow() -> None:
            await release.wait()

        handle = manager.add_task(slow)
        assert isinstance(handle, TaskHandle)
        assert isinstance(handle, str)
        assert handle == handle.task_id == handle.record.task_id
        assert str(handle) == handle.task_id
        assert {handle: 1}[handle.task_id] == 1
        assert handle.status in (TaskStatus.PENDING, TaskStatus.RUNNING)
        other = manager.add_task(slow)
        await asyncio.sleep(0)  # both attempts start
        assert handle.status is TaskStatus.RUNNING
        try:
            assert other.cancel() is True
        finally:
            release.set()
        record = await handle.wait(timeout=5)
        assert record.status is TaskStatus.SUCCESS
        assert (await other.wait(timeout=5)).status is TaskStatus.CANCELLED
        assert handle.cancel() is False  # already finished


# ---- FastAPI dependencies and install() ------------------------------------------------------


def test_get_tasks_is_an_async_dependency_and_background_tasks_is_its_alias() -> None:
    """get_tasks is async (no threadpool hop per request); background_tasks is the same."""
    manager = TaskManager()
    assert inspect.iscoroutinefunction(manager.get_tasks)
    assert manager.background_tasks == manager.get_tasks


async def test_depends_background_tasks_alias_enqueues_managed_tasks() -> None:
    """Depends(task_manager.background_tasks) gives a ManagedBackgroundTasks like get_tasks."""
    manager, app, ran, note = noting_app()

    @app.post("/go")
    async def go(
        tasks: ManagedBackgroundTasks = Depends(manager.background_tasks),  # noqa: B008
    ) -> dict[str, str]:
        assert isinstance(tasks, ManagedBackgroundTasks)
        return {"id": tasks.add_task(note, "a")}

    async with client_for(app) as client:
        task_id = (await client.post("/go")).json()["id"]
        await manager.join(timeout=5)
    assert ran == ["a"]
    assert manager.store.get(task_id) is not None


async def test_install_gives_plain_background_tasks_params_managed_ones_for_that_app_only() -> None:
    """install(app) rewires BackgroundTasks params of that app; another app keeps FastAPI's."""
    manager = TaskManager()

    async def route(background_tasks: BackgroundTasks) -> dict[str, Any]:
        result = background_tasks.add_task(noop)
        return {"type": type(background_tasks).__name__, "result": result}

    managed_app, plain_app = FastAPI(), FastAPI()
    managed_app.post("/go")(route)
    plain_app.post("/go")(route)
    manager.install(managed_app)

    async with client_for(managed_app) as client:
        body = (await client.post("/go")).json()
        await manager.join(timeout=5)
    assert body["type"] == "ManagedBackgroundTasks"
    assert manager.store.get(body["result"]) is not None

    async with client_for(plain_app) as client:
        body = (await client.post("/go")).json()
    assert body == {"type": "BackgroundTasks", "result": None}
    assert BackgroundTasks.add_task is not ManagedBackgroundTasks.add_task


async def noop() -> None:
    """A task that does nothing."""


async def test_tasks_added_in_a_request_start_after_the_response_is_sent() -> None:
    """A task added in a route starts only once the response body has been sent."""
    manager = TaskManager()
    events: list[str] = []
    inner = FastAPI()
    manager.init_app(inner)

    @manager.task()
    async def record_start() -> None:
        events.append("task started")

    @inner.post("/go")
    async def go(
        tasks: ManagedBackgroundTasks = Depends(manager.get_tasks),  # noqa: B008
    ) -> dict[str, str]:
        tasks.add_task(record_start)
        events.append("handler returned")
        return {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async def watching_send(message: dict[str, Any]) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                events.append("response sent")

        await inner(scope, receive, watching_send)

    async with LifespanManager(inner):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            await client.post("/go")
        await manager.join(timeout=5)
    assert events == ["handler returned", "response sent", "task started"]


async def test_a_task_added_after_the_response_went_out_starts_at_once() -> None:
    """``tasks`` kept past its request starts what it is given at once, instead of holding it
    for a response that is long gone (it would stay PENDING forever)."""
    manager, inner, ran, note = noting_app()
    kept: list[ManagedBackgroundTasks] = []

    @inner.post("/go")
    async def go(
        tasks: ManagedBackgroundTasks = Depends(manager.get_tasks),  # noqa: B008
    ) -> dict[str, str]:
        tasks.add_task(note, "in the request")
        kept.append(tasks)
        return {}

    async with client_for(inner) as client:
        assert (await client.post("/go")).status_code == 200
        await manager.join(timeout=5)
        handle = kept[0].add_task(note, "after the response")
        await manager.join(timeout=5)
        assert handle.status is TaskStatus.SUCCESS
    assert ran == ["in the request", "after the response"]


async def test_tasks_still_start_when_a_response_brings_its_own_background() -> None:
    """A route returning ``Response(background=...)`` makes FastAPI drop the request's
    background tasks; the tasks added through ``tasks`` start anyway when the request ends."""
    manager, app, ran, note = noting_app()

    def plain_background() -> None:
        ran.append("response's own")

    @app.post("/go")
    async def go(
        tasks: ManagedBackgroundTasks = Depends(manager.get_tasks),  # noqa: B008
    ) -> Response:
        handle = tasks.add_task(note, "managed")
        return JSONResponse({"id": handle}, background=BackgroundTask(plain_background))

    record = await post_and_settle(app, manager)
    assert record.status is TaskStatus.SUCCESS
    assert sorted(ran) == ["managed", "response's own"]


async def test_tasks_of_a_request_that_raised_are_cancelled_with_the_reason() -> None:
    """A route that raises after adding tasks gets no background tasks, as in FastAPI: they are
    CANCELLED, saying why, instead of waiting forever as PENDING."""
    manager = TaskManager()
    app = FastAPI()
    manager.init_app(app)
    added: list[TaskHandle] = []

    @manager.task()
    async def never() -> None:
        raise AssertionError("must not run")

    @app.post("/go")
    async def go(
        tasks: ManagedBackgroundTasks = Depends(manager.get_tasks),  # noqa: B008
    ) -> None:
        added.append(tasks.add_task(never))
        raise HTTPException(status_code=409, detail="conflict")

    async with client_for(app) as client:
        assert (await client.post("/go")).status_code == 409
        await manager.join(timeout=5)
    (handle,) = added
    assert handle.status is TaskStatus.CANCELLED
    assert "HTTPException" in (handle.record.error or "")
    assert manager.metrics()["pending"] == 0


async def test_without_fastapis_request_exit_stack_tasks_still_start_after_the_response(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under a FastAPI that gives routes no exit stack, only the settling of requests that never
    ran their background tasks is lost: tasks still start once the response is out."""
    from fastapi_taskflow import fastapi_glue

    monkeypatch.setattr(fastapi_glue, "_REQUEST_STACK_KEY", "no_such_scope_key")
    monkeypatch.setattr(fastapi_glue, "_missing_stack_warned", True)
    manager, app, ran, note = noting_app()

    @app.post("/go")
    async def go(
        tasks: ManagedBackgroundTasks = Depends(manager.get_tasks),  # noqa: B008
    ) -> dict[str, str]:
        return {"id": tasks.add_task(note, "after the response")}

    record = await post_and_settle(app, manager)
    assert record.status is TaskStatus.SUCCESS
    assert ran == ["after the response"]


async def test_a_large_burst_starts_in_slices_so_the_loop_keeps_turning() -> None:
    """600 tasks from one request start START_SLICE at a time with a turn of the event loop in
    between: the first tasks run while later ones still wait to be started, and all run once."""
    from fastapi_taskflow.handles import START_SLICE

    manager = TaskManager()
    app = FastAPI()
    manager.init_app(app)
    waiting_when_first_ran: list[int] = []
    ran: list[int] = []

    @manager.task()
    async def probe(i: int) -> None:
        if not ran:
            waiting_when_first_ran.append(manager.metrics()["pending"])
        ran.append(i)

    @app.post("/burst")
    async def burst(
        tasks: ManagedBackgroundTasks = Depends(manager.get_tasks),  # noqa: B008
    ) -> dict[str, int]:
        for i in range(600):
            tasks.add_task(probe, i)
        return {"queued": 600}

    async with client_for(app) as client:
        assert (await client.post("/burst")).json() == {"queued": 600}
        await manager.join(timeout=5)
    assert START_SLICE < 600
    assert waiting_when_first_ran == [600 - START_SLICE]
    assert sorted(ran) == list(range(600))


async def test_a_burst_cancelled_between_slices_still_starts_every_task() -> None:
    """If the request's background step is cancelled after the first slice, the tasks not yet
    started start at once instead of staying PENDING."""
    from fastapi_taskflow.handles import START_SLICE

    async with started() as manager:
        ran: list[int] = []

        @manager.task()
        async def count(i: int) -> None:
            ran.append(i)

        tasks = ManagedBackgroundTasks(manager, BackgroundTasks())
        for i in range(3 * START_SLICE):
            tasks.add_task(count, i)
        starting = asyncio.create_task(tasks())
        await asyncio.sleep(0)  # one turn: the first slice starts, then it yields the loop
        assert manager.metrics()["pending"] == 2 * START_SLICE
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        await manager.join(timeout=5)
    assert sorted(ran) == list(range(3 * START_SLICE))


async def test_a_requests_tasks_object_is_freed_without_the_garbage_collector() -> None:
    """No reference cycle per request: the request's ManagedBackgroundTasks goes away by
    reference counting once the request is over (a cycle would wait for a full collection)."""
    manager, app, _ran, note = noting_app()
    seen: list[weakref.ref[ManagedBackgroundTasks]] = []

    @app.post("/go")
    async def go(
        tasks: ManagedBackgroundTasks = Depends(manager.get_tasks),  # noqa: B008
    ) -> dict[str, str]:
        tasks.add_task(note, "a")
        seen.append(weakref.ref(tasks))
        return {}

    async with client_for(app) as client:
        await client.post("/go")  # warm-up: first-request caches
        gc.collect()
        gc.disable()
        try:
            await client.post("/go")
            await manager.join(timeout=5)
            assert seen[-1]() is None
        finally:
            gc.enable()


def test_tasks_added_in_a_websocket_route_start_when_the_session_ends() -> None:
    """``Depends(manager.get_tasks)`` also serves websocket routes: FastAPI runs no background
    tasks there, so what the route adds starts when the session ends."""
    manager, app, ran, note = noting_app()

    @app.websocket("/ws")
    async def session(
        websocket: WebSocket,
        tasks: ManagedBackgroundTasks = Depends(manager.get_tasks),  # noqa: B008
    ) -> None:
        await websocket.accept()
        tasks.add_task(note, "from the socket")
        await websocket.send_text("added")
        await websocket.close()

    with TestClient(app) as client:
        with client.websocket_connect("/ws") as socket:
            assert socket.receive_text() == "added"
        assert client.portal is not None
        client.portal.call(manager.join, 5)
    assert ran == ["from the socket"]


async def test_join_returns_when_nothing_is_pending_or_running() -> None:
    """join() waits for every task, including retries, and returns at once when idle."""
    async with started() as manager:
        await manager.join(timeout=1)
        attempts: list[int] = []

        @manager.task(retries=2)
        async def flaky() -> None:
            attempts.append(1)
            if len(attempts) < 3:
                raise RuntimeError("not yet")

        handle = manager.add_task(flaky)
        await manager.join(timeout=5)
        assert handle.status is TaskStatus.SUCCESS
        assert len(attempts) == 3
        assert manager.store.active == 0


# ---- Bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"retries": -1}, "retries"),
        ({"delay": -0.5}, "delay"),
        ({"backoff": 0.5}, "backoff"),
        ({"executor": "gpu"}, "executor"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_bad_task_options_raise_at_decoration(options: dict[str, Any], words: str) -> None:
    """A wrong decorator option raises ValueError naming the option."""
    manager = TaskManager()
    with pytest.raises(ValueError, match=words):
        manager.task(**options)


def test_a_lambda_cannot_be_a_process_task() -> None:
    """executor='process' on a lambda or nested function says a worker could not import it."""
    manager = TaskManager()
    with pytest.raises(ValueError, match="module-level"):
        manager.task(executor="process")(lambda: None)

    def nested() -> None:
        pass

    with pytest.raises(ValueError, match="module-level"):
        manager.task(executor="process")(nested)


def test_async_function_cannot_use_a_thread_or_process_executor() -> None:
    """An impossible executor/function combination raises at decoration."""
    manager = TaskManager()
    with pytest.raises(ValueError, match="plain 'def'"):
        manager.task(executor="thread")(noop)


def test_a_malformed_key_is_refused_without_echoing_it() -> None:
    """encrypt_args_key must be a Fernet key; the error explains the shape and hides the key."""
    with pytest.raises(ValueError, match="not a valid Fernet key") as caught:
        TaskManager(encrypt_args_key="hunter2-not-a-key")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"max_concurrent_tasks": 0}, "max_concurrent_tasks"),
        ({"max_sync_threads": -3}, "max_sync_threads"),
        ({"max_process_workers": 1.5}, "max_process_workers"),
        ({"snapshot_interval": 0}, "snapshot_interval"),
        ({"max_history": -1}, "max_history"),
        ({"loggers": ["not an observer"]}, "TaskObserver"),
    ],
)
def test_bad_manager_settings_raise_at_construction(options: dict[str, Any], words: str) -> None:
    """A wrong TaskManager setting raises at construction with the setting's name."""
    with pytest.raises((ValueError, TypeError), match=words):
        TaskManager(**options)


def test_the_0_12_registry_parameters_are_accepted_and_change_nothing() -> None:
    """instance_url, instance_tasks_prefix, registry_ttl and registry_heartbeat are accepted."""
    legacy = TaskManager(
        instance_url="http://10.0.0.5:8000",
        instance_tasks_prefix="/tasks",
        registry_ttl=90,
        registry_heartbeat=30,
    )
    assert legacy.settings == TaskManager().settings


def test_merged_list_ttl_is_accepted_unused_and_still_checked() -> None:
    """0.12's merged_list_ttl changes no setting, and a negative one is refused by name."""
    assert TaskManager(merged_list_ttl=0).settings == TaskManager().settings
    assert not hasattr(TaskManager().settings, "merged_list_ttl")
    with pytest.raises(ValueError, match="merged_list_ttl: Input should be greater than or equal"):
        TaskManager(merged_list_ttl=-1)


def test_an_unknown_parameter_is_a_type_error() -> None:
    """A misspelt parameter fails like any Python call."""
    with pytest.raises(TypeError, match="snapshot_dbb"):
        TaskManager(snapshot_dbb="tasks.db")  # type: ignore[call-arg]


async def test_unknown_task_id_is_a_404_with_a_json_body() -> None:
    """GET /tasks/{unknown id} answers 404 with a JSON body."""
    from fastapi_taskflow import TaskAdmin

    manager = TaskManager()
    app = FastAPI()
    TaskAdmin(app, manager)
    async with client_for(app) as client:
        response = await client.get(f"/tasks/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()


# ---- The store ---------------------------------------------------------------------------------


async def test_counters_follow_every_transition() -> None:
    """Metrics come from kept counters: pending, running, success and failed add up."""
    release = asyncio.Event()
    async with started() as manager:

        @manager.task()
        async def held() -> None:
            await release.wait()

        @manager.task()
        async def broken() -> None:
            raise ValueError("nope")

        manager.add_task(held)
        manager.add_task(broken)
        await asyncio.sleep(0)
        metrics = manager.metrics()
        assert (metrics["total"], metrics["running"]) == (2, 1)
        release.set()
        await manager.join(timeout=5)
        metrics = manager.metrics()
        assert (metrics["success"], metrics["failed"], metrics["running"]) == (1, 1, 0)
        assert (metrics["pending"], metrics["total"]) == (0, 2)
        assert metrics["success_rate"] == 0.5


async def test_max_history_bounds_finished_records_in_memory() -> None:
    """max_history keeps the newest finished records in memory; counters still count them all."""
    async with started(max_history=5) as manager:
        handles = [manager.add_task(noop) for _ in range(12)]
        await manager.join(timeout=5)
        kept = [h for h in handles if manager.store.get(h.task_id) is not None]
        assert kept == handles[-5:]
        assert len(manager.store) == 5
        assert manager.metrics()["success"] == 12


async def test_unregistered_functions_run_and_are_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A plain function can be enqueued; the 'not registered' notice is logged once per function."""

    async def plain(n: int) -> None:
        pass

    caplog.set_level(logging.INFO, logger="fastapi_taskflow")
    async with started() as manager:
        for n in range(3):
            manager.add_task(plain, n)
        await manager.join(timeout=5)
        assert manager.metrics()["success"] == 3
    notices = [r for r in caplog.records if "not registered" in r.getMessage()]
    assert len(notices) == 1


# ---- Task names ------------------------------------------------------------------------------


def _write_module(directory: Path, name: str, greeting: str) -> None:
    (directory / f"{name}.py").write_text(
        f"async def send_email(to, sent):\n    sent.append(({greeting!r}, to))\n"
    )


async def test_same_function_name_in_two_modules_does_not_collide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two modules' send_email register under their qualified names and each runs its own."""
    suffix = uuid.uuid4().hex[:8]
    names = [f"billing_{suffix}", f"marketing_{suffix}"]
    _write_module(tmp_path, names[0], "invoice")
    _write_module(tmp_path, names[1], "newsletter")
    monkeypatch.syspath_prepend(str(tmp_path))
    modules = [importlib.import_module(name) for name in names]
    try:
        manager = TaskManager()
        for module in modules:
            manager.task()(module.send_email)
        assert f"{names[0]}:send_email" in manager.registry
        assert f"{names[1]}:send_email" in manager.registry
        sent: list[tuple[str, str]] = []
        await manager.startup()
        first = manager.add_task(modules[0].send_email, "a@x", sent)
        second = manager.add_task(modules[1].send_email, "b@x", sent)
        await manager.join(timeout=5)
        await manager.shutdown()
        assert first.record.func_name == f"{names[0]}:send_email"
        assert second.record.func_name == f"{names[1]}:send_email"
        assert sorted(sent) == [("invoice", "a@x"), ("newsletter", "b@x")]
    finally:
        for name in names:
            sys.modules.pop(name, None)


async def test_name_option_is_used_for_retry_lookups() -> None:
    """A task declared with name= can be retried by id later, under that name."""
    outcomes = ["fail", "ok"]
    async with started() as manager:

        @manager.task(name="emails.welcome")
        async def welcome(to: str) -> None:
            if outcomes.pop(0) == "fail":
                raise ConnectionError("smtp down")

        first = manager.add_task(welcome, "ada@example.com")
        assert (await first.wait(timeout=5)).status is TaskStatus.FAILED
        assert first.record.func_name == "emails.welcome"
        again = await manager.retry(first.task_id)
        record = await again.wait(timeout=5)
    assert record.status is TaskStatus.SUCCESS
    assert record.func_name == "emails.welcome"
    assert outcomes == []


# ---- Observers ---------------------------------------------------------------------------------


class ExplodingObserver(TaskObserver):
    """An observer whose every hook raises."""

    log_lifecycle = True

    async def on_log(self, event: Any) -> None:
        raise RuntimeError("observer broke")

    async def on_lifecycle(self, event: Any) -> None:
        raise RuntimeError("observer broke")


async def test_a_failing_observer_affects_neither_the_task_nor_other_observers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A raising observer is logged; the task succeeds and the next observer gets every event."""
    caplog.set_level(logging.ERROR)
    memory = InMemoryLogger(log_lifecycle=True)
    async with started(loggers=[ExplodingObserver(), memory]) as manager:

        @manager.task()
        async def chatty() -> None:
            task_log("one")
            task_log("two")

        handle = manager.add_task(chatty)
        await manager.join(timeout=5)
        assert handle.status is TaskStatus.SUCCESS
    assert [e.message for e in memory.log_events] == ["one", "two"]
    assert [e.status for e in memory.lifecycle_events] == ["running", "success"]
    assert any("observer broke" in (r.exc_text or "") or r.exc_info for r in caplog.records)


async def test_file_lines_are_written_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log file is written by another thread: the event loop never touches the disk."""
    from fastapi_taskflow.loggers import file as file_module

    writers: set[int] = set()
    original: Callable[..., Any] = file_module._RaisingRotatingHandler.emit

    def spying_emit(self: Any, record: logging.LogRecord) -> None:
        writers.add(threading.get_ident())
        original(self, record)

    monkeypatch.setattr(file_module._RaisingRotatingHandler, "emit", spying_emit)
    log_path = tmp_path / "tasks.log"
    async with started(loggers=[FileLogger(log_path, log_lifecycle=True)]) as manager:
        manager.add_task(noop)
        await manager.join(timeout=5)
    assert writers
    assert threading.get_ident() not in writers
    assert len(log_path.read_text().splitlines()) == 2


async def test_add_task_from_a_worker_thread_is_safe() -> None:
    """A sync route's thread may add tasks: they start on the loop and finish normally."""
    async with started() as manager:
        ran: list[str] = []

        @manager.task()
        async def work(name: str) -> None:
            ran.append(name)

        def from_thread() -> list[TaskHandle]:
            return [manager.add_task(work, f"t{n}") for n in range(20)]

        handles: list[TaskHandle] = await asyncio.to_thread(from_thread)
        await manager.join(timeout=5)
    assert sorted(ran) == sorted(f"t{n}" for n in range(20))
    assert all(h.status is TaskStatus.SUCCESS for h in handles)


async def test_join_returns_for_a_store_made_before_its_manager() -> None:
    """A store passed in (built before the manager) still wakes join() when the last task ends."""
    from fastapi_taskflow.store import TaskStore

    gate = asyncio.Event()
    tm = TaskManager(store=TaskStore(max_history=10))

    @tm.task()
    async def wait_for_gate() -> None:
        await gate.wait()

    await tm.startup()
    try:
        handle = tm.add_task(wait_for_gate)
        joined = asyncio.ensure_future(tm.join(timeout=5))
        await asyncio.sleep(0)
        assert not joined.done()
        gate.set()
        await joined
        assert handle.status is TaskStatus.SUCCESS
    finally:
        await tm.shutdown()
