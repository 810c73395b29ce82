"""Named queues: priority order, backpressure, unknown names, live resizing, global caps."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from control_helpers import Gate, drain, running, wait_until

from fastapi_taskflow import QueueConfig, QueueFullError, TaskStatus, UnknownTaskError


async def test_priority_higher_first_fifo_among_equals() -> None:
    """Waiting tasks start by priority, highest first; equal priorities keep arrival order."""
    gate = Gate()
    order: list[str] = []

    async def record(label: str) -> None:
        order.append(label)

    async with running(queues={"q": QueueConfig(concurrency=1)}) as tm:
        tm.add_task(gate.work, "blocker", queue="q")
        await wait_until(lambda: gate.running == 1)
        for label, priority in [
            ("a0", 0),
            ("b5", 5),
            ("c1", 1),
            ("d5", 5),
            ("eN", None),
            ("f10", 10),
            ("g-1", -1),
        ]:
            tm.add_task(record, label, queue="q", priority=priority)
        gate.release("blocker")
        await tm.join(timeout=5)
    assert order == ["f10", "b5", "d5", "c1", "a0", "eN", "g-1"]


async def test_waiting_tasks_stay_pending_without_start_time() -> None:
    """A task waiting for a slot is PENDING with no start time."""
    gate = Gate()
    async with running(queues={"q": QueueConfig(concurrency=1)}) as tm:
        tm.add_task(gate.work, 1, queue="q")
        waiting = tm.add_task(gate.work, 2, queue="q")
        await wait_until(lambda: gate.running == 1)
        assert waiting.status is TaskStatus.PENDING
        assert waiting.record.start_time is None
        assert tm.queue_stats()["q"]["running"] == 1
        assert tm.queue_stats()["q"]["pending"] == 1
        gate.release(1)
        await wait_until(lambda: gate.running == 1 and 2 in gate.started)
        gate.release(2)
        await tm.join(timeout=5)


async def test_full_queue_raises_and_records_rejected() -> None:
    """Past max_size, add_task raises QueueFullError and a REJECTED record remains."""
    gate = Gate()
    async with running(queues={"q": QueueConfig(concurrency=1, max_size=2)}) as tm:
        tm.add_task(gate.work, 0, queue="q")
        await wait_until(lambda: gate.running == 1)
        tm.add_task(gate.work, 1, queue="q")
        tm.add_task(gate.work, 2, queue="q")
        with pytest.raises(QueueFullError) as info:
            tm.add_task(gate.work, 3, queue="q")
        rejected = tm.store.get(info.value.task_id or "")
        assert rejected is not None
        assert rejected.status is TaskStatus.REJECTED
        assert "full" in (rejected.error or "")
        assert tm.queue_stats()["q"]["counts"]["rejected"] == 1
        for key in (0, 1, 2):
            gate.release(key)
        await tm.join(timeout=5)
        assert 3 not in gate.started


async def test_cancelled_waiting_tasks_leave_the_waiting_count() -> None:
    """Cancelling 3 of 5 tasks waiting behind a cap of 1 leaves waiting == 2."""
    started, release = asyncio.Event(), asyncio.Event()

    async def blocker() -> None:
        started.set()
        await release.wait()

    async def noop(n: int) -> int:
        return n

    async with running(queues={"q": QueueConfig(concurrency=1)}) as tm:
        tm.add_task(blocker, queue="q")
        await started.wait()
        waiting = [tm.add_task(noop, n, queue="q") for n in range(5)]
        assert tm.queue_stats()["q"]["waiting"] == 5
        assert all(handle.cancel() for handle in waiting[:3])
        assert tm.queue_stats()["q"]["waiting"] == 2
        release.set()
        await tm.join(timeout=5)
        assert tm.queue_stats()["q"]["waiting"] == 0
        assert tm.queue_stats()["q"]["counts"]["success"] == 3


@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "idempotency key"])
async def test_threads_adding_at_once_never_overshoot_max_size(keyed: bool) -> None:
    """50 threads adding at once to a full-by-10 queue behind a busy slot: exactly 10 wait,
    the other 40 get QueueFullError and a REJECTED record."""
    started, release = asyncio.Event(), asyncio.Event()
    barrier = threading.Barrier(50)

    async def blocker() -> None:
        started.set()
        await release.wait()

    async def noop(n: int) -> int:
        return n

    async with running(queues={"q": QueueConfig(concurrency=1, max_size=10)}) as tm:

        def add(n: int) -> str:
            barrier.wait(5)
            try:
                tm.add_task(noop, n, queue="q", idempotency_key=f"k{n}" if keyed else None)
            except QueueFullError as exc:
                record = tm.store.get(exc.task_id or "")
                return record.status.value if record is not None else "missing"
            return "admitted"

        tm.add_task(blocker, queue="q")
        await started.wait()
        loop = asyncio.get_running_loop()
        switch = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # threads interleave often: a check-then-add race shows
        try:
            with ThreadPoolExecutor(max_workers=50) as pool:
                outcomes = await asyncio.gather(
                    *(loop.run_in_executor(pool, add, n) for n in range(50))
                )
        finally:
            sys.setswitchinterval(switch)
        assert sorted(set(outcomes)) == ["admitted", "rejected"]
        assert outcomes.count("admitted") == 10
        counts = tm.queue_stats()["q"]["counts"]
        assert (counts["pending"], counts["running"], counts["rejected"]) == (10, 1, 40)
        release.set()
        await tm.join(timeout=5)
        assert tm.queue_stats()["q"]["counts"]["success"] == 11


async def test_max_size_shorthand_applies_to_default_queue() -> None:
    """TaskManager(max_size=) is backpressure for the default queue."""
    gate = Gate()
    async with running(max_size=1, queues={"default": QueueConfig(concurrency=1)}) as tm:
        tm.add_task(gate.work, 0)
        await wait_until(lambda: gate.running == 1)
        tm.add_task(gate.work, 1)
        with pytest.raises(QueueFullError):
            tm.add_task(gate.work, 2)
        gate.release(0)
        gate.release(1)
        await tm.join(timeout=5)


async def test_unknown_queue_falls_back_to_default_with_warning_and_counter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unknown queue name runs in default, warns once per name, and is counted each time."""

    async def noop() -> None:
        return None

    async with running() as tm:
        with caplog.at_level(logging.WARNING, logger="fastapi_taskflow"):
            first = tm.add_task(noop, queue="nope")
            tm.add_task(noop, queue="nope")
        await tm.join(timeout=5)
        assert first.record.queue == "default"
        assert tm.metrics()["unknown_queue_fallbacks"] == 2
    warnings = [r for r in caplog.records if "unknown queue" in r.getMessage()]
    assert len(warnings) == 1


