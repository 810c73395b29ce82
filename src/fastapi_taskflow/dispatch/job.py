"""Job: one task on its way through the dispatcher, its state, and the sink of its attempts.

A job is in exactly one state; :meth:`Job.move` is the only way to change it, and it refuses
a move the table below does not have (:class:`~fastapi_taskflow.errors.IllegalTransitionError`).
The usual path, with the optional steps in brackets::

    held ──> [rate_waiting] ──> [queued] ──> starting ──> running ──> done
                  ^                                         │
                  └─────────────── backoff <────────────────┘  (a retry)

    held, backoff       -> rate_waiting | queued | starting   submitted: its limits, then a slot
    rate_waiting        -> queued | starting                  through its last rate gate
    queued              -> starting                           a slot is free
    starting            -> running                            its coroutine takes its first step
    running             -> backoff | stopping | done          retry later, asked to stop, ended
    stopping            -> done | kept                        its coroutine ended
    any waiting state   -> done | kept                        cancelled, refused, or shutdown
    starting            -> done | kept                        stopped before its first step

* ``held``: known, not yet submitted (its request's response is not sent yet, or the manager
  has not started).
* ``rate_waiting``: in a rate gate (dispatch/rates.py), holding no queue slot.
* ``queued``: in its queue's heap, waiting for a slot.
* ``starting``: holds a slot; its attempt's asyncio task exists but has not taken its first
  step (cancelled now, that task never runs its body, not even ``finally``).
* ``running``: the attempt's coroutine runs.
* ``backoff``: between attempts; a timer submits it again.
* ``stopping``: a running attempt was asked to stop (``stop_reason``: a cancel or shutdown).
* ``done``: ended with a final status (the record's status says which).
* ``kept``: shutdown left it PENDING for the next start (its journal entry stays).

Waiting states are held, rate_waiting, queued and backoff (the record is PENDING, as it is when
kept); starting, running and stopping hold a slot (the record is RUNNING). The record's status
is what users see; the state is where the job is in this dispatcher and what may come next.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..errors import IllegalTransitionError
from ..models import StopReason, TaskContext, TaskRecord
from ..ratelimit import RateLimit
from ..registry import TaskDefinition, TaskOptions

if TYPE_CHECKING:
    from collections.abc import Callable

    from .events import EventHub
    from .queues import QueueState

JobState = Literal[
    "held", "rate_waiting", "queued", "starting", "running", "backoff", "stopping", "done", "kept"
]

# Strings, not an Enum: a move looks its state up on every task, and a str hashes in C.
_NEXT: dict[str, frozenset[str]] = {
    "held": frozenset({"rate_waiting", "queued", "starting", "done", "kept"}),
    "rate_waiting": frozenset({"queued", "starting", "done", "kept"}),
    "queued": frozenset({"starting", "done", "kept"}),
    "starting": frozenset({"running", "done", "kept"}),
    "running": frozenset({"backoff", "stopping", "done"}),
    "backoff": frozenset({"rate_waiting", "queued", "starting", "done", "kept"}),
    "stopping": frozenset({"done", "kept"}),
    "done": frozenset(),
    "kept": frozenset(),
}
#: An attempt holds a slot (its asyncio task may not have begun yet).
ATTEMPTING: frozenset[str] = frozenset({"starting", "running", "stopping"})
#: Not started and not over: it may still start here.
WAITING: frozenset[str] = frozenset({"held", "rate_waiting", "queued", "backoff"})
#: Gone from the dispatcher: ended, or kept for the next start.
OVER: frozenset[str] = frozenset({"done", "kept"})


@dataclass(eq=False, slots=True)
class Job:
    """A task record plus its function, options and (unless encrypted) clear arguments.

    It is also the :class:`~fastapi_taskflow.context.TaskSink` of its attempts (what
    ``task_log``/``set_progress`` call inside the task): one object per task, not one more
    per attempt.
    """

    record: TaskRecord
    definition: TaskDefinition
    options: TaskOptions
    args: tuple[Any, ...] | None
    kwargs: dict[str, Any] | None
    hub: EventHub
    journaled: bool = False
    # Runs again after a restart (requeue_pending, or requeue_on_interrupt on the task).
    requeue: bool = False
    state: JobState = "held"
    # The queue whose heap holds it (queued), or whose slot its attempt holds (starting,
    # running, stopping).
    queue: QueueState | None = None
    # Why a stopping attempt was asked to stop.
    stop_reason: StopReason | None = None
    task: asyncio.Task[None] | None = None
    retry_timer: asyncio.TimerHandle | None = None
    # Rate limits (key, limit) this submission passes before its queue, and how many it has.
    rate_limits: tuple[tuple[str, RateLimit], ...] = ()
    rate_step: int = 0
    # The current (or last) attempt, from 1, and what the task sees of it.
    attempt: int = 0
    _context: TaskContext | None = None
    _last_progress: float = 0.0
    # (message, extra) -> (message, extra) as kept and shown; set by a hook (redaction).
    log_filter: Callable[[str, dict[str, Any]], tuple[str, dict[str, Any]]] | None = None

    def move(self, to: JobState) -> None:
        """Change state; a move the diagram (module docstring) does not have is refused."""
        if to not in _NEXT[self.state]:
            raise IllegalTransitionError(self.record.task_id, self.state, to)
        self.state = to

    @property
    def running(self) -> bool:
        """An attempt is started and not over (it may not have reached its first await yet)."""
        return self.state in ATTEMPTING

    @property
    def survives_shutdown(self) -> bool:
        """Kept in the journal at a clean shutdown, to run again at the next start."""
        return self.journaled and self.requeue

    @property
    def task_id(self) -> str:
        return self.record.task_id

    # ---- the sink of the current attempt ---------------------------------------------------

    @property
    def context(self) -> TaskContext:
        # Built on first use: most tasks never ask for their context.
        context = self._context
        if context is None or context.attempt != self.attempt:
            record = self.record
            context = TaskContext(record.task_id, record.func_name, self.attempt, record.tags)
            self._context = context
        return context

    def log(self, message: str, level: str, extra: dict[str, Any]) -> None:
        if self.log_filter is not None:
            message, extra = self.log_filter(message, extra)
        self.hub.log(self.record, self.context, message, level, extra)

    def progress(self, fraction: float, message: str | None) -> None:
        if self.log_filter is not None and message:
            # Filtered like a log message: it is stored and shown in the list and streams.
            message = self.log_filter(message, {})[0]
        self._last_progress = self.hub.progress(self.record, fraction, message, self._last_progress)
