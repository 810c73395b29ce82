"""Recovery: journal entries no live instance owns become running tasks again, or final records.

An entry is claimed at startup (this instance's own, released at its last clean shutdown, or a
crashed run's) and, while the app runs, from instances whose lease expired. Each one is resumed
with its original id, arguments and options, or settled with the reason it cannot run:

* unknown task name or unreadable arguments: FAILED (counted in ``problems``);
* journaled without requeue: INTERRUPTED;
* interrupted while running more than ``max_requeues`` times: FAILED.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .backends.base import JournalEntry
from .crypto import ArgumentCipher
from .dispatch.attempts import Dispatcher
from .dispatch.job import Job
from .errors import ArgumentDecryptionError
from .models import TaskRecord, TaskStatus, utcnow
from .persistence import Persister
from .registry import TaskDefinition, TaskRegistry
from .serialization import decode_call
from .store import TaskStore

if TYPE_CHECKING:
    from .settings import DurabilitySettings

logger = logging.getLogger("fastapi_taskflow")

Call = tuple[tuple[Any, ...] | None, dict[str, Any] | None]


class Recovery:
    """Resumes or settles claimed journal entries for one manager."""

    def __init__(
        self,
        *,
        registry: TaskRegistry,
        store: TaskStore,
        persister: Persister,
        dispatcher: Dispatcher,
        cipher: ArgumentCipher | None,
        settings: DurabilitySettings,
        submit: Callable[[Job], None],
    ) -> None:
        self.registry = registry
        self.store = store
        self.persister = persister
        self.dispatcher = dispatcher
        self.cipher = cipher
        self.max_requeues = settings.max_requeues
        self.submit = submit
        self.problems = 0

    def recover_all(self, entries: list[JournalEntry]) -> None:
        for entry in entries:
            try:
                self.recover(entry)
            except Exception:
                self.problems += 1
                logger.error("could not recover journaled task %s", entry.task_id, exc_info=True)

    def recover(self, entry: JournalEntry) -> None:
        """Run ``entry`` again, or record why not."""
        self.store.remove(entry.task_id)  # its record from this manager's previous run, if any
        definition = self.registry.find(entry.func_name)
        record = recovered_record(entry, definition)
        problem, (args, kwargs) = self._problem(entry, definition)
        if problem is not None:
            self.problems += 1
            logger.warning(
                "skipping journaled task %s (%s): %s", entry.task_id, entry.func_name, problem
            )
            self._give_up(entry, record, TaskStatus.FAILED, problem)
        elif not entry.requeue:
            reason = "interrupted: the app stopped before the task finished"
            self._give_up(entry, record, TaskStatus.INTERRUPTED, reason)
        elif entry.requeue_count > self.max_requeues:
            reason = (
                f"interrupted {entry.requeue_count} times while running "
                f"(max_requeues={self.max_requeues}); giving up"
            )
            self._give_up(entry, record, TaskStatus.FAILED, reason)
        else:
            assert definition is not None
            self._resume(entry, record, definition, args, kwargs)

    def _problem(
        self, entry: JournalEntry, definition: TaskDefinition | None
    ) -> tuple[str | None, Call]:
        """Why an entry cannot run here (unknown task, unreadable arguments), else its call."""
        if definition is None:
            return f"{self.registry.why_unknown(entry.func_name)} in this app", (None, None)
        try:
            if not entry.encrypted:
                return None, decode_call(entry.payload)
            if self.cipher is None:
                return "encrypted arguments but no encrypt_args_key configured", (None, None)
            self.cipher.decrypt(entry.payload)  # fail now, not at every attempt
        except (ValueError, ArgumentDecryptionError) as exc:
            return f"unreadable arguments: {exc}", (None, None)
        return None, (None, None)

    def _give_up(
        self, entry: JournalEntry, record: TaskRecord, status: TaskStatus, reason: str
    ) -> None:
        record.status, record.error, record.end_time = status, reason, utcnow()
        self.store.add(record)
        self.persister.adopt(entry)
        self.persister.finished(record, journaled=True)
        logger.warning("journaled task %s not run again: %s", entry.task_id, reason)

    def _resume(
        self,
        entry: JournalEntry,
        record: TaskRecord,
        definition: TaskDefinition,
        args: tuple[Any, ...] | None,
        kwargs: dict[str, Any] | None,
    ) -> None:
        record.args, record.kwargs = args or (), kwargs or {}
        key = entry.idempotency_key
        if key is not None:
            holder, created = self.store.add_with_key(key, lambda: record)
            if not created:  # a live task took the key first: this copy must not run too
                record.idempotency_key = None
                reason = f"duplicate: idempotency key {key!r} is held by task {holder.task_id}"
                self._give_up(entry, record, TaskStatus.CANCELLED, reason)
                return
        else:
            self.store.add(record)
        self.persister.adopt(entry)
        job = Job(
            record,
            definition,
            definition.options,
            args,
            kwargs,
            self.dispatcher.hub,
            journaled=True,
            requeue=True,
        )
        self.dispatcher.track(job)
        self.submit(job)


def recovered_record(entry: JournalEntry, definition: TaskDefinition | None) -> TaskRecord:
    """The record of a claimed journal entry, before it runs again (or is given up)."""
    return TaskRecord(
        task_id=entry.task_id,
        func_name=entry.func_name,
        created_at=entry.created_at,
        tags=entry.tags,
        priority=entry.priority,
        queue=entry.queue,
        idempotency_key=entry.idempotency_key,
        source=entry.source if entry.source in ("retry", "replay") else "requeue",
        retries_used=entry.retries_used,
        requeue_count=entry.requeue_count,
        executor=definition.executor if definition else "async",
        encrypted_payload=entry.payload if entry.encrypted else None,
        trace_context=entry.trace_context,
    )
