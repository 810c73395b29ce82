"""Enqueuer: the single path that turns ``add_task(func, ...)`` into a tracked, queued task.

Requests, scripts, retries from the API, schedules and requeues all come through ``enqueue``,
so validation, idempotency, backpressure, encryption and journaling are written once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..backends.base import JournalEntry
from ..crypto import ArgumentCipher
from ..errors import QueueFullError
from ..ids import new_task_id
from ..models import EMPTY, TaskRecord, TaskSource, TaskStatus, clock
from ..registry import TaskDefinition, TaskOptions
from ..serialization import encode_call, record_call
from ..store import TaskStore
from ..validation import check_call_options
from .attempts import Dispatcher
from .job import Job

if TYPE_CHECKING:
    from ..persistence import Persister
    from ..tracing import Tracing

Submit = Callable[[Job], None]
_REJECTED = TaskStatus.REJECTED  # a module constant: Enum member access is slow on 3.11


def merge_task_kwargs(kwargs: dict[str, Any], task_kwargs: Any) -> dict[str, Any]:
    """The function's keyword arguments: ``**kwargs`` plus the ``task_kwargs=`` escape.

    ``task_kwargs`` carries names that ``add_task`` itself would take (``priority``, ``queue``,
    ``tags``, even ``task_kwargs``), so no parameter name of a task is unusable.
    """
    if task_kwargs is None:
        return kwargs
    if not isinstance(task_kwargs, dict) or not all(isinstance(k, str) for k in task_kwargs):
        raise ValueError(f"task_kwargs must be a dict with str keys, got {task_kwargs!r}")
    both = sorted(set(kwargs) & set(task_kwargs))
    if both:
        raise TypeError(
            f"keyword argument(s) {', '.join(both)} given both directly and in task_kwargs"
        )
    return {**kwargs, **task_kwargs}


class Enqueuer:
    """Builds records and jobs, applies the rules, and hands jobs to the dispatcher."""

    def __init__(
        self,
        *,
        store: TaskStore,
        dispatcher: Dispatcher,
        cipher: ArgumentCipher | None,
        requeue_pending: bool,
        check_arguments: Callable[[str, Callable[..., Any], tuple[Any, ...], dict[str, Any]], None],
        persister: Callable[[], Persister | None] = lambda: None,
        tracing: Tracing | None = None,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.cipher = cipher
        self.requeue_pending = requeue_pending
        self.check_arguments = check_arguments
        # The running manager's journal writer with a backend: it exists only between startup
        # and shutdown, so it is asked for once per enqueue, not held.
        self._persister = persister
        # When tracing is on (see tracing.py): the enqueuer's context is the task's parent.
        self.tracing = tracing

    def enqueue(
        self,
        definition: TaskDefinition,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        submit: Submit,
        idempotency_key: str | None = None,
        tags: dict[str, str] | None = None,
        priority: int | None = None,
        queue: str | None = None,
        source: TaskSource = "manual",
        options: TaskOptions | None = None,
        task_id: str | None = None,
    ) -> tuple[TaskRecord, bool]:
        """Create (or find, by idempotency key) the task; returns ``(record, created)``."""
        opts = options or definition.options
        if idempotency_key is None and priority is None and queue is None and tags is None:
            clean_tags: dict[str, str] = EMPTY  # the usual call: nothing to check
        else:
            clean_tags = check_call_options(
                idempotency_key=idempotency_key, priority=priority, queue=queue, tags=tags
            )
        if definition.executor == "process":
            self.check_arguments(definition.executor, definition.func, args, kwargs)
        journal = self._persister()
        if journal is not None and not self._journals(definition, opts):
            journal = None
        if journal is not None:
            journal.admit()  # before any record exists: a refusal leaves nothing behind
        queue_state = self.dispatcher.queues.resolve(queue or opts.queue)
        max_size = queue_state.config.max_size
        record = self._record(
            definition,
            args,
            kwargs,
            opts,
            queue_state.name,
            clean_tags,
            priority,
            idempotency_key,
            source,
            task_id,
        )
        # Backpressure: the room check and the insert are one step under the store's lock, so
        # sync routes adding from many threads at once cannot overshoot max_size.
        if idempotency_key is None:
            created = True
            if not self.store.add_if_room(record, max_size):
                _mark_rejected(record, max_size)
                self.store.add(record)
        else:

            def if_room() -> TaskRecord:  # runs under the store's lock
                if not self.store.has_room(record.queue, max_size):
                    _mark_rejected(record, max_size)
                return record

            record, created = self.store.add_with_key(idempotency_key, if_room)
        if created and record.status is _REJECTED:
            # Kept as REJECTED (and saved) so the refusal shows; the caller gets the error.
            assert max_size is not None
            self.store.mark_dirty(record)
            raise QueueFullError(record.queue, max_size, record.task_id)
        if created:
            job = self._job(record, definition, opts, journal)
            self.dispatcher.track(job)
            submit(job)
        return record, created

    def _record(
        self,
        definition: TaskDefinition,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        opts: TaskOptions,
        queue: str,
        tags: dict[str, str],
        priority: int | None,
        idempotency_key: str | None,
        source: TaskSource,
        task_id: str | None,
    ) -> TaskRecord:
        encrypted = (
            self.cipher.encrypt(encode_call(args, kwargs)) if self.cipher is not None else None
        )
        return TaskRecord(
            task_id=task_id or new_task_id(),
            func_name=definition.name,
            # The call's own tuple and dict (fresh from *args/**kwargs): never mutated, not copied.
            args=() if encrypted else args,
            kwargs=EMPTY if encrypted else kwargs,
            created_at=clock(),
            idempotency_key=idempotency_key,
            tags=tags,
            source=source,
            priority=priority if priority is not None else opts.priority,
            executor=definition.executor,
            queue=queue,
            encrypted_payload=encrypted,
            # A scheduled firing starts its own trace, whatever context the scheduler runs in.
            trace_context=(
                self.tracing.capture()
                if self.tracing is not None and source != "scheduled"
                else None
            ),
        )

    def _journals(self, definition: TaskDefinition, opts: TaskOptions) -> bool:
        """Whether a task of ``definition`` is journaled (given a persister)."""
        requeue = self.requeue_pending or opts.requeue_on_interrupt
        return definition.registered and (requeue or opts.persist)

    def _job(
        self,
        record: TaskRecord,
        definition: TaskDefinition,
        opts: TaskOptions,
        journal: Persister | None,
    ) -> Job:
        encrypted = record.encrypted_payload is not None
        job = Job(
            record=record,
            definition=definition,
            options=opts,
            # Encrypted arguments are decrypted inside the attempt, never kept in clear here.
            args=None if encrypted else record.args,
            kwargs=None if encrypted else record.kwargs,
            hub=self.dispatcher.hub,
        )
        # Decided once, here: the journal entry and shutdown (manager) both read job.requeue.
        job.requeue = self.requeue_pending or opts.requeue_on_interrupt
        if journal is not None:  # the task is journaled (see _journals)
            job.journaled = True
            journal.journal(journal_entry(record, job.requeue))
        return job


def journal_entry(record: TaskRecord, requeue: bool) -> JournalEntry:
    # Clear arguments are the record's own (encrypted ones are its sealed payload).
    payload = record.encrypted_payload or record_call(record)
    return JournalEntry(
        task_id=record.task_id,
        func_name=record.func_name,
        payload=payload,
        encrypted=record.encrypted_payload is not None,
        created_at=record.created_at,
        tags=record.tags,
        priority=record.priority,
        queue=record.queue,
        idempotency_key=record.idempotency_key,
        source=record.source,
        retries_used=record.retries_used,
        requeue_count=record.requeue_count,
        requeue=requeue,
        trace_context=record.trace_context,
    )


def _mark_rejected(record: TaskRecord, max_size: int | None) -> None:
    record.status = TaskStatus.REJECTED
    record.end_moment = clock()
    record.error = f"queue {record.queue!r} is full ({max_size} waiting)"
