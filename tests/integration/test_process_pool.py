"""The process pool: results, errors, live messages, crashes, timeouts, cancellation, shutdown.

Most tests share one pool (and one event loop) for the module, because starting a worker costs
about a second; tests that end workers on purpose get replacements, and the shutdown tests use
pools of their own.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

# Imported by module name, as the workers will: they start with this run's sys.path.
import process_tasks as tasks
import pytest
import pytest_asyncio

from fastapi_taskflow.errors import TaskArgumentError, TaskTimeoutError
from fastapi_taskflow.executors.process import ProcessPool, RemoteTraceback, WorkerCrashedError
from fastapi_taskflow.models import TaskContext

pytestmark = pytest.mark.asyncio(loop_scope="module")

CONTEXT = TaskContext(task_id="t-1", func_name="process_tasks:context", attempt=2, tags={"a": "b"})


class Recorder:
    """Collects a job's log and progress messages; a test can await the first log."""

    def __init__(self) -> None:
        self.logs: list[tuple[str, str, dict[str, Any]]] = []
        self.progress: list[tuple[float, str | None]] = []
        self.first_log = asyncio.Event()
        self.first_progress = asyncio.Event()

    def on_log(self, message: str, level: str, extra: dict[str, Any]) -> None:
        self.logs.append((message, level, extra))
        self.first_log.set()

    def on_progress(self, fraction: float, message: str | None) -> None:
        self.progress.append((fraction, message))
        self.first_progress.set()

    async def started_pid(self) -> int:
        await asyncio.wait_for(self.first_log.wait(), 30)
        return int(self.logs[0][2]["pid"])


def call(
    pool: ProcessPool,
    func: Callable[..., Any],
    *args: Any,
    recorder: Recorder | None = None,
    timeout: float | None = None,
    **kwargs: Any,
) -> Any:
    recorder = recorder or Recorder()
    return pool.run(
        func,
        args,
        kwargs,
        context=CONTEXT,
        on_log=recorder.on_log,
        on_progress=recorder.on_progress,
        timeout=timeout,
    )


def in_process_table(pid: int) -> bool:
    """True while the pid exists at all, zombies included (a zombie keeps its /proc entry)."""
    return os.path.exists(f"/proc/{pid}")


def assert_reaped(pid: int) -> None:
    assert not in_process_table(pid), f"worker {pid} is still in the process table"
    assert pid not in {p.pid for p in multiprocessing.active_children()}
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # nothing left to wait for: not our child any more


async def until_reaped(pid: int, within: float = 10.0) -> None:
    """Workers ended on purpose are reaped in the background; give that a bounded moment."""
    deadline = time.monotonic() + within
    while in_process_table(pid) and time.monotonic() < deadline:  # noqa: ASYNC110 - no event exists
        await asyncio.sleep(0.02)
    assert_reaped(pid)


@pytest.fixture(scope="module")
def manager() -> Iterator[Any]:
    """A multiprocessing manager: its Events can be passed to jobs as plain arguments."""
    with multiprocessing.get_context("spawn").Manager() as mgr:
        yield mgr


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool() -> AsyncIterator[ProcessPool]:
    """Two workers shared by the module's tests."""
    shared = ProcessPool(max_workers=2, shutdown_timeout=5)
    yield shared
    await shared.close()


# -- construction and arguments ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_workers": 0}, "max_workers must be an int >= 1 or None"),
        ({"max_workers": 1.5}, "max_workers must be an int >= 1 or None"),
        ({"shutdown_timeout": -1}, "shutdown_timeout must be a finite number"),
        ({"shutdown_timeout": float("nan")}, "shutdown_timeout must be a finite number"),
        ({"start_method": "thread"}, "start_method must be one of"),
    ],
)
async def test_bad_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    """Invalid settings raise ValueError saying which one and why."""
    with pytest.raises(ValueError, match=message):
        ProcessPool(**kwargs)


async def test_default_size_is_the_cpu_count() -> None:
    """max_workers=None means one worker per CPU, and nothing starts before the first job."""
    idle = ProcessPool()
    assert idle.max_workers == (os.cpu_count() or 1)
    assert idle.size == 0
    await idle.close()


async def test_check_arguments_names_the_bad_argument(pool: ProcessPool) -> None:
    """An argument that cannot be pickled is named, with its position or keyword and the reason."""
    with pytest.raises(TaskArgumentError) as kwarg_error:
        pool.check_arguments(tasks.send_report, ("ops@example.com",), {"conn": threading.Lock()})
    assert str(kwarg_error.value) == (
        "argument 'conn' (kwarg) of send_report cannot be sent to a worker process: "
        "cannot pickle '_thread.lock' object"
    )
    with pytest.raises(TaskArgumentError, match=r"argument 'recipient' \(positional 0\)"):
        pool.check_arguments(tasks.send_report, (threading.Lock(),), {})


