"""Job states: every path a task takes through the dispatcher is a sequence of named states,
each move checked against the diagram in dispatch/job.py."""

from __future__ import annotations

import asyncio

import pytest
from control_helpers import Gate, running, wait_until
from starlette.background import BackgroundTasks
from test_rate_limits import NoRatesBackend

from fastapi_taskflow import (
    ManagedBackgroundTasks,
    QueueConfig,
    RateLimit,
    TaskManager,
    TaskStatus,
)
from fastapi_taskflow.backends import MemoryBackend
from fastapi_taskflow.dispatch.job import Job
from fastapi_taskflow.errors import IllegalTransitionError

States = dict[str, list[str]]


@pytest.fixture
def states(monkeypatch: pytest.MonkeyPatch) -> States:
    """Each job's states in order, by task id, from the state it is made in."""
    seen: States = {}
    move = Job.move

    def recording(job: Job, to: str) -> None:
        before = job.state
        move(job, to)  # type: ignore[arg-type]
        seen.setdefault(job.task_id, [before]).append(to)

    monkeypatch.setattr(Job, "move", recording)
    return seen


async def noop() -> None:
    return None


async def test_success(states: States) -> None:
    """A task that succeeds: held, starting, running, done."""
    async with running() as tm:
        record = await tm.add_task(noop).wait(timeout=5)
    assert record.status is TaskStatus.SUCCESS
    assert states[record.task_id] == ["held", "starting", "running", "done"]


async def test_held_until_the_response(states: States) -> None:
    """A request's task stays held until the response is sent, then starts."""
    async with running() as tm:
        request_tasks = BackgroundTasks()
        handle = ManagedBackgroundTasks(tm, request_tasks).add_task(noop)
        assert tm.dispatcher.jobs[handle.task_id].state == "held"
        await request_tasks()
        await handle.wait(timeout=5)
    assert states[handle.task_id] == ["held", "starting", "running", "done"]


async def test_retry_then_success(states: States) -> None:
    """A failed attempt waits out its backoff holding no slot, then starts again."""
    attempts: list[int] = []

    async def flaky() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")

    async with running() as tm:
        tm.task(retries=1, delay=0.0)(flaky)
        record = await tm.add_task(flaky).wait(timeout=5)
    assert record.status is TaskStatus.SUCCESS
    assert states[record.task_id] == [
        *("held", "starting", "running", "backoff"),
        *("starting", "running", "done"),
    ]


async def test_cancel_while_queued(states: States) -> None:
    """Cancelled while it waits for a slot: queued, then done, never started."""
    gate = Gate()
    async with running(queues={"q": QueueConfig(concurrency=1)}) as tm:
        tm.add_task(gate.work, "first", queue="q")
        queued = tm.add_task(gate.work, "queued", queue="q")
        assert queued.cancel()
        gate.release("first")
        await tm.join(timeout=5)
    assert queued.status is TaskStatus.CANCELLED
    assert states[queued.task_id] == ["held", "queued", "done"]


async def test_cancel_in_backoff(states: States) -> None:
    """Cancelled between attempts: backoff, then done, not attempted again."""

    async def fails() -> None:
        raise RuntimeError("fails")

    async with running() as tm:
        tm.task(retries=3, delay=60.0)(fails)
        handle = tm.add_task(fails)
        await wait_until(lambda: handle.record.retries_used == 1)
        assert handle.cancel()
        await tm.join(timeout=5)
    assert handle.status is TaskStatus.CANCELLED
    assert states[handle.task_id] == ["held", "starting", "running", "backoff", "done"]


async def test_cancel_before_its_first_step(states: States) -> None:
    """Cancelled while its attempt's task has not stepped: starting, then done at once."""
    async with running() as tm:
        handle = tm.add_task(noop)
        assert handle.cancel()
        assert handle.status is TaskStatus.CANCELLED
        await tm.join(timeout=5)
    assert states[handle.task_id] == ["held", "starting", "done"]


async def test_cancel_while_running(states: States) -> None:
    """Cancelled inside its await: stopping until its coroutine ends, then done."""
    inside = asyncio.Event()

    async def long() -> None:
        inside.set()
        await asyncio.Event().wait()

    async with running() as tm:
        handle = tm.add_task(long)
        await inside.wait()
        assert handle.cancel()
        record = await handle.wait(timeout=5)
    assert record.status is TaskStatus.CANCELLED
    assert states[handle.task_id] == ["held", "starting", "running", "stopping", "done"]


