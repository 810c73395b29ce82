"""Dispatcher: the one path from "submitted" to a final status, for every task.

Each attempt: decrypt arguments, set the task context, run on the executor under the timeout,
then SUCCESS, a retry (the slot is released during the backoff wait) or FAILED. Cancellation and
shutdown arrive as asyncio cancellation of the attempt and are told apart by ``Job.stop_reason``.
Where a job is, and which move comes next, is its state (dispatch/job.py); optional features
(tracing, redaction, idempotency keys) are attempt hooks (dispatch/hooks.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..context import current_sink
from ..crypto import ArgumentCipher
from ..errors import ArgumentDecryptionError, IllegalTransitionError, WorkerCrashedError
from ..executors import ExecutorSet
from ..models import QueueConfig, StopReason, TaskRecord, TaskStatus, clock
from ..serialization import decode_call
from ..store import TaskStore
from .events import EventHub
from .hooks import AttemptHook, ErrorFields, HookSteps
from .job import ATTEMPTING, OVER, WAITING, Job
from .queues import QueueSet, QueueState
from .rates import RateGates, job_limits

if TYPE_CHECKING:
    from ..backends.base import TaskBackend
    from ..results import ResultKeeper
    from ..settings import ExecutionSettings

logger = logging.getLogger("fastapi_taskflow")
# Enum member access goes through the metaclass on Python 3.11 (5x a plain attribute): the hot
# path reads these module constants instead.
_RUNNING, _SUCCESS = TaskStatus.RUNNING, TaskStatus.SUCCESS

# Called once per job as it leaves the dispatcher: finished, or kept PENDING at shutdown.
FinishedCallback = Callable[[Job], None]


class Dispatcher:
    """Queues jobs, runs their attempts, and reports each final status once."""

    def __init__(
        self,
        *,
        store: TaskStore,
        executors: ExecutorSet,
        hub: EventHub,
        cipher: ArgumentCipher | None,
        queues: dict[str, QueueConfig] | None,
        execution: ExecutionSettings,
        on_finished: FinishedCallback,
        results: ResultKeeper,
        keeps: Callable[[Job], bool] | None = None,
        on_journaled_start: Callable[[TaskRecord], None] | None = None,
        rate_backend: Callable[[], TaskBackend | None] = lambda: None,
        hooks: Sequence[AttemptHook] = (),
    ) -> None:
        self.store = store
        self.executors = executors
        self.hub = hub
        self.cipher = cipher
        self.default_timeout = execution.default_timeout
        self.queues = QueueSet(
            queues, global_limit=execution.max_concurrent_tasks, start=self._start
        )
        self.results = results
        self.rates = RateGates(
            store=store, admit=self._queue, refuse=self._refuse, shared_backend=rate_backend
        )
        self.jobs: dict[str, Job] = {}
        self._on_finished = on_finished
        # Whether shutdown keeps a stopped job for the next start (its journal entry stays).
        self._keeps = keeps
        # Told when a journaled, requeueable job starts (only journaled jobs exist with a backend).
        self._on_journaled_start = on_journaled_start
        # The optional features' steps (dispatch/hooks.py); None when no feature is on, so the
        # attempt tests one local per step instead of walking empty tuples.
        self.hooks = HookSteps(hooks) if hooks else None
        # Jitter source, (low, high) -> seconds; replaceable in tests.
        self.jitter: Callable[[float, float], float] = random.uniform
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    # ---- admission -------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Put a held job, or one whose backoff is over, in its queue. Event-loop thread only."""
        job.retry_timer = None
        state = job.state
        if state in OVER:
            return  # cancelled (or kept at shutdown) while it waited to be submitted
        if state != "held" and state != "backoff":
            raise IllegalTransitionError(job.task_id, state, "submitted")
        self.jobs[job.record.task_id] = job
        queue = self.queues.resolve(job.record.queue)
        if job.options.rate_limit is None and queue.config.rate_limit is None:
            self.queues.push(queue, job, job.record.priority)
        else:  # waits for its turn first (each retry too), holding no slot meanwhile
            self.rates.enter(job, queue, job_limits(job, queue))

    def _queue(self, job: Job, queue: QueueState) -> None:
        self.queues.push(queue, job, job.record.priority)

    def _refuse(self, job: Job, reason: str) -> None:
        self.finish_waiting(job, TaskStatus.FAILED, reason)

    def _start(self, job: Job, queue: QueueState) -> None:
        assert self._loop is not None
        job.move("starting")
        job.queue = queue
        # RUNNING from the moment it holds a slot: PENDING means "waiting", and backpressure
        # (max_size) counts only those.
        record = job.record
        self.store.mark_running(record, clock())
        if job.requeue and job.journaled and self._on_journaled_start is not None:
            self._on_journaled_start(record)
        if self.hub.observing:
            self.hub.lifecycle(record, _RUNNING, record.retries_used + 1)
        # No done callback (it costs a loop callback per task): the attempt frees its slot in a
        # ``finally``, and stop_attempt() settles an attempt cancelled before it began. No task
        # name either: set_name costs as much as creating the task.
        job.task = self._loop.create_task(self._run(job))

    def _attempt_ended(self, job: Job) -> None:
        job.task = None
        queue, job.queue = job.queue, None
        if queue is not None:
            self.queues.release(queue)

    def stop_attempt(self, job: Job, reason: StopReason) -> None:
        """Ask a job's attempt to stop for ``reason`` ("cancel" or "shutdown"); a second ask
        cancels its task again but keeps the first reason."""
        task = job.task
        state = job.state
        if task is None or state not in ATTEMPTING:
            return
        task.cancel()
        if state == "starting":  # its body will never run: free the slot and settle it here
            job.stop_reason = reason
            self._attempt_ended(job)
            self._never_started(job)
        elif state == "running":
            job.move("stopping")
            job.stop_reason = reason

    def _never_started(self, job: Job) -> None:
        """Stopped before its call began: kept for the next start, CANCELLED or INTERRUPTED."""
        if job.stop_reason == "shutdown" and self._kept(job, job.record.retries_used):
            return
        status = TaskStatus.CANCELLED if job.stop_reason == "cancel" else TaskStatus.INTERRUPTED
        self._finish(job, status, job.record.retries_used, error="stopped before it started")

    # ---- one attempt -----------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        """One attempt, from its first step to a status; its slot is freed whatever happens.

        One coroutine per attempt on purpose: an extra await layer costs a coroutine per task.
        """
        hooks = self.hooks
        try:
            job.move("running")
            attempt = job.attempt = job.record.retries_used + 1
            if hooks is not None and (admission := hooks.admission(job)) is not None:
                refusal = await admission
                if refusal is not None:
                    self._finish(job, TaskStatus.CANCELLED, 0, error=refusal)
                    return
            token = current_sink.set(job)  # the job is the sink of its attempts
            try:
                if hooks is not None:
                    for begin in hooks.begin:
                        begin(job)
                try:
                    value = await self._call(job, hooks)
                except Exception as exc:
                    if hooks is not None:
                        hooks.after_call(job, exc)
                    self._failed(job, exc)
                except asyncio.CancelledError as exc:
                    if hooks is not None:
                        hooks.after_call(job, exc)
                    self._stopped(job)
                else:
                    if hooks is not None:
                        hooks.after_call(job, None)
                    if value is not None:  # most tasks return None and keep nothing
                        self.results.keep(job.record, job.options, value)
                    self._finish(job, _SUCCESS, attempt)
            finally:
                current_sink.reset(token)
                if hooks is not None:
                    hooks.end(job)
        except asyncio.CancelledError:
            # Cancelled outside the task's own call (e.g. while a hook admitted it).
            if job.state == "running" or job.state == "stopping":
                self._never_started(job)
            raise
        except Exception as exc:  # a bug in this loop or a hook, not in the task
            logger.error("task %s: internal error in the attempt loop", job.task_id, exc_info=exc)
            if job.state not in OVER:  # never leave it RUNNING (nor waiting for a retry)
                self._take_out(job)
                self._fail(job, job.attempt, exc)
        finally:
            self._attempt_ended(job)

    def _call(self, job: Job, hooks: HookSteps | None) -> Awaitable[Any]:
        """The attempt's call, not yet awaited: arguments decrypted, hooks told, executor chosen
        (a plain function, not a coroutine: no await layer of its own)."""
        args, kwargs = job.args, job.kwargs
        if args is None or kwargs is None:  # encrypted: decrypted here, per attempt
            args, kwargs = self._decrypted_arguments(job)
        if hooks is not None:
            for before_call in hooks.before_call:
                before_call(job, args, kwargs)
        definition = job.definition
        kind = definition.executor
        timeout = job.options.timeout or self.default_timeout
        if kind == "async" and timeout is None:  # nothing to enforce: the coroutine itself
            return definition.func(*args, **kwargs)  # type: ignore[no-any-return]
        return self.executors.run(
            kind,
            definition.func,
            args,
            kwargs,
            sink=job,
            timeout=timeout,
            trace_carrier=hooks.carrier(job) if hooks is not None and kind == "process" else None,
        )

    def _failed(self, job: Job, exc: Exception) -> None:
        """The attempt raised: a retry after the backoff, or FAILED."""
        if job.state == "stopping":
            self._stopped(job)  # asked to stop, it raised on its way out: never retried
        elif isinstance(exc, ArgumentDecryptionError):
            self._fail(job, job.attempt, exc)  # no key will appear between retries
        elif isinstance(exc, WorkerCrashedError) and exc.shutdown:
            # The pool closed under it: the app is stopping, not the task failing.
            job.move("stopping")
            job.stop_reason = "shutdown"
            self._stopped(job)
        elif self._should_retry(job, exc):
            self._retry_later(job, exc)
        else:
            self._fail(job, job.attempt, exc)

    def _error_fields(self, job: Job, exc: BaseException) -> ErrorFields:
        """(error, stack trace, sealed error) as stored: as the hooks make them (redacted,
        sealed) when any is on."""
        fields: ErrorFields = (_describe(exc), _trace(exc), None)
        hooks = self.hooks
        return hooks.error_fields(job, exc, fields) if hooks is not None else fields

    def _decrypted_arguments(self, job: Job) -> tuple[tuple[Any, ...], dict[str, Any]]:
        payload = job.record.encrypted_payload
        if payload is None:
            return (), {}
        if self.cipher is None:
            raise ArgumentDecryptionError(
                "the task's arguments are encrypted but no encryption key is configured"
            )
        return decode_call(self.cipher.decrypt(payload))

    def _should_retry(self, job: Job, exc: Exception) -> bool:
        return job.record.retries_used < job.options.retries and isinstance(
            exc, job.options.retry_on
        )

    def _retry_later(self, job: Job, exc: Exception) -> None:
        """Back to PENDING; resubmitted after the backoff, holding no slot meanwhile."""
        record = job.record
        error, stacktrace, sealed = self._error_fields(job, exc)
        job.move("backoff")
        self.store.transition(
            record,
            TaskStatus.PENDING,
            retries_used=record.retries_used + 1,
            error=error,
            stacktrace=stacktrace,
            encrypted_error=sealed,
        )
        self.hub.lifecycle(record, TaskStatus.FAILED, job.attempt, retrying=True)
        delay = job.options.retry_delay(record.retries_used)
        if job.options.jitter:
            delay += self.jitter(0, job.options.jitter)
        assert self._loop is not None
        job.retry_timer = self._loop.call_later(delay, self.submit, job)

    def _fail(self, job: Job, attempt: int, exc: BaseException) -> None:
        error, stacktrace, sealed = self._error_fields(job, exc)
        self._finish(
            job, TaskStatus.FAILED, attempt, error=error, stacktrace=stacktrace, sealed=sealed
        )

    def _stopped(self, job: Job) -> None:
        reason = job.stop_reason
        attempt = job.attempt
        if reason == "cancel":
            self._finish(job, TaskStatus.CANCELLED, attempt, error="cancelled while running")
        elif reason == "shutdown":
            if self._kept(job, attempt):
                return
            self._finish(
                job, TaskStatus.INTERRUPTED, attempt, error="interrupted by application shutdown"
            )
        else:
            # Cancelled by something outside taskflow (the loop closing): never leave it RUNNING.
            self._finish(job, TaskStatus.INTERRUPTED, attempt, error="attempt was cancelled")
            raise asyncio.CancelledError

    def _kept(self, job: Job, attempt: int) -> bool:
        """Shutdown stopped a job that runs again at the next start: back to PENDING (it
        waits for that start), and its idempotency key stays reserved (same task id)."""
        record = job.record
        if self._keeps is None or not self._keeps(job):
            return False
        job.move("kept")
        self.store.transition(
            record,
            TaskStatus.PENDING,
            error="interrupted by application shutdown; runs again at the next start",
        )
        self.hub.lifecycle(record, TaskStatus.INTERRUPTED, attempt, retrying=True)
        self.jobs.pop(record.task_id, None)
        self._left(job)
        self._on_finished(job)
        return True

    def _finish(
        self,
        job: Job,
        status: TaskStatus,
        attempt: int,
        *,
        error: str | None = None,
        stacktrace: str | None = None,
        sealed: bytes | None = None,
    ) -> None:
        job.move("done")
        record = job.record
        record.encrypted_error = sealed
        self.store.mark_finished(record, status, clock(), error, stacktrace)
        if self.hub.observing:
            self.hub.lifecycle(record, status, attempt)
        self.jobs.pop(record.task_id, None)
        if self.hooks is not None:
            self.hooks.left(job)
        self._on_finished(job)

    def _left(self, job: Job) -> None:
        if self.hooks is not None:
            self.hooks.left(job)

    # ---- control ---------------------------------------------------------------------------

    def cancel(self, task_id: str, reason: str = "cancelled before it started") -> bool:
        """Cancel a pending or running task. Returns False when it is already finished/unknown.
        ``reason`` is the error of a task that had not started."""
        job = self.jobs.get(task_id)
        if job is None or job.state in OVER:
            return False
        if job.state in ATTEMPTING:  # its attempt (or stop_attempt, if it never began) records it
            self.stop_attempt(job, "cancel")
        else:
            self.finish_waiting(job, TaskStatus.CANCELLED, reason)
        return True

    def finish_waiting(self, job: Job, status: TaskStatus, reason: str) -> None:
        """End a job that has not started (held, rate-waiting, queued, or in its backoff wait);
        one that is no longer waiting is left alone."""
        if job.state not in WAITING:
            return
        self._take_out(job)
        job.record.waiting_reason = None
        self._finish(job, status, job.record.retries_used, error=reason)

    def withdraw(self, job: Job) -> None:
        """Shutdown keeps a waiting job for the next start: out of its queue and backoff wait
        (its journal entry stays; the manager saves its PENDING record)."""
        self._take_out(job)
        job.move("kept")
        self._left(job)

    def _take_out(self, job: Job) -> None:
        """Out of its queue's count and its backoff wait; a gate or heap that still lists it
        skips it once its state has moved on."""
        if job.state == "queued":
            self.queues.withdraw(job)
        timer = job.retry_timer
        if timer is not None:
            timer.cancel()
            job.retry_timer = None

    def track(self, job: Job) -> None:
        """Know a job before it is submitted (deferred until the response is sent)."""
        self.jobs[job.record.task_id] = job

    def running_jobs(self) -> list[Job]:
        # list(...) copies in one C call: sync routes may track() jobs from worker threads.
        return [j for j in list(self.jobs.values()) if j.state in ATTEMPTING]

    def waiting_jobs(self) -> list[Job]:
        return [j for j in list(self.jobs.values()) if j.state in WAITING]


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _trace(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))
