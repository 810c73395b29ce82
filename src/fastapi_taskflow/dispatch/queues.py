"""Named queues: priority order, per-queue and global concurrency caps, live resizing.

No worker loops: a queue starts jobs while it has room and is pumped again whenever a job
finishes or its cap changes. Shrinking a busy queue therefore never deadlocks (running jobs
finish, nothing new starts until under the cap) and growing admits at once.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..models import QueueConfig

logger = logging.getLogger("fastapi_taskflow")

DEFAULT_QUEUE = "default"


@dataclass(eq=False)
class QueueState:
    """One named queue: waiting jobs by priority (higher first, FIFO among equals)."""

    name: str
    config: QueueConfig
    waiting: list[tuple[int, int, Any]] = field(default_factory=list)
    # Jobs in ``waiting`` that will start: withdrawn ones stay in the heap until popped.
    waiting_count: int = 0
    running: int = 0
    started: int = 0
    rejected: int = 0

    def has_room(self) -> bool:
        cap = self.config.concurrency
        return cap is None or self.running < cap


class QueueSet:
    """All queues of a manager plus the global ``max_concurrent_tasks`` cap."""

    def __init__(
        self,
        configs: dict[str, QueueConfig] | None,
        *,
        global_limit: int | None,
        start: Callable[[Any, QueueState], None],
    ) -> None:
        configs = dict(configs or {})
        configs.setdefault(DEFAULT_QUEUE, QueueConfig())
        self._queues = {name: QueueState(name, cfg) for name, cfg in configs.items()}
        self.global_limit = global_limit
        self.global_running = 0
        self.unknown_queue_fallbacks = 0
        self._warned: set[str] = set()
        self._start = start
        self._sequence = itertools.count()

    def resolve(self, name: str | None) -> QueueState:
        """The queue called ``name``; an unknown name falls back to default, counted and logged."""
        if name is None:
            return self._queues[DEFAULT_QUEUE]
        queue = self._queues.get(name)
        if queue is None:
            # Counted every time, logged once per name: a hot path must not flood the log.
            self.unknown_queue_fallbacks += 1
            if name not in self._warned and len(self._warned) < 1000:
                self._warned.add(name)
                logger.warning("unknown queue %r; its tasks go to the default queue", name)
            return self._queues[DEFAULT_QUEUE]
        return queue

    def __iter__(self) -> Iterator[QueueState]:
        return iter(self._queues.values())

    def get(self, name: str) -> QueueState | None:
        return self._queues.get(name)

    def push(self, queue: QueueState, job: Any, priority: int | None) -> None:
        cap, limit = queue.config.concurrency, self.global_limit
        if (
            not queue.waiting
            and (cap is None or queue.running < cap)
            and (limit is None or self.global_running < limit)
        ):
            # Nobody waits and there is room: start it without a trip through the heap.
            self._admit(job, queue)
            return
        # heapq is a min-heap: negate so higher priority comes out first.
        job.move("queued")
        job.queue = queue
        heapq.heappush(queue.waiting, (-(priority or 0), next(self._sequence), job))
        queue.waiting_count += 1
        self.pump(queue)

    def pump(self, queue: QueueState) -> None:
        while queue.waiting and queue.has_room() and self._global_room():
            _, _, job = heapq.heappop(queue.waiting)
            if job.state != "queued":
                continue  # withdrawn (and uncounted) while it waited
            queue.waiting_count -= 1
            job.queue = None
            self._admit(job, queue)

    def _admit(self, job: Any, queue: QueueState) -> None:
        queue.running += 1
        queue.started += 1
        self.global_running += 1
        self._start(job, queue)

    def withdraw(self, job: Any) -> None:
        """A queued job will not start (cancelled, or kept at shutdown): stop counting it as
        waiting. It stays in its heap (no search) and is skipped when popped, its state moved on.
        """
        queue = job.queue
        if queue is not None:
            job.queue = None
            queue.waiting_count -= 1

    def pump_all(self) -> None:
        for queue in self._queues.values():
            self.pump(queue)

    def release(self, queue: QueueState) -> None:
        """A job of ``queue`` ended: free its slots and admit what now fits."""
        queue.running -= 1
        self.global_running -= 1
        if self.global_limit is not None:
            self.pump_all()
        elif queue.waiting:  # the usual case has nobody waiting: no call
            self.pump(queue)

    def _global_room(self) -> bool:
        return self.global_limit is None or self.global_running < self.global_limit

    def reconfigure(
        self, name: str, *, concurrency: int | object | None, max_size: int | object | None
    ) -> QueueConfig:
        """Change a queue's caps live. Validates first: on bad input nothing changes."""
        queue = self._queues.get(name)
        if queue is None:
            raise KeyError(name)
        new = QueueConfig(
            concurrency=queue.config.concurrency if concurrency is _UNSET else concurrency,  # type: ignore[arg-type]
            max_size=queue.config.max_size if max_size is _UNSET else max_size,  # type: ignore[arg-type]
            rate_limit=queue.config.rate_limit,
        )
        queue.config = new
        self.pump(queue)
        return new

    def waiting_count(self) -> int:
        return sum(q.waiting_count for q in self._queues.values())


_UNSET: Any = object()
UNSET = _UNSET
