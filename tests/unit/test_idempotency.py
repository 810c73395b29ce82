"""Idempotency keys: one task per key while it is live or succeeded, atomic across threads
and, with a shared backend, across instances."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from control_helpers import BackendFactory, Gate, drain, running, wait_until

from fastapi_taskflow import (
    QueueConfig,
    QueueFullError,
    TaskHandle,
    TaskManager,
    TaskRegistry,
    TaskStatus,
)
from fastapi_taskflow.dispatch.keys import KeyGuard, KeyReservations


async def test_fifty_concurrent_calls_from_threads_make_one_task() -> None:
    """50 threads adding one key at once get one task, and every handle is its id."""
    runs: list[int] = []
    barrier = threading.Barrier(50)

    def job() -> None:
        runs.append(1)

    async with running() as tm:

        def add() -> TaskHandle:
            barrier.wait(5)
            return tm.add_task(job, idempotency_key="order-42")

        with ThreadPoolExecutor(max_workers=50) as pool:
            handles = await asyncio.gather(
                *(asyncio.get_running_loop().run_in_executor(pool, add) for _ in range(50))
            )
        await tm.join(timeout=5)
        assert len({str(h) for h in handles}) == 1
        assert all(h == handles[0] for h in handles)
        assert len(tm.store) == 1
    assert runs == [1]


async def test_live_and_succeeded_keys_return_the_existing_handle() -> None:
    """While pending, running or succeeded, the same key returns the original task."""
    gate = Gate()
    async with running() as tm:
        first = tm.add_task(gate.work, 1, idempotency_key="k")
        assert tm.add_task(gate.work, 2, idempotency_key="k") == first  # pending
        await wait_until(lambda: gate.running == 1)
        assert tm.add_task(gate.work, 3, idempotency_key="k") == first  # running
        gate.release(1)
        await first.wait(timeout=5)
        again = tm.add_task(gate.work, 4, idempotency_key="k")  # succeeded
        assert again == first
        assert again.status is TaskStatus.SUCCESS
    assert gate.started == [1]


def _fail(tm: TaskManager, key: str) -> Callable[[], object]:
    async def broken() -> None:
        raise RuntimeError("boom")

    async def run() -> object:
        return await tm.add_task(broken, idempotency_key=key).wait(timeout=5)

    return run


@pytest.mark.parametrize("ending", ["failed", "cancelled", "rejected"])
async def test_key_is_free_after_failure_cancel_or_reject(ending: str) -> None:
    """A failed, cancelled or rejected task does not block its key."""
    gate = Gate()
    async with running(queues={"q": QueueConfig(concurrency=1, max_size=1)}) as tm:
        if ending == "failed":
            await _fail(tm, "k")()
        elif ending == "cancelled":
            cancelled = tm.add_task(gate.work, "cancelled", idempotency_key="k")
            assert cancelled.cancel()
            await cancelled.wait(timeout=5)
        else:
            tm.add_task(gate.work, "busy", queue="q")
            tm.add_task(gate.work, "waiting", queue="q")
            await wait_until(lambda: gate.running == 1)
            with pytest.raises(QueueFullError):
                tm.add_task(gate.work, "rejected", queue="q", idempotency_key="k")
            await drain(gate, 2)
            await tm.join(timeout=5)
        fresh = tm.add_task(gate.work, "fresh", idempotency_key="k")
        await wait_until(lambda: "fresh" in gate.started)
        gate.release("fresh")
        assert (await fresh.wait(timeout=5)).status is TaskStatus.SUCCESS


async def test_key_is_free_after_interruption() -> None:
    """A task interrupted by shutdown does not block its key after the next startup."""
    gate = Gate()
    tm = TaskManager(queues={"default": QueueConfig(concurrency=1)}, drain_timeout=0.01)
    await tm.startup()
    tm.add_task(gate.work, "busy")
    interrupted = tm.add_task(gate.work, "waiting", idempotency_key="k")
    await wait_until(lambda: gate.running == 1)
    await tm.shutdown()
    assert interrupted.status is TaskStatus.INTERRUPTED
    await tm.startup()
    try:
        fresh = tm.add_task(gate.work, "fresh", idempotency_key="k")
        assert fresh != interrupted
        await wait_until(lambda: "fresh" in gate.started)
        gate.release("fresh")
        assert (await fresh.wait(timeout=5)).status is TaskStatus.SUCCESS
    finally:
        await tm.shutdown()


async def test_key_reserved_across_instances_sharing_a_backend(
    shared_backend: BackendFactory,
) -> None:
    """With a shared backend, another instance's duplicate ends unrun, naming the holder."""
    gate = Gate()
    async with (
        running(snapshot_backend=shared_backend(), close_backend=False) as first,
        running(snapshot_backend=shared_backend(), close_backend=False) as second,
    ):
        held = first.add_task(gate.work, "first", idempotency_key="pay-1")
        await wait_until(lambda: gate.running == 1)
        duplicate = await second.add_task(gate.work, "second", idempotency_key="pay-1").wait(
            timeout=5
        )
        assert duplicate.status is TaskStatus.CANCELLED
        assert held in (duplicate.error or "")
        gate.release("first")
        assert (await held.wait(timeout=5)).status is TaskStatus.SUCCESS
    assert gate.started == ["first"]


