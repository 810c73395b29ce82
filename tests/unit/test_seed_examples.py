"""Every example of the seed page ("Setting Up TaskManager"), run the way a user would run it.

Each test builds the manager exactly as the page writes it (relative file names resolve in a
temporary directory), wires it into a FastAPI app, runs the app's lifespan, and checks what the
page promises. Nothing sleeps to wait for a result: tests wait on events and ``join()``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from cryptography.fernet import Fernet
from fastapi import Depends, FastAPI

from fastapi_taskflow import (
    InMemoryLogger,
    ManagedBackgroundTasks,
    TaskManager,
    TaskStatus,
    task_log,
)

SECRET = "tok-SECRET-4f1d9c"


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The page writes "tasks.db" and "tasks.log": keep them in a fresh directory per test."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan (startup ... shutdown) and give a client that talks to it."""
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client


def enqueue_route(app: FastAPI, task_manager: TaskManager, func: Any) -> None:
    """POST /run?value=... adds ``func(value)`` through the managed BackgroundTasks."""

    @app.post("/run")
    async def run(
        value: str,
        tasks: ManagedBackgroundTasks = Depends(task_manager.get_tasks),  # noqa: B008
    ) -> dict[str, str]:
        return {"task_id": tasks.add_task(func, value)}


def file_bytes(name: str) -> bytes:
    """A SQLite file together with its WAL and shared-memory companions."""
    path = Path(name)
    parts = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    return b"".join(p.read_bytes() for p in parts if p.exists())


def json_lines(name: str) -> list[dict[str, Any]]:
    """The JSON objects of a log file, one per line."""
    return [json.loads(line) for line in Path(name).read_text().splitlines() if line.strip()]


def is_file(name: str) -> bool:
    return Path(name).is_file()


def files_here() -> list[str]:
    return sorted(p.name for p in Path().iterdir())


def read_text(name: str) -> str:
    return Path(name).read_text()


# ---- Minimal setup ---------------------------------------------------------------------------


async def test_minimal_setup_tracks_tasks_in_memory() -> None:
    """TaskManager() with no arguments runs and tracks tasks, writing no file."""
    task_manager = TaskManager()
    app = FastAPI()
    task_manager.init_app(app)
    seen: list[str] = []

    @task_manager.task()
    async def greet(name: str) -> None:
        seen.append(name)

    enqueue_route(app, task_manager, greet)
    async with serving(app) as client:
        task_id = (await client.post("/run", params={"value": "ada"})).json()["task_id"]
        await task_manager.join()
        record = task_manager.store.get(task_id)
        assert record is not None
        assert record.status is TaskStatus.SUCCESS
    assert seen == ["ada"]
    assert files_here() == []


# ---- Adding persistence ----------------------------------------------------------------------


async def test_snapshot_db_keeps_history_across_a_restart() -> None:
    """snapshot_db="tasks.db" creates the file, and finished tasks are visible after a restart."""

    def build() -> tuple[TaskManager, FastAPI]:
        task_manager = TaskManager(snapshot_db="tasks.db")
        app = FastAPI()
        task_manager.init_app(app)
        return task_manager, app

    task_manager, app = build()

    @task_manager.task()
    async def archive(name: str) -> None:
        task_log(f"archived {name}")

    enqueue_route(app, task_manager, archive)
    async with serving(app) as client:
        task_id = (await client.post("/run", params={"value": "invoice-7"})).json()["task_id"]
        await task_manager.join()
    assert is_file("tasks.db")

    restarted, app2 = build()
    restarted.task()(archive)
    async with serving(app2):
        record = await restarted.get_record(task_id)
        assert record is not None
        assert record.status is TaskStatus.SUCCESS
        assert record.func_name.endswith("archive")
        assert any("archived invoice-7" in line for line in record.logs)
        from fastapi_taskflow.backends.base import RecordQuery

        page = await restarted.list_records(RecordQuery(limit=10))
        assert [r.task_id for r in page.records] == [task_id]
        assert restarted.metrics()["success"] == 1


