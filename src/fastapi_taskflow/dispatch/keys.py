"""KeyGuard: idempotency keys across instances that share a backend.

``add_task`` stays synchronous: the in-memory store decides duplicates within this process at
once (atomically, under its lock). Across instances the key is reserved in the backend
asynchronously, just before the task's first attempt. When another instance already holds it,
this task ends CANCELLED without running, its error naming the holder's task id; the caller's
handle therefore resolves (``await handle.wait()``) instead of hanging. When the task ends
failed, cancelled, rejected or interrupted, the reservation is released so the key is free again;
a task that shutdown keeps for the next start is not ended, so it keeps its key (same task id).

A backend error while reserving fails open (the task runs, a warning is logged and counted):
losing work is worse than the rare duplicate during an outage.

:class:`KeyReservations` is the attempt hook (dispatch/hooks.py) that does this for the
dispatcher; the manager gives it only when its backend is shared.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..backends.base import TaskBackend
from ..models import IDEMPOTENCY_BLOCKING, TaskRecord
from .hooks import AttemptHook

if TYPE_CHECKING:
    from .job import Job

logger = logging.getLogger("fastapi_taskflow")


class KeyGuard:
    """Reserves and releases idempotency keys in a shared backend."""

    def __init__(self, backend: TaskBackend, owner: str, ttl: float | None) -> None:
        self.backend = backend
        self.owner = owner
        self.ttl = ttl  # keys expire with their record's retention (None: never)
        self.failures = 0
        self._releases: set[asyncio.Task[None]] = set()

    async def reserve(self, record: TaskRecord) -> str | None:
        """Reserve the record's key; the id of another task holding it, else None."""
        key = record.idempotency_key
        if key is None:
            return None
        try:
            holder = await self.backend.reserve_idempotency_key(key, record.task_id, self.ttl)
        except Exception:
            self.failures += 1
            logger.warning(
                "could not reserve idempotency key %r in %s; running task %s anyway",
                key,
                self.backend.describe(),
                record.task_id,
                exc_info=True,
            )
            return None
        return holder if holder not in (None, record.task_id) else None

    def release(self, record: TaskRecord) -> None:
        """Free the key of a task that ended without success (in the background)."""
        if record.idempotency_key is None or record.status in IDEMPOTENCY_BLOCKING:
            return
        task = asyncio.get_running_loop().create_task(self._release(record))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, record: TaskRecord) -> None:
        assert record.idempotency_key is not None
        try:
            await self.backend.release_idempotency_key(record.idempotency_key, record.task_id)
        except Exception:
            self.failures += 1
            logger.warning(
                "could not release idempotency key %r (it expires with its ttl)",
                record.idempotency_key,
                exc_info=True,
            )

    async def drain(self) -> None:
        """Wait for releases still in flight (before the backend closes; tests)."""
        if self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)


class KeyReservations(AttemptHook):
    """The hook: a keyed task reserves its key before its first attempt here, and frees it
    when it ends without success (not when shutdown keeps it: same task id next start)."""

    def __init__(self, guard: Callable[[], KeyGuard | None]) -> None:
        # The running manager's guard: it exists only between startup and shutdown, so it is
        # asked for, not held.
        self._guard = guard
        # Jobs whose reservation was asked for (or was not needed), until they leave.
        self._reserved: set[Job] = set()

    @property
    def guard(self) -> KeyGuard | None:
        """The guard while the manager runs (None before startup and after shutdown)."""
        return self._guard()

    def admit(self, job: Job) -> Awaitable[str | None] | None:
        if job.record.idempotency_key is None or job in self._reserved:
            return None  # only keyed tasks pay for the reservation's await, and once
        guard = self._guard()
        if guard is None:
            return None
        return self._reserve(guard, job)

    async def _reserve(self, guard: KeyGuard, job: Job) -> str | None:
        holder = await guard.reserve(job.record)
        self._reserved.add(job)
        if holder is None:
            return None
        return (
            f"duplicate: idempotency key {job.record.idempotency_key!r} is held "
            f"by task {holder} on another instance"
        )

    def left(self, job: Job) -> None:
        if job not in self._reserved:
            return
        self._reserved.discard(job)
        guard = self._guard()
        if job.state == "done" and guard is not None:
            guard.release(job.record)
