"""TaskStore: the in-memory tasks of this process, with counters kept as they change.

Metrics never scan: counts per status and per queue, and a duration histogram, are updated on
each transition. Finished history is bounded by ``max_history`` (older records live only in the
backend). Listeners form the change feed the dashboard and ``join()`` use.

Mutations take a lock because sync routes add tasks from FastAPI's worker threads.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from .models import IDEMPOTENCY_BLOCKING, TaskRecord, TaskStatus

logger = logging.getLogger("fastapi_taskflow")

Listener = Callable[[TaskRecord], None]
# Module constants for the hot path: Enum member access is slow on Python 3.11.
_PENDING, _RUNNING = TaskStatus.PENDING, TaskStatus.RUNNING


class DurationHistogram:
    """Log-scale buckets from 1 ms to ~27 h: bounded memory, percentiles within ~12%."""

    _BOUNDS = [0.001 * (1.25**i) for i in range(77)]

    def __init__(self) -> None:
        self.counts = [0] * (len(self._BOUNDS) + 1)
        self.total = 0
        self.sum = 0.0

    def add(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self._BOUNDS, seconds)] += 1
        self.total += 1
        self.sum += seconds

    def percentile(self, fraction: float) -> float | None:
        if self.total == 0:
            return None
        rank = max(1, math.ceil(fraction * self.total))
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return self._BOUNDS[min(index, len(self._BOUNDS) - 1)]
        return self._BOUNDS[-1]

    @property
    def mean(self) -> float:
        return self.sum / self.total if self.total else 0.0


class TaskStore:
    """Records by id, counters, bounded finished history, idempotency keys, change feed."""

    def __init__(self, max_history: int = 10_000) -> None:
        if isinstance(max_history, bool) or not isinstance(max_history, int) or max_history < 0:
            raise ValueError(f"max_history must be an int >= 0, got {max_history!r}")
        self.max_history = max_history
        self._records: dict[str, TaskRecord] = {}
        # Ids of the finished records in memory, oldest finish first (what max_history evicts).
        # A deque, not an ordered dict: 8 bytes per record instead of ~66, for all of history;
        # taking one id out is a scan, which only a delete or a history clear pays.
        self._finished: deque[str] = deque()
        self._counts: dict[TaskStatus, int] = dict.fromkeys(TaskStatus, 0)
        self._queue_counts: dict[str, dict[TaskStatus, int]] = {}
        self._keys: dict[str, str] = {}
        self._dirty: dict[str, TaskRecord] = {}
        self._listeners: list[Listener] = []
        # Futures resolved when the last active (pending or running) record finishes: what
        # join() awaits, each on the loop it was made on (records change from worker threads).
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._lock = threading.RLock()
        self.durations = DurationHistogram()
        self.evicted = 0

    def when_idle(self) -> asyncio.Future[None]:
        """A future (on the running loop) done once no record is pending or running: done at
        once when none is now."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            if self.active == 0:
                waiter.set_result(None)
            else:
                self._idle_waiters = [w for w in self._idle_waiters if not w.done()]
                self._idle_waiters.append(waiter)
        return waiter

    # ---- reading -------------------------------------------------------------------------

    def get(self, task_id: str) -> TaskRecord | None:
        return self._records.get(task_id)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._records

    def newest_first(self) -> Iterator[TaskRecord]:
        """Records from newest to oldest (insertion order follows creation)."""
        with self._lock:
            snapshot = list(reversed(self._records.values()))
        return iter(snapshot)

    def first_newest(self, limit: int, accept: Callable[[TaskRecord], bool]) -> list[TaskRecord]:
        """Up to ``limit`` records that ``accept`` takes, newest first. Walks the records in
        place under the lock and stops at ``limit``: a first page costs O(page), not O(store)."""
        found: list[TaskRecord] = []
        with self._lock:
            for record in reversed(self._records.values()):
                if accept(record):
                    found.append(record)
                    if len(found) >= limit:
                        break
        return found

    def counts(self) -> dict[TaskStatus, int]:
        return dict(self._counts)

    def queue_counts(self, queue: str) -> dict[TaskStatus, int]:
        return dict(self._queue_counts.get(queue) or dict.fromkeys(TaskStatus, 0))

    def queue_names(self) -> list[str]:
        """Queues this store has counted records in."""
        return list(self._queue_counts)

    @property
    def active(self) -> int:
        return self._counts[_PENDING] + self._counts[_RUNNING]

    # ---- writing -------------------------------------------------------------------------

    def add(self, record: TaskRecord) -> None:
        """Insert a new record (any status; loaded history arrives finished)."""
        with self._lock:
            self._insert(record)
        if self._listeners:
            self._notify(record)

    def has_room(self, queue: str, max_size: int | None) -> bool:
        """Fewer than ``max_size`` PENDING tasks in ``queue`` (``None``: no cap). To add only
        if there is room, check under the lock: ``add_if_room``, or in ``add_with_key``'s
        ``make``."""
        if max_size is None:
            return True
        per_queue = self._queue_counts.get(queue)
        return per_queue is None or per_queue[_PENDING] < max_size

    def add_if_room(self, record: TaskRecord, max_size: int | None) -> bool:
        """Add ``record`` only if its queue has room, in one critical section (threads adding
        at once cannot push the queue past ``max_size``); False when nothing was added."""
        with self._lock:
            if max_size is not None and not self.has_room(record.queue, max_size):
                return False
            self._insert(record)
        if self._listeners:
            self._notify(record)
        return True

    def add_with_key(self, key: str, make: Callable[[], TaskRecord]) -> tuple[TaskRecord, bool]:
        """Atomically return the live record holding ``key``, or add ``make()`` under it.

        Returns ``(record, created)``. A key held by a failed, cancelled, rejected or
        interrupted task is free again. ``make`` runs under the lock.
        """
        with self._lock:
            holder_id = self._keys.get(key)
            holder = self._records.get(holder_id) if holder_id else None
            if holder is not None and holder.status in IDEMPOTENCY_BLOCKING:
                return holder, False
            record = make()
            self._keys[key] = record.task_id
            self._insert(record)
        if self._listeners:
            self._notify(record)
        return record, True

    def transition(self, record: TaskRecord, status: TaskStatus, **changes: Any) -> None:
        """Move ``record`` to ``status`` with field changes, keeping every counter right."""
        with self._lock:
            previous = record.status
            self._move(record, status)
            for name, value in changes.items():
                setattr(record, name, value)
            if status.finished and not previous.finished:
                self._on_finished(record)
        if self._listeners:
            self._notify(record)
        self._check_idle()

    # The two transitions every task makes get their own short paths (the per-task hot path).

    # ``now`` is epoch seconds (models.clock): no datetime is built on the task's path.

    def mark_running(self, record: TaskRecord, now: float) -> None:
        with self._lock:
            self._move(record, _RUNNING)
            if record.start_moment is None:
                record.start_moment = now
        if self._listeners:
            self._notify(record)

    def mark_finished(
        self,
        record: TaskRecord,
        status: TaskStatus,
        now: float,
        error: str | None,
        stacktrace: str | None,
    ) -> None:
        with self._lock:
            if record.status.finished:
                return
            self._move(record, status)
            record.end_moment = now
            if record.start_moment is None:
                record.start_moment = now
            record.error = error
            record.stacktrace = stacktrace
            self._on_finished(record)
        if self._listeners:
            self._notify(record)
        self._check_idle()

    def touch(self, record: TaskRecord) -> None:
        """Tell listeners a record changed in place (progress, logs)."""
        self._notify(record)

    def remove(self, task_id: str) -> TaskRecord | None:
        with self._lock:
            record = self._drop(task_id)
            if record is not None and record.status.finished:
                # Absent only if its status was set behind the store's back.
                with contextlib.suppress(ValueError):
                    self._finished.remove(task_id)
        self._check_idle()
        return record

    def clear_finished(self, keep: Callable[[TaskRecord], bool] | None = None) -> list[str]:
        """Drop finished records from memory (``keep`` spares some); returns the ids dropped."""
        with self._lock:
            doomed = [tid for tid in self._finished if keep is None or not keep(self._records[tid])]
            for task_id in doomed:
                self._drop(task_id)
            if doomed:
                gone = set(doomed)
                self._finished = deque(tid for tid in self._finished if tid not in gone)
        self._check_idle()
        return doomed

    def reset_finished_counts(self) -> None:
        """After history was deleted everywhere: finished counters restart from memory."""
        with self._lock:
            for status in TaskStatus:
                if status.finished:
                    self._counts[status] = 0
                    for per_queue in self._queue_counts.values():
                        per_queue[status] = 0
            for task_id in self._finished:
                self._count(self._records[task_id], +1)

    def set_finished_counts(self, counts: dict[str, int]) -> None:
        """Finished counters from an authoritative count (the backend's, after a partial
        history delete); active counters and per-queue counts from memory stay as they are."""
        with self._lock:
            for status in TaskStatus:
                if status.finished:
                    self._counts[status] = int(counts.get(status.value, 0))

    def mark_dirty(self, record: TaskRecord) -> None:
        """Queue a record for the next backend flush."""
        with self._lock:
            self._dirty[record.task_id] = record

    def take_dirty(self) -> list[TaskRecord]:
        """Records changed since the last flush; the flush puts back what it could not write."""
        with self._lock:
            dirty, self._dirty = list(self._dirty.values()), {}
        return dirty

    def dirty_records(self) -> list[TaskRecord]:
        """Records queued for the next flush, left queued."""
        with self._lock:
            return list(self._dirty.values())

    def is_dirty(self, task_id: str) -> bool:
        return task_id in self._dirty

    def forget_dirty(self, task_id: str) -> None:
        """Not to be written after all (it was deleted on purpose)."""
        with self._lock:
            self._dirty.pop(task_id, None)

    def drop_oldest_dirty(self, count: int) -> int:
        """Forget the ``count`` oldest queued writes (the buffer is full); returns how many."""
        with self._lock:
            doomed = list(itertools.islice(self._dirty, count))
            for task_id in doomed:
                del self._dirty[task_id]
        return len(doomed)

    @property
    def dirty_count(self) -> int:
        return len(self._dirty)

    # ---- change feed -----------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(record)`` on each change, from the thread that made it. Keep it cheap."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # ---- internals -------------------------------------------------------------------------

    def _insert(self, record: TaskRecord) -> None:  # under the lock
        self._records[record.task_id] = record
        self._count(record, +1)
        if record.status.finished:
            self._finished.append(record.task_id)
            self._evict()

    def _drop(self, task_id: str) -> TaskRecord | None:  # under the lock
        """Forget a record everywhere but in the finished order (the caller sees to that)."""
        record = self._records.pop(task_id, None)
        if record is None:
            return None
        self._count(record, -1)
        self._dirty.pop(task_id, None)
        if record.idempotency_key and self._keys.get(record.idempotency_key) == task_id:
            del self._keys[record.idempotency_key]
        return record

    def _check_idle(self) -> None:
        if not self._idle_waiters:
            return
        with self._lock:
            if self.active != 0:
                return
            waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            loop = waiter.get_loop()
            if not loop.is_closed():
                loop.call_soon_threadsafe(_wake, waiter)

    def _notify(self, record: TaskRecord) -> None:
        for listener in self._listeners:
            try:
                listener(record)
            except Exception:
                logger.error("task store listener failed", exc_info=True)

    def _move(self, record: TaskRecord, status: TaskStatus) -> None:
        old = record.status
        if old is status:
            return
        counts = self._counts
        counts[old] -= 1
        counts[status] += 1
        per_queue = self._queue_counts[record.queue]
        per_queue[old] -= 1
        per_queue[status] += 1
        record.status = status

    def _count(self, record: TaskRecord, delta: int) -> None:
        self._counts[record.status] += delta
        per_queue = self._queue_counts.get(record.queue)
        if per_queue is None:
            per_queue = self._queue_counts[record.queue] = dict.fromkeys(TaskStatus, 0)
        per_queue[record.status] += delta

    def _on_finished(self, record: TaskRecord) -> None:
        # Called once per record: a finished task never becomes active again (a retry is a
        # new task), so its id enters the finished order once.
        self._finished.append(record.task_id)
        start, end = record.start_moment, record.end_moment
        if isinstance(start, float) and isinstance(end, float):
            # Epoch seconds from the task's own run: their plain difference is precise enough
            # for a log-scale bucket, and cheaper than ``duration`` (to the microsecond).
            self.durations.add(end - start)
        elif (duration := record.duration) is not None:
            self.durations.add(duration)
        key = record.idempotency_key
        if (
            key
            and record.status not in IDEMPOTENCY_BLOCKING
            and self._keys.get(key) == record.task_id
        ):
            del self._keys[key]
        self._evict()

    def _evict(self) -> None:
        while len(self._finished) > self.max_history:
            task_id = self._finished.popleft()
            record = self._records.pop(task_id, None)
            if record is not None:
                # Counters keep describing all known history; only the record leaves memory.
                self.evicted += 1
                if record.idempotency_key and self._keys.get(record.idempotency_key) == task_id:
                    del self._keys[record.idempotency_key]


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
