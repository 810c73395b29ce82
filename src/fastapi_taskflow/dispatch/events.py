"""EventHub: task logs, progress and lifecycle events, delivered to observers off the task's path.

Tasks never wait on observers: events go into a queue that one pump task drains in order.
The queue is bounded (``OBSERVER_QUEUE_SIZE``): when observers fall that far behind, new events
are dropped and counted (``dropped_events``) rather than held without limit or made to block a
task; a warning is logged once each time the queue overflows, and again when it has drained.
Calls from threads (sync and process tasks) are marshalled onto the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ..loggers.chain import ObserverChain
from ..loopref import LoopRef
from ..models import LifecycleEvent, LogEvent, TaskContext, TaskRecord, TaskStatus, utcnow
from ..store import TaskStore

logger = logging.getLogger("fastapi_taskflow")

PROGRESS_INTERVAL = 0.05  # seconds between progress notifications of one task
OBSERVER_QUEUE_SIZE = 10_000  # events waiting for observers before new ones are dropped


class EventHub:
    """Owns the observer queue and the loop hand-off for everything a running task reports."""

    def __init__(
        self,
        store: TaskStore,
        observers: ObserverChain,
        loop_ref: LoopRef,
        max_pending: int = OBSERVER_QUEUE_SIZE,
    ) -> None:
        self.store = store
        self.observers = observers
        self.loop_ref = loop_ref
        self.max_pending = max_pending
        # Events dropped because the queue was full; True while it still has not drained.
        self.dropped_events = 0
        self._overflowing = False
        self._queue: asyncio.Queue[LogEvent | LifecycleEvent | None] | None = None
        self._pump: asyncio.Task[None] | None = None
        # True while observers receive events; callers on the hot path test it before
        # building an event at all.
        self.observing = False

    async def start(self) -> None:
        if self.observers:
            self._queue = asyncio.Queue(self.max_pending)
            await self.observers.startup()
            self._pump = asyncio.create_task(self._deliver(), name="taskflow-observers")
            self.observing = True

    async def stop(self) -> None:
        self.observing = False
        if self._pump is not None and self._queue is not None:
            await self._queue.put(None)  # waits for room: the pump is draining
            await self._pump
            self._pump = None
            await self.observers.close()
        self._queue = None

    async def drain(self) -> None:
        """Return once every event emitted so far has reached the observers."""
        if self._queue is not None:
            await self._queue.join()

    # ---- what tasks report -----------------------------------------------------------------

    def lifecycle(
        self, record: TaskRecord, status: TaskStatus, attempt: int, *, retrying: bool = False
    ) -> None:
        if self._queue is None:  # hot paths test ``observing`` first and skip the call
            return
        self._offer(
            LifecycleEvent(
                task_id=record.task_id,
                func_name=record.func_name,
                status=status,
                timestamp=utcnow(),
                attempt=attempt,
                retries_used=record.retries_used,
                duration=record.duration,
                error=record.error if status is not TaskStatus.SUCCESS else None,
                stacktrace=record.stacktrace if status is TaskStatus.FAILED else None,
                tags=record.tags,
                queue=record.queue,
                retrying=retrying,
            )
        )

    def log(
        self,
        record: TaskRecord,
        context: TaskContext,
        message: str,
        level: str,
        extra: dict[str, Any],
    ) -> None:
        self.loop_ref.call(self._log_on_loop, record, context, message, level, extra)

    def _log_on_loop(
        self,
        record: TaskRecord,
        context: TaskContext,
        message: str,
        level: str,
        extra: dict[str, Any],
    ) -> None:
        now = utcnow()
        record.add_log(f"{now.isoformat()} [{level.upper()}] {message}")
        self.store.touch(record)
        if self._queue is not None:
            self._offer(
                LogEvent(
                    task_id=record.task_id,
                    func_name=record.func_name,
                    message=message,
                    level=level,
                    timestamp=now,
                    attempt=context.attempt,
                    tags=record.tags,
                    extra=dict(extra),
                    queue=record.queue,
                )
            )

    def progress(
        self, record: TaskRecord, fraction: float, message: str | None, last_notified: float
    ) -> float:
        """Record progress at once; notify listeners at most every PROGRESS_INTERVAL (and at
        1.0). Returns when listeners were last notified, for the next call."""
        record.progress = fraction
        if message is not None:
            record.progress_message = message
        now = time.monotonic()
        if fraction >= 1.0 or now - last_notified >= PROGRESS_INTERVAL:
            self.loop_ref.call(self.store.touch, record)
            return now
        return last_notified

    def _offer(self, event: LogEvent | LifecycleEvent) -> None:
        assert self._queue is not None
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped_events += 1
            if not self._overflowing:
                self._overflowing = True
                logger.warning(
                    "observers are %d events behind: dropping new events until they catch up "
                    "(tasks are unaffected)",
                    self.max_pending,
                )

    async def _deliver(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            event = await queue.get()
            try:
                if event is None:
                    return
                if isinstance(event, LogEvent):
                    await self.observers.on_log(event)
                else:
                    await self.observers.on_lifecycle(event)
            finally:
                queue.task_done()
            if self._overflowing and queue.empty():
                self._overflowing = False
                logger.warning(
                    "observers caught up; %d events dropped since start", self.dropped_events
                )