async def test_live_resize_under_load_never_exceeds_cap() -> None:
    """Shrinking a busy queue admits nothing until under the cap; growing admits at once."""
    gate = Gate()
    gate.cap = 4
    async with running(queues={"q": QueueConfig(concurrency=4)}) as tm:
        for key in range(12):
            tm.add_task(gate.work, key, queue="q")
        await wait_until(lambda: gate.running == 4)

        tm.update_queue_config("q", concurrency=2)  # shrink while 4 run
        gate.cap = 2
        assert tm.queue_stats()["q"]["running"] == 4  # running ones are never stopped
        for key in (0, 1):
            gate.release(key)
        await wait_until(lambda: gate.running == 2)
        assert len(gate.started) == 4  # still nothing new admitted
        gate.release(2)
        await wait_until(lambda: len(gate.started) == 5)  # under the cap: one admitted
        assert gate.running == 2

        tm.update_queue_config("q", concurrency=5)  # grow: admitted at once, no job finishing
        gate.cap = 5
        assert tm.queue_stats()["q"]["running"] == 5
        await wait_until(lambda: gate.running == 5)

        await drain(gate, 12)
        await tm.join(timeout=5)
        assert tm.store.counts()[TaskStatus.SUCCESS] == 12
    assert all(seen <= cap for seen, cap in gate.observed if cap is not None)
    assert gate.peak == 5


async def test_invalid_queue_config_raises_and_changes_nothing() -> None:
    """Bad values raise ValueError naming the field; the live config stays usable."""

    async def noop() -> None:
        return None

    async with running(queues={"q": QueueConfig(concurrency=2, max_size=5)}) as tm:
        for bad in (
            {"concurrency": 0},
            {"concurrency": "3"},
            {"max_size": -1},
            {"concurrency": True},
            {"max_size": 2.5},
        ):
            with pytest.raises(ValueError, match=next(iter(bad))):
                tm.update_queue_config("q", **bad)
        assert tm.queue_stats()["q"]["concurrency"] == 2
        assert tm.queue_stats()["q"]["max_size"] == 5
        with pytest.raises(UnknownTaskError):
            tm.update_queue_config("missing", concurrency=1)
        assert tm.update_queue_config("q", max_size=None) == QueueConfig(2, None)
        await tm.add_task(noop, queue="q").wait(timeout=5)


async def test_global_cap_spans_queues() -> None:
    """max_concurrent_tasks caps the sum over all queues; a freed slot admits from any queue."""
    gate = Gate()
    queues = {"a": QueueConfig(concurrency=3), "b": QueueConfig(concurrency=3)}
    async with running(queues=queues, max_concurrent_tasks=2) as tm:
        for key in ("a1", "a2", "a3"):
            tm.add_task(gate.work, key, queue="a")
        tm.add_task(gate.work, "b1", queue="b")
        await wait_until(lambda: gate.running == 2)
        gate.release("a1")
        await wait_until(lambda: len(gate.started) == 3)
        assert gate.running == 2
        await drain(gate, 4)
        await tm.join(timeout=5)
    assert gate.peak == 2


async def test_backoff_wait_holds_no_slot() -> None:
    """A task waiting out its retry delay leaves its slot to the next task."""
    attempts: list[int] = []

    async def flaky() -> None:
        attempts.append(1)
        raise RuntimeError("first attempt fails")

    async def other() -> str:
        return "ran"

    async with running(queues={"q": QueueConfig(concurrency=1)}) as tm:
        tm.task(retries=1, delay=60.0)(flaky)
        waiting = tm.add_task(flaky, queue="q")
        await wait_until(lambda: waiting.record.retries_used == 1)
        assert waiting.status is TaskStatus.PENDING
        done = await tm.add_task(other, queue="q").wait(timeout=5)
        assert done.status is TaskStatus.SUCCESS
        assert waiting.cancel()
        await tm.join(timeout=5)
    assert attempts == [1]