attempts_seen: list[int] = []


async def test_requeue_pending_runs_a_waiting_task_again_after_restart() -> None:
    """requeue_pending=True: a task still waiting (here, out its retry delay) runs at next start."""
    gate = {"fail": True}

    def build() -> tuple[TaskManager, FastAPI, Any]:
        task_manager = TaskManager(snapshot_db="tasks.db", requeue_pending=True)
        app = FastAPI()
        task_manager.init_app(app)

        @task_manager.task(retries=1, delay=3600, name="billing.charge")
        async def charge(order: str) -> None:
            attempts_seen.append(1)
            if gate["fail"]:
                raise ConnectionError("payment gateway down")

        return task_manager, app, charge

    attempts_seen.clear()
    task_manager, app, charge = build()
    async with serving(app):
        handle = task_manager.add_task(charge, "order-1")
        # The first attempt fails; the retry waits an hour: the task is PENDING at shutdown.
        await wait_until(task_manager, lambda: handle.record.retries_used == 1)
        assert handle.status is TaskStatus.PENDING

    gate["fail"] = False
    restarted, app2, _ = build()
    async with serving(app2):
        await restarted.join(timeout=10)
        record = await restarted.get_record(handle.task_id)
        assert record is not None
        assert record.status is TaskStatus.SUCCESS
        assert record.source == "requeue"
    assert len(attempts_seen) == 2


async def test_requeue_pending_runs_a_queued_task_again_after_restart() -> None:
    """requeue_pending=True: a task queued behind the concurrency cap at shutdown runs next time."""
    ran: list[str] = []
    release = asyncio.Event()

    def build() -> tuple[TaskManager, Any]:
        task_manager = TaskManager(
            snapshot_db="tasks.db", requeue_pending=True, max_concurrent_tasks=1
        )

        @task_manager.task(name="jobs.step")
        async def step(name: str) -> None:
            if name == "blocker":
                await release.wait()
            ran.append(name)

        return task_manager, step

    task_manager, step = build()
    await task_manager.startup()
    task_manager.add_task(step, "blocker")
    queued = task_manager.add_task(step, "queued")
    await asyncio.sleep(0)  # let the blocker take the only slot
    assert queued.status is TaskStatus.PENDING
    stopping = asyncio.create_task(task_manager.shutdown())
    await asyncio.sleep(0)  # shutdown sets the queued task aside before it drains the blocker
    release.set()
    await stopping
    assert ran == ["blocker"]

    restarted, _ = build()
    await restarted.startup()
    try:
        await restarted.join(timeout=10)
        record = await restarted.get_record(queued.task_id)
        assert record is not None
        assert record.status is TaskStatus.SUCCESS
    finally:
        await restarted.shutdown()
    assert ran == ["blocker", "queued"]


async def wait_until(task_manager: TaskManager, condition: Any, timeout: float = 10) -> None:
    """Wait, without polling, until ``condition()`` holds after some change in the store."""
    changed = asyncio.Event()
    loop = asyncio.get_running_loop()

    def listener(_record: Any) -> None:
        loop.call_soon_threadsafe(changed.set)

    task_manager.store.add_listener(listener)
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await changed.wait()
                changed.clear()
    finally:
        task_manager.store.remove_listener(listener)


# ---- Adding logging --------------------------------------------------------------------------


async def test_log_file_writes_json_task_and_lifecycle_lines() -> None:
    """log_file="tasks.log" with log_lifecycle=True: JSON lines for task_log and each status."""
    task_manager = TaskManager(
        log_file="tasks.log",
        log_lifecycle=True,
    )
    app = FastAPI()
    task_manager.init_app(app)

    @task_manager.task()
    async def send_email(to: str) -> None:
        task_log("sending", to=to)

    enqueue_route(app, task_manager, send_email)
    async with serving(app) as client:
        task_id = (await client.post("/run", params={"value": "ada@example.com"})).json()["task_id"]
        await task_manager.join()

    lines = [line for line in json_lines("tasks.log") if line["task_id"] == task_id]
    messages = [line["message"] for line in lines if line["event"] == "log"]
    statuses = [line["status"] for line in lines if line["event"] == "lifecycle"]
    assert messages == ["sending"]
    assert statuses == ["running", "success"]
    assert next(line for line in lines if line["event"] == "log")["to"] == "ada@example.com"