async def test_check_arguments_accepts_plain_values_and_lambdas(pool: ProcessPool) -> None:
    """Plain values, containers and (with cloudpickle) lambdas pass the check."""
    args = (1, "x", 2.5, None, b"raw", [1, 2], {"k": (1, 2)}, Decimal("1.5"), lambda v: v)
    pool.check_arguments(tasks.send_report, args, {"conn": datetime.now(UTC)})


async def test_run_refuses_arguments_it_cannot_send(pool: ProcessPool) -> None:
    """run() raises TaskArgumentError itself when called without the check."""
    with pytest.raises(TaskArgumentError, match="argument 'value'"):
        await call(pool, tasks.echo, threading.Lock())


# -- results and errors --------------------------------------------------------------------------


async def test_result_round_trip(pool: ProcessPool) -> None:
    """Arguments and the result keep their types across the process boundary."""
    value = {"when": datetime(2024, 5, 1, tzinfo=UTC), "pair": (1, 2), 3: Decimal("0.1")}
    assert await call(pool, tasks.echo, value) == value
    assert await call(pool, tasks.add, 2, b=40) == 42


async def test_lambda_arguments_travel_with_cloudpickle(pool: ProcessPool) -> None:
    """A lambda or closure passed as an argument is serialized by value."""
    factor = 3
    assert await call(pool, tasks.apply, lambda v: v * factor, 14) == 42


async def test_workers_are_reused(pool: ProcessPool) -> None:
    """Consecutive jobs run in the same worker process; no process is started per job."""
    first = await call(pool, tasks.whoami)
    second = await call(pool, tasks.whoami)
    assert first == second
    assert pool.size <= 2


async def test_exception_type_is_preserved(pool: ProcessPool) -> None:
    """The task's exception is re-raised with its type, message and the worker's traceback."""
    with pytest.raises(tasks.ReportError, match="no such customer") as info:
        await call(pool, tasks.fail_with, "no such customer")
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "fail_with" in cause.text
    assert "raise ReportError(message)" in cause.text


@pytest.mark.parametrize(
    ("func", "type_name", "message"),
    [
        (tasks.fail_unpicklable, "HoldsLock", "disk quota exceeded"),
        (tasks.fail_unloadable, "NeedsTwoArgs", "7: bad row"),
    ],
)
async def test_exception_that_cannot_travel_becomes_runtime_error(
    pool: ProcessPool, func: Callable[..., Any], type_name: str, message: str
) -> None:
    """An exception that cannot travel back becomes a RuntimeError with its name, text and trace."""
    with pytest.raises(RuntimeError) as info:
        await call(pool, func)
    assert type(info.value) is RuntimeError
    assert type_name in str(info.value)
    assert message in str(info.value)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert func.__name__ in cause.text


async def test_result_that_cannot_travel_fails_the_job(pool: ProcessPool) -> None:
    """A result that cannot be pickled fails the job clearly, and the worker stays usable."""
    with pytest.raises(RuntimeError, match=r"the result of return_unpicklable .* cannot be sent"):
        await call(pool, tasks.return_unpicklable)
    assert await call(pool, tasks.add, 1, 1) == 2


async def test_task_own_timeout_error_is_not_a_task_timeout(pool: ProcessPool) -> None:
    """A TimeoutError raised by the task itself is not mistaken for the pool's timeout."""
    with pytest.raises(TimeoutError) as info:
        await call(pool, tasks.fail_timeout, timeout=30)
    assert type(info.value) is TimeoutError


# -- inside the task ----------------------------------------------------------------------------


async def test_task_context_in_the_worker(pool: ProcessPool) -> None:
    """get_task_context() inside the worker returns the context the job was given."""
    assert await call(pool, tasks.context) == CONTEXT


async def test_logs_and_progress_arrive_while_the_job_runs(pool: ProcessPool, manager: Any) -> None:
    """task_log and set_progress reach the parent live: the job only ends after we saw its log."""
    release = manager.Event()
    recorder = Recorder()
    job = asyncio.create_task(call(pool, tasks.log_then_wait, release, recorder=recorder))
    pid = await recorder.started_pid()
    await asyncio.wait_for(recorder.first_progress.wait(), 30)
    assert not job.done()
    assert recorder.logs == [("started", "info", {"pid": pid})]
    assert recorder.progress == [(0.25, "waiting for the test")]
    release.set()
    assert await job == "released"
    assert recorder.progress[-1] == (1.0, "released")


# -- crashes, timeouts, cancellation ---------------------------------------------------------------