async def test_a_stopping_task_that_raises_is_not_retried(states: States) -> None:
    """Asked to stop, a task that raises on its way out ends CANCELLED: no retry runs it."""
    inside = asyncio.Event()
    attempts: list[int] = []

    async def stubborn() -> None:
        attempts.append(1)
        inside.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    async with running() as tm:
        tm.task(retries=3, delay=0.0)(stubborn)
        handle = tm.add_task(stubborn)
        await inside.wait()
        assert handle.cancel()
        record = await handle.wait(timeout=5)
        await tm.join(timeout=5)
    assert record.status is TaskStatus.CANCELLED
    assert attempts == [1]
    assert states[handle.task_id] == ["held", "starting", "running", "stopping", "done"]


async def test_shutdown_interrupts_a_running_task(states: States) -> None:
    """Shutdown stops a running task it does not keep: stopping, then done (INTERRUPTED)."""
    inside = asyncio.Event()

    async def long() -> None:
        inside.set()
        await asyncio.Event().wait()

    tm = TaskManager(drain_timeout=0.0)
    await tm.startup()
    handle = tm.add_task(long)
    await inside.wait()
    await tm.shutdown()
    assert handle.status is TaskStatus.INTERRUPTED
    assert states[handle.task_id] == ["held", "starting", "running", "stopping", "done"]


async def test_shutdown_keeps_a_running_and_a_queued_task(states: States) -> None:
    """With requeue on, shutdown keeps both: the running one via stopping, the queued one at
    once; both stay PENDING for the next start."""
    gate = Gate()
    tm = TaskManager(
        snapshot_backend=MemoryBackend(),
        requeue_pending=True,
        max_concurrent_tasks=1,
        drain_timeout=0.0,
    )
    tm.task(name="gated")(gate.work)
    await tm.startup()
    first = tm.add_task(gate.work, "first")
    queued = tm.add_task(gate.work, "queued")
    await wait_until(lambda: gate.running == 1)
    await tm.shutdown()
    assert (first.status, queued.status) == (TaskStatus.PENDING, TaskStatus.PENDING)
    assert states[first.task_id] == ["held", "starting", "running", "stopping", "kept"]
    assert states[queued.task_id] == ["held", "queued", "kept"]


async def test_rate_limited_task_waits_then_runs(states: States) -> None:
    """A rate-limited task passes its gate before it takes a slot."""
    async with running() as tm:
        tm.task(name="limited", rate_limit=RateLimit(100, per=1.0))(noop)
        record = await tm.add_task(noop).wait(timeout=5)
    assert states[record.task_id] == ["held", "rate_waiting", "starting", "running", "done"]


async def test_rate_refused(states: States) -> None:
    """On a backend without rate limits the waiting task is refused: done (FAILED)."""
    async with running(snapshot_backend=NoRatesBackend()) as tm:
        tm.task(name="limited", rate_limit="5/s")(noop)
        record = await tm.add_task(noop).wait(timeout=5)
    assert record.status is TaskStatus.FAILED
    assert states[record.task_id] == ["held", "rate_waiting", "done"]


async def test_an_illegal_move_is_refused_and_changes_nothing() -> None:
    """A move the diagram lacks raises and leaves the state as it was; done is final."""
    async with running() as tm:
        request_tasks = BackgroundTasks()
        handle = ManagedBackgroundTasks(tm, request_tasks).add_task(noop)
        job = tm.dispatcher.jobs[handle.task_id]
        with pytest.raises(IllegalTransitionError, match="from 'held' to 'running'"):
            job.move("running")
        assert job.state == "held"
        await request_tasks()
        await handle.wait(timeout=5)
        assert job.state == "done"
        for to in ("held", "queued", "starting", "running", "backoff", "done", "kept"):
            with pytest.raises(IllegalTransitionError):
                job.move(to)  # type: ignore[arg-type]
        assert job.state == "done"


async def test_submitting_a_job_that_is_not_waiting_to_be_submitted_is_refused() -> None:
    """submit() takes held or backoff jobs; a finished one is skipped, a queued one refused."""
    gate = Gate()
    async with running(queues={"q": QueueConfig(concurrency=1)}) as tm:
        tm.add_task(gate.work, "first", queue="q")
        queued = tm.add_task(gate.work, "queued", queue="q")
        job = tm.dispatcher.jobs[queued.task_id]
        with pytest.raises(IllegalTransitionError, match="'queued' to 'submitted'"):
            tm.dispatcher.submit(job)
        assert job.state == "queued"
        gate.release("first")
        gate.release("queued")
        await tm.join(timeout=5)
        tm.dispatcher.submit(job)  # done: nothing happens
        assert job.state == "done"
    assert gate.started == ["first", "queued"]