async def test_log_file_without_lifecycle_writes_only_task_logs() -> None:
    """log_file alone records task_log lines but no status transitions."""
    task_manager = TaskManager(log_file="tasks.log")

    @task_manager.task()
    async def work() -> None:
        task_log("step one")

    await task_manager.startup()
    task_manager.add_task(work)
    await task_manager.join()
    await task_manager.shutdown()
    assert [line["event"] for line in json_lines("tasks.log")] == ["log"]


async def test_stdout_and_file_loggers_both_receive_events(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """loggers=[StdoutLogger(min_level="info"), FileLogger(..., log_lifecycle=True)] both write."""
    from fastapi_taskflow import TaskManager
    from fastapi_taskflow.loggers import FileLogger, StdoutLogger

    task_manager = TaskManager(
        loggers=[
            StdoutLogger(min_level="info"),
            FileLogger("tasks.log", log_lifecycle=True),
        ]
    )
    app = FastAPI()
    task_manager.init_app(app)

    @task_manager.task()
    async def resize(image: str) -> None:
        task_log("too small to matter", level="debug")
        task_log(f"resized {image}")

    enqueue_route(app, task_manager, resize)
    async with serving(app) as client:
        await client.post("/run", params={"value": "cat.png"})
        await task_manager.join()

    stdout = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["message"] for line in stdout] == ["resized cat.png"]  # info and up, no lifecycle
    in_file = json_lines("tasks.log")
    assert [line["message"] for line in in_file if line["event"] == "log"] == ["resized cat.png"]
    assert [line["status"] for line in in_file if line["event"] == "lifecycle"] == [
        "running",
        "success",
    ]


# ---- Adding concurrency controls -------------------------------------------------------------


