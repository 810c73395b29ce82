"""Job: one task on its way through a queue, with what its attempts need."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..models import StopReason, TaskRecord
from ..ratelimit import RateLimit
from ..registry import TaskDefinition, TaskOptions

if TYPE_CHECKING:
    from .queues import QueueState


@dataclass(eq=False, slots=True)
class Job:
    """A task record plus its function, options and (unless encrypted) clear arguments."""

    record: TaskRecord
    definition: TaskDefinition
    options: TaskOptions
    args: tuple[Any, ...] | None
    kwargs: dict[str, Any] | None
    journaled: bool = False
    # Runs again after a restart (requeue_pending, or requeue_on_interrupt on the task).
    requeue: bool = False
    # Set when a waiting job is cancelled; the queue skips it instead of searching the heap.
    cancelled: bool = False
    # The queue whose heap holds it, while it waits there (see ``QueueSet.withdraw``).
    waiting_in: QueueState | None = None
    # Why the running attempt's asyncio task was cancelled.
    stop_reason: StopReason | None = None
    task: asyncio.Task[None] | None = None
    # The queue whose slot the current attempt holds, and whether its coroutine has begun (an
    # asyncio task cancelled before its first step never runs its body, not even ``finally``).
    slot: QueueState | None = None
    started: bool = False
    retry_timer: asyncio.TimerHandle | None = None
    # The cross-instance idempotency reservation was made (or was not needed).
    reserved: bool = False
    # Values of redacted arguments, scrubbed from errors and logs (redaction on only).
    secrets: tuple[str, ...] = ()
    # Rate limits (key, limit) this submission passes before its queue, and how many it has.
    rate_limits: tuple[tuple[str, RateLimit], ...] = ()
    rate_step: int = 0

    @property
    def running(self) -> bool:
        """An attempt is started and not over (it may not have reached its first await yet)."""
        return self.task is not None and not self.task.done()

    @property
    def survives_shutdown(self) -> bool:
        """Kept in the journal at a clean shutdown, to run again at the next start."""
        return self.journaled and self.requeue

    @property
    def task_id(self) -> str:
        return self.record.task_id
