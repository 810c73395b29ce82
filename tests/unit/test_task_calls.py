"""add_task's per-call options: validation, the task_kwargs/task_options escapes, progress."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from control_helpers import running, wait_until

from fastapi_taskflow import TaskOptions, TaskRecord, TaskStatus, set_progress


async def test_task_kwargs_passes_names_add_task_would_take() -> None:
    """A task's own priority/queue/tags/task_kwargs parameters arrive through task_kwargs."""
    got: dict[str, Any] = {}

    async def collide(
        *,
        priority: str,
        queue: str,
        tags: list[str],
        task_kwargs: int,
        eager: str,
        idempotency_key: str,
        task_options: str,
        other: int,
    ) -> None:
        got.update(
            priority=priority,
            queue=queue,
            tags=tags,
            task_kwargs=task_kwargs,
            eager=eager,
            idempotency_key=idempotency_key,
            task_options=task_options,
            other=other,
        )

    mine = {
        "priority": "high",
        "queue": "inbox",
        "tags": ["a"],
        "task_kwargs": 7,
        "eager": "yes",
        "idempotency_key": "x",
        "task_options": "y",
    }
    async with running() as tm:
        handle = tm.add_task(collide, priority=5, task_kwargs=mine, other=1)
        record = await handle.wait(timeout=5)
    assert record.status is TaskStatus.SUCCESS, record.error
    assert record.priority == 5
    assert got == {**mine, "other": 1}


async def test_task_kwargs_conflict_is_refused() -> None:
    """A keyword given both directly and in task_kwargs is a TypeError naming it."""

    async def job(**kwargs: Any) -> None:
        return None

    async with running() as tm:
        with pytest.raises(TypeError, match="other"):
            tm.add_task(job, other=1, task_kwargs={"other": 2})
        with pytest.raises(ValueError, match="task_kwargs"):
            tm.add_task(job, task_kwargs=["not", "a", "dict"])  # type: ignore[arg-type]


async def test_task_options_override_registered_options_for_one_call() -> None:
    """task_options=TaskOptions(...) replaces the options of one call (timeout, queue, priority)."""

    async def slow() -> None:
        await asyncio.Event().wait()

    async with running() as tm:
        tm.task(retries=3)(slow)
        options = TaskOptions(timeout=0.02, priority=9)
        record = await tm.add_task(slow, task_options=options).wait(timeout=5)
        assert "TaskTimeoutError" in (record.error or "")
        assert record.retries_used == 0
        assert record.priority == 9
        with pytest.raises(ValueError, match="task_options"):
            tm.add_task(slow, task_options={"timeout": 1})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("priority", "high"),
        ("priority", True),
        ("queue", ""),
        ("queue", 3),
        ("eager", "yes"),
        ("tags", {"a": 1}),
        ("tags", ["a"]),
        ("idempotency_key", ""),
    ],
)
async def test_add_task_validates_each_option_by_name(option: str, value: Any) -> None:
    """add_task refuses a bad per-call option with a message naming it; nothing is enqueued."""

    async def job() -> None:
        return None

    async with running() as tm:
        with pytest.raises(ValueError, match=option):
            tm.add_task(job, **{option: value})
        assert len(tm.store) == 0


async def test_progress_from_async_and_thread_tasks_is_stored() -> None:
    """set_progress from an async and a thread task lands on the record with its message."""

    async def async_job() -> None:
        set_progress(0.5, "half")

    def thread_job() -> None:
        set_progress(0.25, "quarter")
        set_progress(1.0)

    async with running() as tm:
        first = await tm.add_task(async_job).wait(timeout=5)
        second = await tm.add_task(thread_job).wait(timeout=5)
    assert (first.progress, first.progress_message) == (0.5, "half")
    assert (second.progress, second.progress_message) == (1.0, "quarter")


async def test_progress_notifications_are_throttled() -> None:
    """A tight set_progress loop updates the record each time but notifies listeners rarely."""
    notified: list[float | None] = []
    done = asyncio.Event()

    async def busy() -> None:
        for i in range(10_000):
            set_progress(i / 10_000)
        await done.wait()

    async with running() as tm:

        def listener(record: TaskRecord) -> None:
            if record.status is TaskStatus.RUNNING:
                notified.append(record.progress)

        tm.store.add_listener(listener)
        handle = tm.add_task(busy)
        await wait_until(lambda: handle.record.progress == 9_999 / 10_000)
        done.set()
        await handle.wait(timeout=5)
    assert len(notified) < 20  # one per PROGRESS_INTERVAL (50 ms) at most


async def test_set_progress_validates_its_fraction() -> None:
    """set_progress refuses values outside 0..1 and non-numbers; outside a task it is a no-op."""
    for bad in (-0.1, 1.5, float("nan"), "half", True):
        with pytest.raises(ValueError, match="progress"):
            set_progress(bad)  # type: ignore[arg-type]
    set_progress(0.5)