async def test_os_exit_fails_only_that_job(pool: ProcessPool, manager: Any) -> None:
    """A worker that exits mid-job fails that job with the exit code; a concurrent job finishes."""
    release = manager.Event()
    other = Recorder()
    survivor = asyncio.create_task(call(pool, tasks.log_then_wait, release, recorder=other))
    await other.started_pid()
    doomed = Recorder()
    with pytest.raises(WorkerCrashedError, match="worker process exited with exit code 3") as info:
        await call(pool, tasks.exit_now, 3, recorder=doomed)
    assert info.value.exitcode == 3
    assert not survivor.done()
    release.set()
    assert await survivor == "released"
    await until_reaped(await doomed.started_pid())
    assert await call(pool, tasks.add, 1, 2) == 3  # a replacement took the dead worker's place


async def test_sigkill_fails_only_that_job(pool: ProcessPool, manager: Any) -> None:
    """SIGKILL to a busy worker fails its job with the signal name; the other job is untouched."""
    release, never = manager.Event(), manager.Event()
    other, doomed = Recorder(), Recorder()
    survivor = asyncio.create_task(call(pool, tasks.log_then_wait, release, recorder=other))
    victim = asyncio.create_task(call(pool, tasks.log_then_wait, never, recorder=doomed))
    await other.started_pid()
    pid = await doomed.started_pid()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerCrashedError, match="worker process exited with signal SIGKILL"):
        await victim
    release.set()
    assert await survivor == "released"
    await until_reaped(pid)


async def test_worker_dying_while_idle_is_replaced(pool: ProcessPool) -> None:
    """A worker killed between jobs is noticed and replaced; the next job runs normally."""
    pid = await call(pool, tasks.whoami)
    os.kill(pid, signal.SIGKILL)
    await until_reaped(pid)
    assert await call(pool, tasks.add, 2, 2) == 4


async def test_timeout_terminates_the_worker(pool: ProcessPool) -> None:
    """A job past its timeout raises TaskTimeoutError, its worker is ended, the next job runs."""
    recorder = Recorder()
    started = time.monotonic()
    with pytest.raises(TaskTimeoutError, match=r"timeout of 0\.3 s"):
        await call(pool, tasks.sleep_for, 30, recorder=recorder, timeout=0.3)
    assert time.monotonic() - started < 10
    await until_reaped(await recorder.started_pid())
    assert await call(pool, tasks.add, 1, 2, timeout=30) == 3


async def test_cancellation_terminates_the_worker(pool: ProcessPool) -> None:
    """Cancelling run() ends the worker running the job and lets CancelledError through."""
    recorder = Recorder()
    job = asyncio.create_task(call(pool, tasks.sleep_for, 30, recorder=recorder))
    pid = await recorder.started_pid()
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    await until_reaped(pid)
    assert await call(pool, tasks.whoami) != pid


# -- pools of their own ---------------------------------------------------------------------------


async def test_waiting_callers_are_served_in_order(manager: Any) -> None:
    """With every worker busy, callers queue and get the worker in the order they arrived."""
    single = ProcessPool(max_workers=1, shutdown_timeout=5)
    release = manager.Event()
    first = Recorder()
    order: list[int] = []

    async def numbered(n: int) -> None:
        await call(single, tasks.add, n, 0)
        order.append(n)

    try:
        blocker = asyncio.create_task(call(single, tasks.log_then_wait, release, recorder=first))
        await first.started_pid()
        queued = [asyncio.create_task(numbered(n)) for n in range(5)]
        await asyncio.sleep(0)  # let each reach the queue (no worker is free)
        assert single.running == 1
        release.set()
        await blocker
        await asyncio.gather(*queued)
        assert order == [0, 1, 2, 3, 4]
        assert single.size == 1
    finally:
        await single.close()


async def test_close_waits_for_a_running_job() -> None:
    """close() lets a running job finish within shutdown_timeout and reaps every worker."""
    own = ProcessPool(max_workers=1, shutdown_timeout=30)
    recorder = Recorder()
    job = asyncio.create_task(call(own, tasks.sleep_for, 0.5, recorder=recorder))
    pid = await recorder.started_pid()
    started = time.monotonic()
    await own.close()
    assert time.monotonic() - started < 10
    assert job.done()
    assert job.result() == 0.5
    assert own.size == 0
    assert own.running == 0
    assert_reaped(pid)
    with pytest.raises(RuntimeError, match="closed"):
        await call(own, tasks.add, 1, 1)


async def test_close_terminates_a_job_past_shutdown_timeout() -> None:
    """A job still running at shutdown_timeout is terminated, fails clearly, leaves no zombie."""
    own = ProcessPool(max_workers=1, shutdown_timeout=0.2)
    recorder = Recorder()
    job = asyncio.create_task(call(own, tasks.sleep_for, 60, recorder=recorder))
    pid = await recorder.started_pid()
    started = time.monotonic()
    await own.close()
    assert time.monotonic() - started < 5
    with pytest.raises(WorkerCrashedError, match="terminated at shutdown") as info:
        await job
    assert info.value.shutdown
    assert own.size == 0
    assert_reaped(pid)
