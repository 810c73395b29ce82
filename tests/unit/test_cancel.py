"""Cancellation: a cancelled pending task never runs; a running one stops (async) or is let go."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest
from control_helpers import Gate, running, wait_until
from starlette.background import BackgroundTasks

from fastapi_taskflow import ManagedBackgroundTasks, QueueConfig, TaskManager, TaskStatus


async def test_cancel_deferred_task_before_the_response() -> None:
    """A request task cancelled before the response is sent never runs."""
    ran: list[int] = []

    async def job() -> None:
        ran.append(1)

    async with running() as tm:
        request_tasks = BackgroundTasks()
        handle = ManagedBackgroundTasks(tm, request_tasks).add_task(job)
        assert handle.status is TaskStatus.PENDING
        assert handle.cancel() is True
        await request_tasks()  # what Starlette does after the response
        await tm.join(timeout=5)
    assert handle.status is TaskStatus.CANCELLED
    assert ran == []


async def test_cancel_queued_task() -> None:
    """A task waiting for a queue slot, once cancelled, never runs and frees its place."""
    gate = Gate()
    async with running(queues={"q": QueueConfig(concurrency=1)}) as tm:
        tm.add_task(gate.work, "first", queue="q")
        queued = tm.add_task(gate.work, "queued", queue="q")
        after = tm.add_task(gate.work, "after", queue="q")
        await wait_until(lambda: gate.running == 1)
        assert queued.cancel() is True
        assert queued.status is TaskStatus.CANCELLED
        gate.release("first")
        await wait_until(lambda: "after" in gate.started)
        gate.release("after")
        await tm.join(timeout=5)
        assert after.status is TaskStatus.SUCCESS
    assert "queued" not in gate.started


async def test_cancel_task_waiting_out_its_backoff() -> None:
    """A task between attempts (backoff wait) is cancelled and is not attempted again."""
    attempts: list[int] = []

    async def flaky() -> None:
        attempts.append(1)
        raise RuntimeError("fails")

    async with running() as tm:
        tm.task(retries=3, delay=60.0)(flaky)
        handle = tm.add_task(flaky)
        await wait_until(lambda: handle.record.retries_used == 1)
        assert handle.cancel() is True
        await tm.join(timeout=5)
    assert handle.status is TaskStatus.CANCELLED
    assert attempts == [1]


async def test_cancel_started_but_not_yet_running_task() -> None:
    """Cancelled in the same tick it was admitted, a task never runs and frees its slot."""
    ran: list[str] = []

    async def job(label: str) -> None:
        ran.append(label)

    async with running(queues={"q": QueueConfig(concurrency=1)}) as tm:
        first = tm.add_task(job, "first", queue="q")
        assert first.status is TaskStatus.RUNNING  # holds the slot, has not stepped yet
        assert first.cancel() is True
        second = await tm.add_task(job, "second", queue="q").wait(timeout=5)
        assert (await first.wait(timeout=5)).status is TaskStatus.CANCELLED
        assert second.status is TaskStatus.SUCCESS
    assert ran == ["second"]


async def test_cancel_running_async_task() -> None:
    """A running async task is cancelled inside its await and ends CANCELLED."""
    inside = asyncio.Event()
    saw_cancel: list[bool] = []

    async def long() -> None:
        inside.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            saw_cancel.append(True)
            raise

    async with running() as tm:
        handle = tm.add_task(long)
        await inside.wait()
        assert handle.cancel() is True
        record = await handle.wait(timeout=5)
    assert record.status is TaskStatus.CANCELLED
    assert record.error == "cancelled while running"
    assert saw_cancel == [True]


async def test_cancel_running_thread_task_ignores_its_result() -> None:
    """A running thread task is marked CANCELLED at once; what it returns later is ignored."""
    inside = threading.Event()
    release = threading.Event()
    done = threading.Event()

    def blocking() -> str:
        inside.set()
        release.wait(5)
        done.set()
        return "late"

    async with running() as tm:
        handle = tm.add_task(blocking)
        await asyncio.to_thread(inside.wait, 5)
        assert handle.cancel() is True
        record = await handle.wait(timeout=5)
        assert record.status is TaskStatus.CANCELLED
        release.set()
        await asyncio.to_thread(done.wait, 5)
        await tm.join(timeout=5)
        assert handle.status is TaskStatus.CANCELLED


async def test_cancel_from_another_thread() -> None:
    """cancel() from a worker thread (a sync route) is applied on the event loop."""
    gate = Gate()
    async with running() as tm:
        handle = tm.add_task(gate.work, "x")
        await wait_until(lambda: gate.running == 1)
        assert await asyncio.to_thread(handle.cancel) is True
        record = await handle.wait(timeout=5)
    assert record.status is TaskStatus.CANCELLED


async def test_cancel_finished_or_unknown_returns_false() -> None:
    """Cancelling a finished task or an unknown id changes nothing and returns False."""

    async def quick() -> None:
        return None

    async with running() as tm:
        handle = tm.add_task(quick)
        await handle.wait(timeout=5)
        assert handle.cancel() is False
        assert tm.cancel("no-such-task") is False
        assert handle.status is TaskStatus.SUCCESS


async def test_handle_is_the_id_and_wait_times_out() -> None:
    """A TaskHandle equals its task id; wait(timeout) raises TimeoutError while it runs."""
    gate = Gate()
    async with running() as tm:
        handle = tm.add_task(gate.work, "x")
        assert handle == handle.task_id
        assert isinstance(handle, str)
        with pytest.raises(TimeoutError):
            await handle.wait(timeout=0.01)
        gate.release("x")
        assert (await handle.wait(timeout=5)).status is TaskStatus.SUCCESS


def sleepy_process_task(marker: str) -> None:
    """Module level, so a worker process can import it: says its pid, then sleeps."""
    Path(marker).write_text(str(os.getpid()))
    time.sleep(30)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


async def test_cancel_running_process_task_terminates_its_worker(tmp_path: Path) -> None:
    """A running process task, cancelled, ends CANCELLED and its worker process is terminated."""
    marker = tmp_path / "pid"
    async with running(max_process_workers=1) as tm:
        tm.task(executor="process")(sleepy_process_task)
        handle = tm.add_task(sleepy_process_task, str(marker))
        await wait_until(lambda: marker.exists() and marker.read_text() != "", timeout=30)
        pid = int(marker.read_text())
        assert handle.cancel() is True
        record = await handle.wait(timeout=10)
        assert record.status is TaskStatus.CANCELLED
        await wait_until(lambda: not _alive(pid), timeout=10)


async def test_cancel_before_the_attempt_began_frees_its_slot_and_settles_it():
    """A task cancelled after taking a slot but before its coroutine ran: CANCELLED, slot free."""
    tm = TaskManager(max_concurrent_tasks=1)
    ran: list[str] = []

    @tm.task()
    async def work(label: str) -> None:
        ran.append(label)

    await tm.startup()
    try:
        first = tm.add_task(work, "first")  # admitted at once: RUNNING, not yet stepped
        assert first.status is TaskStatus.RUNNING
        assert first.cancel()
        assert first.status is TaskStatus.CANCELLED
        second = tm.add_task(work, "second")
        await tm.join(timeout=5)
        assert second.status is TaskStatus.SUCCESS
        assert ran == ["second"]
        assert tm.queue_stats()["default"]["running"] == 0
    finally:
        await tm.shutdown()