async def test_max_concurrent_tasks_caps_async_tasks_and_keeps_the_rest_pending() -> None:
    """max_concurrent_tasks=50: never more than 50 async tasks run; the others wait as PENDING."""
    task_manager = TaskManager(
        max_concurrent_tasks=50,
        max_sync_threads=10,
    )
    running = 0
    peak = 0
    full = asyncio.Event()
    release = asyncio.Event()

    @task_manager.task()
    async def crunch(n: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 50:
            full.set()
        await release.wait()
        running -= 1

    await task_manager.startup()
    try:
        handles = [task_manager.add_task(crunch, n) for n in range(120)]
        await asyncio.wait_for(full.wait(), timeout=10)
        await asyncio.sleep(0)  # give an uncapped scheduler the chance to start more
        metrics = task_manager.metrics()
        assert (metrics["running"], metrics["pending"]) == (50, 70)
        waiting = [h for h in handles if h.status is TaskStatus.PENDING]
        assert len(waiting) == 70
        assert all(h.record.start_time is None for h in waiting)  # duration starts when it runs
        release.set()
        await task_manager.join(timeout=10)
    finally:
        await task_manager.shutdown()
    assert peak == 50
    assert task_manager.metrics()["success"] == 120


async def test_max_sync_threads_runs_sync_tasks_in_their_own_pool() -> None:
    """max_sync_threads=10: sync tasks run on at most 10 "taskflow-sync" threads, not FastAPI's."""
    task_manager = TaskManager(
        max_concurrent_tasks=50,
        max_sync_threads=10,
    )
    lock = threading.Lock()
    names: set[str] = set()
    state = {"running": 0, "peak": 0}
    ten_running = threading.Event()

    @task_manager.task()
    def blocking_io(n: int) -> None:
        with lock:
            names.add(threading.current_thread().name)
            state["running"] += 1
            state["peak"] = max(state["peak"], state["running"])
            if state["running"] == 10:
                ten_running.set()
        ten_running.wait(timeout=10)
        with lock:
            state["running"] -= 1

    await task_manager.startup()
    try:
        for n in range(30):
            task_manager.add_task(blocking_io, n)
        await task_manager.join(timeout=20)
    finally:
        await task_manager.shutdown()
    assert ten_running.is_set()
    assert state["peak"] == 10
    assert names
    assert all(name.startswith("taskflow-sync") for name in names)
    assert task_manager.metrics()["success"] == 30


async def test_without_max_sync_threads_sync_tasks_use_asyncio_to_thread() -> None:
    """The default (None) keeps FastAPI's behaviour: sync tasks run in asyncio.to_thread."""
    task_manager = TaskManager()
    names: list[str] = []

    @task_manager.task()
    def blocking_io() -> None:
        names.append(threading.current_thread().name)

    await task_manager.startup()
    task_manager.add_task(blocking_io)
    await task_manager.join(timeout=10)
    await task_manager.shutdown()
    assert len(names) == 1
    assert not names[0].startswith("taskflow-sync")
    assert names[0] != threading.current_thread().name


# ---- Running CPU-bound tasks in separate processes -------------------------------------------


def render_pdf(report_id: int) -> bytes:
    """Stand-in for the page's PDF renderer: real CPU work, and it says which process did it."""
    checksum = sum(i * i for i in range(20_000)) % 9973
    task_log(f"rendered in pid {os.getpid()}")
    return f"%PDF report={report_id} checksum={checksum}".encode()


# As on the page, the task is declared at module level so a worker process can import it.
process_task_manager = TaskManager(
    max_process_workers=os.cpu_count(),
    process_shutdown_timeout=60.0,
)


@process_task_manager.task(executor="process")
def generate_report(report_id: int) -> bytes:
    return render_pdf(report_id)


@pytest.mark.slow
async def test_process_executor_runs_in_another_process() -> None:
    """executor='process' runs the task in a worker process; max_process_workers sizes the pool."""
    task_manager = process_task_manager
    app = FastAPI()
    task_manager.init_app(app)
    enqueue_route(app, task_manager, generate_report)
    async with serving(app) as client:
        task_id = (await client.post("/run", params={"value": "42"})).json()["task_id"]
        handle = await task_manager.get_task(task_id)
        assert handle is not None
        record = await handle.wait(timeout=60)
        assert record.status is TaskStatus.SUCCESS, record.error
        assert record.executor == "process"
        assert task_manager.executors.process_pool.max_workers == os.cpu_count()
    pids = [int(line.rsplit(" ", 1)[1]) for line in record.logs if "rendered in pid" in line]
    assert len(pids) == 1
    assert pids[0] != os.getpid()


# ---- Adding argument encryption --------------------------------------------------------------


async def test_encrypted_arguments_reach_the_task_but_nothing_else() -> None:
    """encrypt_args_key=key: the task gets its arguments; store, file, logs and API hold none."""
    from fastapi_taskflow import TaskAdmin, TaskManager

    key = Fernet.generate_key()
    task_manager = TaskManager(
        encrypt_args_key=key, snapshot_db="tasks.db", log_file="tasks.log", log_lifecycle=True
    )
    app = FastAPI()
    TaskAdmin(app, task_manager, display_func_args=True)
    received: list[tuple[str, str]] = []

    @task_manager.task(persist=True)
    async def store_token(user: str, token: str) -> None:
        received.append((user, token))
        task_log("token stored")

    async with serving(app) as client:
        handle = task_manager.add_task(store_token, "ada", token=SECRET)
        assert SECRET not in repr(handle.record.args) + repr(handle.record.kwargs)
        record = await handle.wait(timeout=10)
        assert record.status is TaskStatus.SUCCESS
        api = (await client.get(f"/tasks/{handle}")).text
        listing = (await client.get("/tasks")).text
        await task_manager.join()
    assert received == [("ada", SECRET)]
    assert (record.args, record.kwargs) == ((), {})
    assert SECRET not in json.dumps(record.to_dict(include_args=True))
    assert handle.task_id in api
    assert SECRET not in api
    assert SECRET not in listing
    assert SECRET.encode() not in file_bytes("tasks.db")
    assert SECRET not in read_text("tasks.log")


async def test_wrong_key_fails_the_task_with_a_clear_error() -> None:
    """A task whose arguments no configured key decrypts fails at once; it never stays PENDING."""
    gate = {"fail": True}

    def build(key: bytes) -> tuple[TaskManager, Any]:
        task_manager = TaskManager(
            encrypt_args_key=key, snapshot_db="tasks.db", requeue_pending=True
        )

        @task_manager.task(retries=1, delay=3600, name="accounts.sync")
        async def sync(token: str) -> None:
            if gate["fail"]:
                raise ConnectionError("upstream down")

        return task_manager, sync

    task_manager, sync = build(Fernet.generate_key())
    await task_manager.startup()
    handle = task_manager.add_task(sync, SECRET)
    await wait_until(task_manager, lambda: handle.record.retries_used == 1)
    await task_manager.shutdown()  # still waiting for its retry: kept for the next start

    gate["fail"] = False
    restarted, _ = build(Fernet.generate_key())  # a different key: the payload is unreadable
    await restarted.startup()
    try:
        await restarted.join(timeout=10)
        record = await restarted.get_record(handle.task_id)
    finally:
        await restarted.shutdown()
    assert record is not None
    assert record.status is TaskStatus.FAILED
    assert record.error is not None
    assert "decrypt" in record.error
    assert SECRET not in (record.error or "") + (record.stacktrace or "")


# ---- Full example ----------------------------------------------------------------------------


async def test_full_example_configuration_runs_every_kind_of_task() -> None:
    """The page's combined configuration starts, runs async and sync tasks, and stops cleanly."""
    import os

    from fastapi_taskflow import TaskManager

    task_manager = TaskManager(
        snapshot_db="tasks.db",
        requeue_pending=True,
        log_file="tasks.log",
        log_lifecycle=True,
        max_concurrent_tasks=50,
        max_sync_threads=10,
        max_process_workers=os.cpu_count(),
        process_shutdown_timeout=60.0,
    )
    app = FastAPI()
    task_manager.init_app(app)
    threads: list[str] = []

    @task_manager.task(retries=2)
    async def notify(user: str) -> None:
        task_log(f"notified {user}")

    @task_manager.task()
    def thumbnail(image: str) -> None:
        threads.append(threading.current_thread().name)

    async with serving(app):
        handles = [task_manager.add_task(notify, "ada"), task_manager.add_task(thumbnail, "a.png")]
        await task_manager.join(timeout=10)
        assert [h.status for h in handles] == [TaskStatus.SUCCESS, TaskStatus.SUCCESS]
    assert threads[0].startswith("taskflow-sync")
    assert is_file("tasks.db")
    events = [line["event"] for line in json_lines("tasks.log")]
    assert events.count("lifecycle") == 4
    assert events.count("log") == 1


# ---- Wiring up the lifecycle -----------------------------------------------------------------


async def test_option_1_task_admin_mounts_the_api_and_runs_the_lifecycle() -> None:
    """TaskAdmin(app, task_manager) serves /tasks, /tasks/{id}, /tasks/metrics and the dashboard."""
    from fastapi import FastAPI

    from fastapi_taskflow import TaskAdmin, TaskManager

    task_manager = TaskManager(snapshot_db="tasks.db")
    app = FastAPI()
    TaskAdmin(app, task_manager)

    @task_manager.task()
    async def ping() -> None:
        task_log("pong")

    async with serving(app) as client:
        handle = task_manager.add_task(ping)
        await task_manager.join(timeout=10)
        listing = await client.get("/tasks")
        one = await client.get(f"/tasks/{handle}")
        metrics = await client.get("/tasks/metrics")
        dashboard = await client.get("/tasks/dashboard")
    assert listing.status_code == 200
    assert [task["task_id"] for task in listing.json()] == [handle]
    assert one.json()["status"] == "success"
    assert metrics.json()["success"] == 1
    assert dashboard.status_code == 200
    assert "text/html" in dashboard.headers["content-type"]
    assert is_file("tasks.db")


async def test_option_2_init_app_is_idempotent() -> None:
    """init_app(app) twice wires the lifecycle once: one startup, one shutdown, tasks run once."""
    from fastapi import FastAPI

    from fastapi_taskflow import TaskManager

    observer = InMemoryLogger(log_lifecycle=True)
    task_manager = TaskManager(snapshot_db="tasks.db", loggers=[observer])
    app = FastAPI()
    task_manager.init_app(app)
    wired = app.router.lifespan_context
    task_manager.init_app(app)
    assert app.router.lifespan_context is wired

    @task_manager.task()
    async def ping() -> None:
        pass

    async with serving(app):
        task_manager.add_task(ping)
        await task_manager.join(timeout=10)
    assert [event.status for event in observer.lifecycle_events] == ["running", "success"]
    assert is_file("tasks.db")


async def test_init_app_with_an_app_that_has_its_own_lifespan() -> None:
    """init_app on FastAPI(lifespan=...) runs both: the manager around the app's own lifespan."""
    task_manager = TaskManager(snapshot_db="tasks.db")
    order: list[str] = []

    @task_manager.task()
    async def warm_cache() -> None:
        order.append("task ran")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        order.append("app startup")
        task_manager.add_task(warm_cache)
        yield
        order.append("app shutdown")

    app = FastAPI(lifespan=lifespan)
    task_manager.init_app(app)
    async with serving(app):
        await task_manager.join(timeout=10)
        assert is_file("tasks.db")  # the manager started: its backend is open
    assert order == ["app startup", "task ran", "app shutdown"]
    restarted = TaskManager(snapshot_db="tasks.db")
    await restarted.startup()
    try:
        assert restarted.metrics()["success"] == 1  # flushed at shutdown
    finally:
        await restarted.shutdown()


async def test_task_admin_with_an_app_that_has_its_own_lifespan() -> None:
    """TaskAdmin on FastAPI(lifespan=...) still starts the manager."""
    from fastapi_taskflow import TaskAdmin

    task_manager = TaskManager(snapshot_db="tasks.db")
    started: list[bool] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started.append(True)
        yield

    app = FastAPI(lifespan=lifespan)
    TaskAdmin(app, task_manager)

    @task_manager.task()
    async def ping() -> None:
        pass

    async with serving(app) as client:
        handle = task_manager.add_task(ping)
        await handle.wait(timeout=10)
        response = await client.get(f"/tasks/{handle}")
    assert started == [True]
    assert response.json()["status"] == "success"
    assert is_file("tasks.db")


async def test_option_3_manual_lifespan_handler() -> None:
    """startup()/shutdown() in the app's own lifespan load and flush the snapshot file."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    from fastapi_taskflow import TaskManager

    task_manager = TaskManager(snapshot_db="tasks.db")

    @asynccontextmanager
    async def lifespan(app):  # type: ignore[no-untyped-def]
        await task_manager.startup()
        yield
        await task_manager.shutdown()

    app = FastAPI(lifespan=lifespan)

    @task_manager.task()
    async def ping(value: str) -> None:
        task_log(value)

    enqueue_route(app, task_manager, ping)
    async with serving(app) as client:
        task_id = (await client.post("/run", params={"value": "x"})).json()["task_id"]
        await task_manager.join(timeout=10)

    db = sqlite3.connect("tasks.db")
    try:
        rows = db.execute("SELECT task_id, status FROM tf_records").fetchall()
    finally:
        db.close()
    assert rows == [(task_id, "success")]


async def test_startup_and_shutdown_are_safe_on_a_bare_manager() -> None:
    """A bare TaskManager() can be started and stopped (twice, even) with nothing configured."""
    task_manager = TaskManager()
    await task_manager.startup()
    await task_manager.startup()
    await task_manager.shutdown()
    await task_manager.shutdown()
