"""Dispatcher: the one path from "submitted" to a final status, for every task.

Each attempt: decrypt arguments, set the task context, run on the executor under the timeout,
then SUCCESS, a retry (the slot is released during the backoff wait) or FAILED. Cancellation and
shutdown arrive as asyncio cancellation of the attempt and are told apart by ``Job.stop_reason``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..context import current_sink
from ..crypto import ArgumentCipher
from ..errors import ArgumentDecryptionError, WorkerCrashedError
from ..executors import ExecutorSet
from ..models import QueueConfig, StopReason, TaskRecord, TaskStatus, utcnow
from ..serialization import decode_call
from ..store import TaskStore
from ..tracing import NO_SPAN
from .events import AttemptSink, EventHub
from .job import Job
from .keys import KeyGuard
from .queues import QueueSet, QueueState
from .rates import RateGates, job_limits

if TYPE_CHECKING:
    from ..backends.base import TaskBackend
    from ..redaction import ErrorPolicy
    from ..results import ResultKeeper
    from ..settings import ExecutionSettings
    from ..tracing import Tracing

logger = logging.getLogger("fastapi_taskflow")
# Enum member access goes through the metaclass on Python 3.11 (5x a plain attribute): the hot
# path reads these module constants instead.
_PENDING, _RUNNING, _SUCCESS = TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.SUCCESS

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
        key_guard: Callable[[], KeyGuard | None] = lambda: None,
        rate_backend: Callable[[], TaskBackend | None] = lambda: None,
        tracing: Tracing | None = None,
        privacy: ErrorPolicy | None = None,
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
        # The running manager's guard when the backend is shared (see dispatch/keys.py): it
        # exists only between startup and shutdown, so it is asked for, not held.
        self._key_guard = key_guard
        # When on: one span per attempt; redaction and sealed errors.
        self.tracing = tracing
        self.privacy = privacy
        # Jitter source, (low, high) -> seconds; replaceable in tests.
        self.jitter: Callable[[float, float], float] = random.uniform
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @property
    def key_guard(self) -> KeyGuard | None:
        """The cross-instance idempotency guard while the manager runs on a shared backend."""
        return self._key_guard()

    # ---- admission -------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Put a PENDING job in its queue. Event-loop thread only."""
        job.retry_timer = None
        if job.cancelled or job.record.status is not _PENDING:
            return  # cancelled (or kept at shutdown) while it waited to be submitted
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
        # RUNNING from the moment it holds a slot: PENDING means "waiting", and backpressure
        # (max_size) counts only those.
        record = job.record
        self.store.mark_running(record, utcnow())
        if job.requeue and job.journaled and self._on_journaled_start is not None:
            self._on_journaled_start(record)
        if self.hub.observing:
            self.hub.lifecycle(record, _RUNNING, record.retries_used + 1)
        job.slot, job.started = queue, False
        # No done callback (it costs a loop callback per task): the attempt frees its slot in a
        # ``finally``, and stop_attempt() settles an attempt cancelled before it began. No task
        # name either: set_name costs as much as creating the task.
        job.task = self._loop.create_task(self._run(job))

    def _attempt_ended(self, job: Job) -> None:
        job.task = None
        queue, job.slot = job.slot, None
        if queue is not None:
            self.queues.release(queue)

    def stop_attempt(self, job: Job, reason: StopReason) -> None:
        """Cancel a job's attempt for ``reason`` ("cancel" or "shutdown")."""
        task = job.task
        if task is None or task.done():
            return
        job.stop_reason = reason
        task.cancel()
        if not job.started:  # its body will never run: free the slot and settle it here
            self._attempt_ended(job)
            if not job.record.status.finished and job.retry_timer is None:
                self._never_started(job)

    def _never_started(self, job: Job) -> None:
        if job.stop_reason == "shutdown" and self._kept(job, job.record.retries_used):
            return
        status = TaskStatus.CANCELLED if job.stop_reason == "cancel" else TaskStatus.INTERRUPTED
        self._finish(job, status, job.record.retries_used, error="stopped before it started")

    # ---- one attempt -----------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        """One attempt, from its first step to a status; its slot is freed whatever happens.

        One coroutine per attempt on purpose: an extra await layer costs a coroutine per task.
        """
        job.started = True
        record = job.record
        attempt = record.retries_used + 1
        try:
            if record.status is not _RUNNING:
                return
            # Only keyed tasks on a shared backend pay for the reservation's await.
            if (
                record.idempotency_key is not None
                and not job.reserved
                and not await self._reserve(job)
            ):
                return
            sink = AttemptSink(self.hub, record, attempt)
            span = self.tracing.start_attempt(job, attempt) if self.tracing is not None else NO_SPAN
            token = current_sink.set(sink)
            try:
                with span:
                    args, kwargs = job.args, job.kwargs
                    if args is None or kwargs is None:  # encrypted: decrypted here, per attempt
                        args, kwargs = self._decrypted_arguments(job)
                    if self.privacy is not None:
                        self._protect(job, sink, args, kwargs)
                    definition = job.definition
                    kind = definition.executor
                    timeout = job.options.timeout or self.default_timeout
                    if kind == "async" and timeout is None:
                        value = await definition.func(*args, **kwargs)  # nothing to enforce
                    else:
                        value = await self.executors.run(
                            kind,
                            definition.func,
                            args,
                            kwargs,
                            sink=sink,
                            timeout=timeout,
                            trace_carrier=span.carrier() if kind == "process" else None,
                        )
            except Exception as exc:
                self._failed(job, attempt, exc)
            except asyncio.CancelledError:
                self._stopped(job, attempt)
            else:
                if value is not None:  # most tasks return None and keep nothing
                    self.results.keep(record, job.options, value)
                self._finish(job, _SUCCESS, attempt)
            finally:
                current_sink.reset(token)
                span.end(record)
        except asyncio.CancelledError:
            # Cancelled outside the task's own call (e.g. during the key reservation).
            if not record.status.finished and job.retry_timer is None:
                self._never_started(job)
            raise
        except Exception as exc:  # a bug in this loop, not in the task: never leave it RUNNING
            logger.error("task %s: internal error in the attempt loop", job.task_id, exc_info=exc)
            self._fail(job, attempt, exc)
        finally:
            self._attempt_ended(job)

    def _failed(self, job: Job, attempt: int, exc: Exception) -> None:
        """The attempt raised: a retry after the backoff, or FAILED."""
        if isinstance(exc, ArgumentDecryptionError):
            self._fail(job, attempt, exc)  # no key will appear between retries
        elif isinstance(exc, WorkerCrashedError) and exc.shutdown:
            # The pool closed under it: the app is stopping, not the task failing.
            job.stop_reason = "shutdown"
            self._stopped(job, attempt)
        elif self._should_retry(job, exc):
            self._retry_later(job, attempt, exc)
        else:
            self._fail(job, attempt, exc)

    def _protect(
        self, job: Job, sink: AttemptSink, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Learn the values to scrub from this attempt's errors and logs."""
        assert self.privacy is not None
        job.secrets = self.privacy.secrets(job.definition.func, args, kwargs)
        sink.redact = functools.partial(self.privacy.log_fields, job.secrets)

    def _error_fields(self, job: Job, exc: BaseException) -> tuple[str, str | None, bytes | None]:
        """(error, stack trace, sealed error) as stored: redacted, and sealed if configured."""
        if self.privacy is None:
            return _describe(exc), _trace(exc), None
        return self.privacy.error_fields(job.secrets, exc, _describe(exc), _trace(exc))

    async def _reserve(self, job: Job) -> bool:
        """Cross-instance idempotency, once per task: False when another instance holds the key."""
        guard = self._key_guard()
        if job.reserved or guard is None or job.record.idempotency_key is None:
            return True
        holder = await guard.reserve(job.record)
        job.reserved = True
        if holder is None:
            return True
        self._finish(
            job,
            TaskStatus.CANCELLED,
            0,
            error=f"duplicate: idempotency key {job.record.idempotency_key!r} is held "
            f"by task {holder} on another instance",
        )
        return False

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

    def _retry_later(self, job: Job, attempt: int, exc: Exception) -> None:
        """Back to PENDING; resubmitted after the backoff, holding no slot meanwhile."""
        record = job.record
        error, stacktrace, sealed = self._error_fields(job, exc)
        self.store.transition(
            record,
            TaskStatus.PENDING,
            retries_used=record.retries_used + 1,
            error=error,
            stacktrace=stacktrace,
            encrypted_error=sealed,
        )
        self.hub.lifecycle(record, TaskStatus.FAILED, attempt, retrying=True)
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

    def _stopped(self, job: Job, attempt: int) -> None:
        reason = job.stop_reason
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
        if self._keeps is None or record.status.finished or not self._keeps(job):
            return False
        self.store.transition(
            record,
            TaskStatus.PENDING,
            error="interrupted by application shutdown; runs again at the next start",
        )
        self.hub.lifecycle(record, TaskStatus.INTERRUPTED, attempt, retrying=True)
        self.jobs.pop(record.task_id, None)
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
        record = job.record
        if record.status.finished:
            return
        record.encrypted_error = sealed
        self.store.mark_finished(record, status, utcnow(), error, stacktrace)
        if self.hub.observing:
            self.hub.lifecycle(record, status, attempt)
        self.jobs.pop(record.task_id, None)
        if job.reserved and (guard := self._key_guard()) is not None:
            guard.release(record)
        self._on_finished(job)

    # ---- control ---------------------------------------------------------------------------

    def cancel(self, task_id: str, reason: str = "cancelled before it started") -> bool:
        """Cancel a pending or running task. Returns False when it is already finished/unknown.
        ``reason`` is the error of a task that had not started."""
        job = self.jobs.get(task_id)
        if job is None or job.record.status.finished:
            return False
        if job.running:  # its attempt (or stop_attempt, if it never began) records it
            self.stop_attempt(job, "cancel")
        else:
            self.finish_waiting(job, TaskStatus.CANCELLED, reason)
        return True

    def finish_waiting(self, job: Job, status: TaskStatus, reason: str) -> None:
        """End a job that is not running (queued, deferred, or in its backoff wait)."""
        self.withdraw(job)
        job.record.waiting_reason = None
        self._finish(job, status, job.record.retries_used, error=reason)

    def withdraw(self, job: Job) -> None:
        """A job that is not running will not start here: out of its queue and backoff wait."""
        job.cancelled = True
        self.queues.withdraw(job)
        if job.retry_timer is not None:
            job.retry_timer.cancel()
            job.retry_timer = None

    def track(self, job: Job) -> None:
        """Know a job before it is submitted (deferred until the response is sent)."""
        self.jobs[job.record.task_id] = job

    def running_jobs(self) -> list[Job]:
        # list(...) copies in one C call: sync routes may track() jobs from worker threads.
        return [j for j in list(self.jobs.values()) if j.running]

    def waiting_jobs(self) -> list[Job]:
        return [
            j for j in list(self.jobs.values()) if not j.running and not j.record.status.finished
        ]


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _trace(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))