async def test_cross_instance_key_released_after_failure(shared_backend: BackendFactory) -> None:
    """When the holder fails, the key is released in the backend and another instance may run."""
    runs: list[str] = []

    async def broken() -> None:
        runs.append("first")
        raise RuntimeError("boom")

    async def good() -> None:
        runs.append("second")

    async with (
        running(snapshot_backend=shared_backend(), close_backend=False) as first,
        running(snapshot_backend=shared_backend(), close_backend=False) as second,
    ):
        failed = await first.add_task(broken, idempotency_key="k").wait(timeout=5)
        assert failed.status is TaskStatus.FAILED
        await running_key_guard(first).drain()
        record = await second.add_task(good, idempotency_key="k").wait(timeout=5)
        assert record.status is TaskStatus.SUCCESS
    assert runs == ["first", "second"]


async def test_key_stays_reserved_for_a_task_kept_at_shutdown(
    shared_backend: BackendFactory,
) -> None:
    """Shutdown keeps a running keyed task for requeue: its key stays reserved in the shared
    backend, the requeued task (same id) runs with it, another instance's duplicate resolves
    to it."""
    backend = shared_backend()
    registry = TaskRegistry()
    started, release = asyncio.Event(), asyncio.Event()

    @registry.task(name="keys.hold", requeue_on_interrupt=True)
    async def hold() -> None:
        started.set()
        await release.wait()

    options = {
        "registry": registry,
        "snapshot_backend": backend,
        "close_backend": False,
        "drain_timeout": 0.0,
    }
    first = TaskManager(**options)
    await first.startup()
    held = first.add_task(hold, idempotency_key="pay-1")
    await started.wait()  # the key is reserved before the attempt starts
    await first.shutdown()
    assert held.status is TaskStatus.PENDING  # kept for the next start
    assert await backend.reserve_idempotency_key("pay-1", "probe", None) == held.task_id

    started.clear()
    async with running(**options) as again:  # claims the kept entry and runs it again
        await started.wait()
        async with running(**options) as other:
            duplicate = await other.add_task(hold, idempotency_key="pay-1").wait(timeout=5)
        assert duplicate.status is TaskStatus.CANCELLED
        assert held.task_id in (duplicate.error or "")
        release.set()
        await again.join(timeout=5)
        rerun = again.store.get(held.task_id)
        assert rerun is not None
        assert rerun.status is TaskStatus.SUCCESS


async def test_bad_idempotency_key_is_refused() -> None:
    """idempotency_key must be a non-empty string; the message names it."""

    async def job() -> None:
        return None

    async with running() as tm:
        for bad in ("", 42):
            with pytest.raises(ValueError, match="idempotency_key"):
                tm.add_task(job, idempotency_key=bad)  # type: ignore[arg-type]


def running_key_guard(manager: TaskManager) -> KeyGuard:
    """The cross-instance key guard of a running manager on a shared backend."""
    hooks = manager.dispatcher.hooks
    assert hooks is not None
    reservations = [h for h in hooks.hooks if isinstance(h, KeyReservations)]
    assert len(reservations) == 1
    guard = reservations[0].guard
    assert guard is not None
    return guard
