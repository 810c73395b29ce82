"""Retries (delay, backoff, max_delay, jitter, retry_on) and per-attempt timeouts."""

from __future__ import annotations

import asyncio
import threading

import pytest
from control_helpers import running

from fastapi_taskflow import TaskOptions, TaskRegistry, TaskStatus


async def test_retries_until_success() -> None:
    """A task failing twice with retries=2 ends SUCCESS with retries_used=2."""
    calls: list[int] = []

    async def flaky() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ValueError("not yet")

    async with running() as tm:
        tm.task(retries=2)(flaky)
        record = await tm.add_task(flaky).wait(timeout=5)
    assert record.status is TaskStatus.SUCCESS
    assert record.retries_used == 2
    assert record.error is None
    assert len(calls) == 3


async def test_retries_exhausted_fail_with_last_error() -> None:
    """After its retries a task is FAILED with the last error and its stack trace."""

    async def broken() -> None:
        raise ValueError("always")

    async with running() as tm:
        tm.task(retries=2)(broken)
        record = await tm.add_task(broken).wait(timeout=5)
    assert record.status is TaskStatus.FAILED
    assert record.retries_used == 2
    assert record.error == "ValueError: always"
    assert "ValueError" in (record.stacktrace or "")


async def test_retry_on_limits_which_errors_retry() -> None:
    """retry_on=(ValueError,) retries ValueError only; another error fails at once."""
    calls: list[str] = []

    async def picky(kind: str) -> None:
        calls.append(kind)
        raise (ValueError if kind == "value" else KeyError)(kind)

    async with running() as tm:
        tm.task(retries=3, retry_on=ValueError)(picky)
        key_error = await tm.add_task(picky, "key").wait(timeout=5)
        value_error = await tm.add_task(picky, "value").wait(timeout=5)
    assert key_error.status is TaskStatus.FAILED
    assert key_error.retries_used == 0
    assert value_error.status is TaskStatus.FAILED
    assert value_error.retries_used == 3
    assert calls.count("key") == 1
    assert calls.count("value") == 4


def test_backoff_grows_and_max_delay_caps_it() -> None:
    """The wait before retry n is delay * backoff**(n-1), never above max_delay."""
    options = TaskOptions(retries=5, delay=1.0, backoff=2.0, max_delay=5.0)
    assert [options.retry_delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert TaskOptions(delay=0.5).retry_delay(3) == 0.5


async def test_jitter_adds_up_to_jitter_seconds() -> None:
    """jitter adds a random number of seconds in [0, jitter] to each retry wait."""
    asked: list[tuple[float, float]] = []

    def fake_uniform(low: float, high: float) -> float:
        asked.append((low, high))
        return 0.0

    async def flaky() -> None:
        if not asked:
            raise RuntimeError("once")

    async with running() as tm:
        tm.dispatcher.jitter = fake_uniform
        tm.task(retries=1, jitter=0.25)(flaky)
        record = await tm.add_task(flaky).wait(timeout=5)
    assert record.status is TaskStatus.SUCCESS
    assert asked == [(0, 0.25)]


async def test_async_timeout_cancels_attempt_and_follows_retry_policy() -> None:
    """An async attempt past its timeout is cancelled and fails with TaskTimeoutError."""
    cancelled: list[int] = []

    async def slow() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(1)
            raise

    async with running() as tm:
        tm.task(timeout=0.05, retries=1)(slow)
        record = await tm.add_task(slow).wait(timeout=5)
    assert record.status is TaskStatus.FAILED
    assert record.retries_used == 1
    assert (record.error or "").startswith("TaskTimeoutError")
    assert cancelled == [1, 1]


async def test_thread_timeout_abandons_attempt() -> None:
    """A thread attempt past its timeout fails with TaskTimeoutError; its thread is let go."""
    release = threading.Event()
    finished = threading.Event()

    def stuck() -> str:
        release.wait(5)
        finished.set()
        return "too late"

    async with running() as tm:
        tm.task(timeout=0.05)(stuck)
        record = await tm.add_task(stuck).wait(timeout=5)
        assert record.status is TaskStatus.FAILED
        assert "TaskTimeoutError" in (record.error or "")
        release.set()
        await asyncio.to_thread(finished.wait, 5)
        assert record.status is TaskStatus.FAILED  # the late result is ignored


async def test_manager_default_timeout_applies_without_task_timeout() -> None:
    """default_timeout bounds tasks that set no timeout of their own."""

    async def slow() -> None:
        await asyncio.Event().wait()

    async def quick() -> str:
        return "ok"

    async with running(default_timeout=0.05) as tm:
        slow_record = await tm.add_task(slow).wait(timeout=5)
        quick_record = await tm.add_task(quick).wait(timeout=5)
    assert "TaskTimeoutError" in (slow_record.error or "")
    assert quick_record.status is TaskStatus.SUCCESS


async def test_own_timeout_error_is_not_taken_for_ours() -> None:
    """A TimeoutError the task raises itself stays a TimeoutError."""

    async def own() -> None:
        raise TimeoutError("upstream")

    async with running() as tm:
        tm.task(timeout=10)(own)
        record = await tm.add_task(own).wait(timeout=5)
    assert record.error == "TimeoutError: upstream"


async def test_timeouts_obey_retry_on() -> None:
    """A timeout is retried only if retry_on covers TaskTimeoutError (or TimeoutError)."""

    async def slow() -> None:
        await asyncio.Event().wait()

    async with running() as tm:
        tm.task(timeout=0.02, retries=2, retry_on=ValueError)(slow)
        record = await tm.add_task(slow).wait(timeout=5)
    assert record.retries_used == 0
    assert "TaskTimeoutError" in (record.error or "")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("retries", -1),
        ("retries", 1.5),
        ("delay", -1),
        ("backoff", 0.5),
        ("max_delay", -2),
        ("jitter", -0.1),
        ("timeout", 0),
        ("timeout", float("nan")),
        ("priority", "high"),
        ("executor", "gpu"),
        ("retry_on", (int,)),
        ("queue", ""),
        ("name", " "),
    ],
)
def test_decorator_validates_each_option_by_name(option: str, value: object) -> None:
    """@task(...) refuses a bad option at decoration time, naming the option."""
    registry = TaskRegistry()
    with pytest.raises(ValueError, match=option):
        registry.task(**{option: value})
