"""Attempt hooks: the dispatcher calls each step a hook overrides, in order, and a failing hook
never leaves a task RUNNING."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from fastapi_taskflow import TaskStatus
from fastapi_taskflow.dispatch.attempts import Dispatcher
from fastapi_taskflow.dispatch.enqueue import Enqueuer
from fastapi_taskflow.dispatch.events import EventHub
from fastapi_taskflow.dispatch.hooks import AttemptHook, ErrorFields
from fastapi_taskflow.dispatch.job import Job
from fastapi_taskflow.executors import ExecutorSet
from fastapi_taskflow.loggers.chain import ObserverChain
from fastapi_taskflow.loopref import LoopRef
from fastapi_taskflow.models import TaskRecord
from fastapi_taskflow.registry import TaskDefinition, TaskOptions
from fastapi_taskflow.results import ResultKeeper
from fastapi_taskflow.settings import ExecutionSettings, ResultSettings
from fastapi_taskflow.store import TaskStore


class Rig:
    """A dispatcher built whole with the given hooks, and the one enqueue path onto it."""

    def __init__(self, hooks: tuple[AttemptHook, ...]) -> None:
        self.store = TaskStore()
        self.executors = ExecutorSet(ExecutionSettings())
        self._finished: dict[str, asyncio.Future[TaskRecord]] = {}
        self.dispatcher = Dispatcher(
            store=self.store,
            executors=self.executors,
            hub=EventHub(self.store, ObserverChain(), LoopRef()),
            cipher=None,
            queues=None,
            execution=ExecutionSettings(),
            on_finished=self._on_finished,
            results=ResultKeeper(cipher=None, settings=ResultSettings()),
            hooks=hooks,
        )
        self.dispatcher.bind(asyncio.get_running_loop())
        self.enqueuer = Enqueuer(
            store=self.store,
            dispatcher=self.dispatcher,
            cipher=None,
            requeue_pending=False,
            check_arguments=lambda *_: None,
        )

    def _on_finished(self, job: Job) -> None:
        self._finished[job.task_id].set_result(job.record)

    async def run(self, func: Callable[..., Awaitable[Any]], *, retries: int = 0) -> TaskRecord:
        """Run ``func`` as a task to its final status."""
        definition = TaskDefinition(func, TaskOptions(retries=retries), func.__name__, "async")
        task_id = f"t{len(self._finished)}"
        self._finished[task_id] = asyncio.get_running_loop().create_future()
        self.enqueuer.enqueue(definition, (), {}, submit=self.dispatcher.submit, task_id=task_id)
        return await asyncio.wait_for(self._finished[task_id], 5)


@pytest.fixture
async def rig_for() -> AsyncIterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(*hooks: AttemptHook) -> Rig:
        rigs.append(Rig(hooks))
        return rigs[-1]

    yield make
    for rig in rigs:
        await rig.executors.close()


class Recorder(AttemptHook):
    """Notes every step it is called for, with the job's attempt and the record's status."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, int, str]] = []

    def _note(self, step: str, job: Job) -> None:
        self.steps.append((step, job.attempt, job.record.status.value))

    def admit(self, job: Job) -> Awaitable[str | None] | None:
        self._note("admit", job)
        return None

    def begin(self, job: Job) -> None:
        self._note("begin", job)

    def before_call(self, job: Job, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._note("before_call", job)

    def after_call(self, job: Job, error: BaseException | None) -> None:
        self._note("after_call" if error is None else f"after_call {type(error).__name__}", job)

    def error_fields(self, job: Job, exc: BaseException, fields: ErrorFields) -> ErrorFields:
        self._note("error_fields", job)
        return fields

    def end(self, job: Job) -> None:
        self._note("end", job)

    def left(self, job: Job) -> None:
        self._note(f"left {job.state}", job)


async def test_no_hooks_is_the_plain_path(rig_for: Callable[..., Rig]) -> None:
    """Without hooks the dispatcher has no steps to call at all."""
    rig = rig_for()
    assert rig.dispatcher.hooks is None
    assert (await rig.run(_noop)).status is TaskStatus.SUCCESS


async def test_steps_run_in_order_around_each_attempt(rig_for: Callable[..., Rig]) -> None:
    """A retried task: every attempt is admitted, begun, called, ended; it leaves once."""
    hook = Recorder()
    rig = rig_for(hook)
    calls: list[int] = []

    async def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("first attempt fails")

    record = await rig.run(flaky, retries=1)
    assert record.status is TaskStatus.SUCCESS
    assert hook.steps == [
        ("admit", 1, "running"),
        ("begin", 1, "running"),
        ("before_call", 1, "running"),
        ("after_call ValueError", 1, "running"),
        ("error_fields", 1, "running"),
        ("end", 1, "pending"),
        ("admit", 2, "running"),
        ("begin", 2, "running"),
        ("before_call", 2, "running"),
        ("after_call", 2, "running"),
        ("left done", 2, "success"),
        ("end", 2, "success"),
    ]


async def test_only_overridden_steps_are_called(rig_for: Callable[..., Rig]) -> None:
    """A hook that overrides one step is listed for that step only."""

    class EndOnly(AttemptHook):
        def end(self, job: Job) -> None:
            return None

    hook = EndOnly()
    rig = rig_for(hook)
    steps = rig.dispatcher.hooks
    assert steps is not None
    assert [len(s) for s in (steps.admit, steps.begin, steps.before_call)] == [0, 0, 0]
    assert (await rig.run(_noop)).status is TaskStatus.SUCCESS


async def test_an_admission_refusal_cancels_the_task_unrun(rig_for: Callable[..., Rig]) -> None:
    """A hook that refuses in admit ends the task CANCELLED with its reason; it never runs."""
    ran: list[int] = []

    class Refuses(AttemptHook):
        def admit(self, job: Job) -> Awaitable[str | None] | None:
            return self._refuse()

        async def _refuse(self) -> str | None:
            await asyncio.sleep(0)
            return "refused by the hook"

    async def work() -> None:
        ran.append(1)

    record = await rig_for(Refuses(), Recorder()).run(work)
    assert (record.status, record.error) == (TaskStatus.CANCELLED, "refused by the hook")
    assert ran == []


async def test_a_hook_failing_in_begin_fails_the_task(
    rig_for: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    """begin raising is an internal error: FAILED (not retried, never RUNNING), slot freed,
    and every hook's end still runs."""
    recorder = Recorder()

    class Broken(AttemptHook):
        def begin(self, job: Job) -> None:
            raise RuntimeError("hook bug")

    rig = rig_for(recorder, Broken())
    record = await rig.run(_noop, retries=3)
    assert record.status is TaskStatus.FAILED
    assert record.retries_used == 0
    assert "hook bug" in (record.error or "")
    assert ("end", 1, "running") in recorder.steps
    assert rig.dispatcher.queues.global_running == 0
    assert "internal error in the attempt loop" in caplog.text


async def test_hooks_failing_after_the_call_are_logged_and_skipped(
    rig_for: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    """after_call, end and left raising: logged, the other hooks still run, the task's own
    outcome stands."""
    recorder = Recorder()

    class Broken(AttemptHook):
        def after_call(self, job: Job, error: BaseException | None) -> None:
            raise RuntimeError("after_call bug")

        def end(self, job: Job) -> None:
            raise RuntimeError("end bug")

        def left(self, job: Job) -> None:
            raise RuntimeError("left bug")

    with caplog.at_level(logging.ERROR, logger="fastapi_taskflow"):
        record = await rig_for(Broken(), recorder).run(_noop)
    assert record.status is TaskStatus.SUCCESS
    assert [s[0] for s in recorder.steps][-3:] == ["after_call", "left done", "end"]
    assert caplog.text.count("attempt hook") == 3


async def test_a_failing_error_fields_hook_stores_only_the_error_type(
    rig_for: Callable[..., Rig],
) -> None:
    """When the hook that scrubs errors fails, the stored error is the type alone: never the
    text it was meant to scrub."""

    class Broken(AttemptHook):
        def error_fields(self, job: Job, exc: BaseException, fields: ErrorFields) -> ErrorFields:
            raise RuntimeError("scrubber bug")

    async def leaks() -> None:
        raise ValueError("password=hunter2")

    record = await rig_for(Broken()).run(leaks)
    assert record.status is TaskStatus.FAILED
    assert (record.error, record.stacktrace) == ("ValueError", None)


async def _noop() -> None:
    return None
