"""Persister: everything between the in-memory store and a backend.

* The journal: tasks that must survive the process are written at enqueue and removed when they
  finish. Every journal change made during one loop tick goes out in one batch (group commit):
  the writer task wakes at the end of the tick. ``wait_written`` lets a caller (the response
  barrier) wait until what it journaled is committed.
* Start marks: when a requeueable task starts, its entry is rewritten with ``requeue_count + 1``
  (in the same batch when it starts at once), so a crash mid-run counts one attempt and a
  poison task stops after ``max_requeues`` instead of crashing every restart. Each retry's
  start writes ``retries_used`` too, so the retry budget survives any number of requeues.
* Live records: every change of a task (added PENDING, RUNNING, progress, finished) joins the
  same per-tick batch, coalesced per task, so its row in the backend follows it within a tick
  or two and every instance sees it. Pending rows are written before the batch's journal
  writes count as committed, so a response the barrier let go has a visible task behind it.
* History: records changed outside the task lifecycle (``mark_dirty``) are written in batches,
  at most ``snapshot_interval`` later, and at shutdown.
* The lease: this instance renews its owner lease every ``heartbeat_interval`` and then claims
  journal entries whose owner's lease expired (a dead instance) or that were released (a clean
  shutdown); ``on_claim`` runs them again or records why not.
* Outages and slow backends: a failed write is retried with backoff; what waits is kept in a
  buffer bounded by ``max_buffered`` (``buffered_writes``, batches being written included):
  past it the oldest history writes are dropped and, with ``journal_backpressure``, new
  journaled tasks refused (``WriteBufferFullError``), each counted and warned about once per
  episode. When the
  backend answers again the buffer drains and the journal entries of active tasks are written
  again (a Redis restarted without persistence lost them).
* Nothing here is ever cancelled in the middle of a backend call: ``stop()`` signals the loops
  and waits for them, so a SQLite transaction is never left open.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .backends.base import JournalEntry, TaskBackend
from .errors import WriteBufferFullError
from .journal_writes import Commit, note_journal_write
from .loopref import LoopRef
from .models import TaskRecord
from .store import TaskStore

if TYPE_CHECKING:
    from .settings import DurabilitySettings

logger = logging.getLogger("fastapi_taskflow.persistence")

ClaimHandler = Callable[[list[JournalEntry]], None]
CLAIM_BATCH = 500
HISTORY_CHUNK = 5000
# Seconds shutdown's last flush waits for a slow backend before what is left is reported lost.
FLUSH_TIMEOUT = 10.0


@dataclass(slots=True)
class PersistStats:
    """Counters for ``manager.metrics()``."""

    write_failures: int = 0
    dropped_writes: int = 0
    lease_failures: int = 0
    claimed: int = 0
    barrier_timeouts: int = 0  # responses turned into 503s: their commit was too slow
    lease_expirations: int = 0  # times no renewal was confirmed within lease_ttl
    refused_tasks: int = 0  # journaled tasks refused: the journal buffer was full


@dataclass(slots=True)
class _Pending:
    puts: dict[str, JournalEntry] = field(default_factory=dict)
    removes: set[str] = field(default_factory=set)
    records: dict[str, TaskRecord] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.puts or self.removes or self.records)

    def __len__(self) -> int:
        return len(self.puts) + len(self.removes) + len(self.records)


class Persister:
    """Journal, history batches, lease heartbeat, periodic claims and retention."""

    def __init__(
        self,
        backend: TaskBackend,
        store: TaskStore,
        owner: str,
        settings: DurabilitySettings,
        loop_ref: LoopRef,
        on_claim: ClaimHandler | None = None,
    ) -> None:
        self.backend = backend
        self._loop_ref = loop_ref
        self.store = store
        self.owner = owner
        self.settings = settings
        self.on_claim = on_claim
        self.stats = PersistStats()
        self._lock = threading.Lock()  # sync routes journal from worker threads
        self._urgent = _Pending()
        self._active: dict[str, JournalEntry] = {}  # journaled tasks not finished yet
        self._unmarked: set[str] = set()  # requeueable entries whose start is not marked
        self._sent: set[str] = set()  # entries handed to the backend at least once
        self._seq = 0  # journal changes requested
        self._written = 0  # journal changes known committed
        self._waiters: list[tuple[int, asyncio.Future[bool]]] = []
        self._flush_lock = asyncio.Lock()
        self._wake: asyncio.Event | None = None
        self._history_due: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._claiming = True
        self._healthy = True
        self._full_warned = False
        self._refusal_warned = False
        # Writes handed to the backend and not yet committed: they count against the bound too.
        self._journal_in_flight = 0
        self._history_in_flight = 0
        self._lease_until = 0.0  # monotonic time the last confirmed renewal lasts until
        self._lease_failing = False
        self._writing: dict[str, TaskRecord] = {}  # records of the batch in flight
        # Ids in the urgent batch's records that are history (finished, never journaled): the
        # writes the bound may drop, oldest first.
        self._history: dict[str, None] = {}
        self._lapse_reported = False

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Take the lease, seed counters, claim orphans, then start the background loops."""
        self._wake, self._history_due, self._stopping = (asyncio.Event() for _ in range(3))
        sent = time.monotonic()
        await self.backend.heartbeat(self.owner, self.settings.lease_ttl)
        self._lease_until = sent + self.settings.lease_ttl
        # The backend's count is the whole finished history, including whatever this store
        # still holds from an earlier run of the same manager (written at its shutdown).
        self.store.set_finished_counts(await self.backend.status_counts())
        self.store.add_listener(self._changed)
        await self._guarded("claim", self.claim)
        loops: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = [
            ("journal", self._writer),
            ("history", self._history_loop),
            ("lease", self._lease_loop),
        ]
        if self.settings.retention_days is not None:
            await self._guarded("retention", self.prune)
            loops.append(("retention", self._retention_loop))
        self._tasks = [asyncio.create_task(job(), name=f"taskflow-{n}") for n, job in loops]

    def stop_claiming(self) -> None:
        """No more claims (shutdown began); what a claim in flight takes stays in the journal."""
        self._claiming = False

    async def stop(self) -> None:
        """Stop the loops (never mid-call), write what is outstanding, release the lease."""
        self._claiming = False
        if self._stopping is not None:
            self._stopping.set()
        if self._wake is not None:
            self._wake.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._final_flush()
        self.store.remove_listener(self._changed)
        try:
            await self.backend.journal_release(self.owner)
            await self.backend.drop_owner(self.owner)
        except Exception:
            logger.error(
                "could not release the journal lease of %s; its entries are claimable "
                "when the lease expires",
                self.owner,
                exc_info=True,
            )

    async def _final_flush(self) -> None:
        """Retry the last writes for up to ``flush_timeout`` seconds, then say what is lost."""
        deadline = time.monotonic() + FLUSH_TIMEOUT
        backoff = 0.05
        while True:
            try:
                await self.drain()
                return
            except Exception:
                self._write_failed("final flush")
            if time.monotonic() + backoff > deadline:
                break
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)
        logger.error(
            "backend %s unavailable at shutdown: %d journal and %d history writes lost "
            "(finished tasks may run again; unwritten new tasks are lost)",
            self.backend.describe(),
            len(self._urgent),
            self.store.dirty_count,
        )

    # ---- what the manager reports ----------------------------------------------------------

    def _changed(self, record: TaskRecord) -> None:
        """Store listener: the record's row is rewritten in the next batch (coalesced)."""
        with self._lock:
            self._urgent.records[record.task_id] = record
        self._kick()

    def forget(self, task_ids: list[str]) -> None:
        """Records deleted on purpose (history cleared, a replaced retry): write them no more."""
        with self._lock:
            for task_id in task_ids:
                self._urgent.records.pop(task_id, None)
                self._history.pop(task_id, None)
        for task_id in task_ids:
            self.store.forget_dirty(task_id)

    def unwritten(self, task_id: str) -> bool:
        """True while a change of this record has not reached the backend yet."""
        return (
            task_id in self._urgent.records
            or task_id in self._writing
            or self.store.is_dirty(task_id)
        )

    def unwritten_records(self) -> list[TaskRecord]:
        """The records whose latest change has not reached the backend yet."""
        with self._lock:
            pending = {**self._writing, **self._urgent.records}
        pending.update((r.task_id, r) for r in self.store.dirty_records())
        return list(pending.values())

    def admit(self) -> None:
        """Backpressure for tasks that must be journaled (``journal_backpressure``): journal
        changes are never dropped, so past ``max_buffered`` of them a new one is refused
        (counted, logged once per episode) instead of growing the buffer without bound."""
        if (
            not self.settings.journal_backpressure
            or len(self._urgent) + self._journal_in_flight < self.settings.max_buffered
        ):
            return
        self.stats.refused_tasks += 1
        if not self._refusal_warned:
            self._refusal_warned = True
            logger.warning(
                "the journal write buffer is full (max_buffered=%d, backend %s down or slow): "
                "refusing new journaled tasks with WriteBufferFullError, counted in "
                "refused_tasks",
                self.settings.max_buffered,
                self.backend.describe(),
            )
        raise WriteBufferFullError(self.settings.max_buffered, self.backend.describe())

    def journal(self, entry: JournalEntry) -> int:
        """A new task must survive the process; returns its write's sequence number."""
        with self._lock:
            task_id = entry.task_id
            self._active[task_id] = entry
            if entry.requeue:
                self._unmarked.add(task_id)
            self._urgent.removes.discard(task_id)
            self._urgent.puts[task_id] = entry
            self._seq += 1
            seq = self._seq
        note_journal_write(seq, task_id)
        self._hold_bound()  # finished-record writes make room for it
        self._kick()
        return seq

    def adopt(self, entry: JournalEntry) -> None:
        """A claimed entry (already ours in the backend) now runs here."""
        with self._lock:
            self._active[entry.task_id] = entry
            self._sent.add(entry.task_id)
            if entry.requeue:
                self._unmarked.add(entry.task_id)

    def started(self, record: TaskRecord) -> None:
        """A journaled task began an attempt: its entry is rewritten with the attempt's counts.

        The first start marks it (``requeue_count + 1``), so a crash during the run counts a
        requeue; every retry writes ``retries_used``, so a requeue resumes the retry budget
        where it stood instead of starting it again at 0.
        """
        task_id = record.task_id
        entry = self._active.get(task_id)
        if entry is None or (
            task_id not in self._unmarked and entry.retries_used == record.retries_used
        ):
            return
        with self._lock:
            entry = self._active.get(task_id)
            if entry is None:
                return
            if task_id in self._unmarked:
                self._unmarked.discard(task_id)
                entry.requeue_count = record.requeue_count + 1
            elif entry.retries_used == record.retries_used:
                return
            # In place: a batch in flight serialized its entries before its first await.
            entry.retries_used = record.retries_used
            self._urgent.puts[task_id] = entry
            self._seq += 1
        self._kick()

    def finished(self, record: TaskRecord, journaled: bool) -> None:
        """A task ended: its journal entry (if any) is removed in the next batch; its record
        is already in that batch (the store listener put it there)."""
        if not journaled:
            with self._lock:
                self._history[record.task_id] = None
            self._hold_bound()
            return
        with self._lock:
            task_id = record.task_id
            self._active.pop(task_id, None)
            self._unmarked.discard(task_id)
            self._urgent.puts.pop(task_id, None)
            if task_id in self._sent:  # never written: nothing to remove
                self._sent.discard(task_id)
                self._urgent.removes.add(task_id)
            self._urgent.records[task_id] = record
        self._kick()

    def keep(self, record: TaskRecord) -> None:
        """Shutdown interrupted a requeueable task: save its record (PENDING: it waits for the
        next start), keep its journal entry."""
        with self._lock:
            self._active.pop(record.task_id, None)
            self._unmarked.discard(record.task_id)
            self._urgent.records[record.task_id] = record
        self._kick()

    def buffered(self) -> int:
        """Writes waiting for the backend (journal changes and finished records), the batches
        being written included."""
        return (
            len(self._urgent)
            + self.store.dirty_count
            + self._journal_in_flight
            + self._history_in_flight
        )

    def _hold_bound(self) -> None:
        """Past ``max_buffered`` (a backend down, or merely slower than the tasks finish), the
        oldest finished-record writes go; journal changes are never dropped."""
        excess = self.buffered() - self.settings.max_buffered
        if excess <= 0:
            return
        dropped = self.store.drop_oldest_dirty(excess)
        with self._lock:
            # Then the oldest finished records of tasks that were not journaled (history).
            doomed = list(itertools.islice(self._history, max(0, excess - dropped)))
            for task_id in doomed:
                del self._history[task_id]
                self._urgent.records.pop(task_id, None)
        self._dropped(dropped + len(doomed))

    def _kick(self) -> None:
        wake = self._wake
        # Already set: the writer has not taken its batch yet, so it will take this change too
        # (every change is in the batch before the kick), and a kick costs a loop hop per change.
        if wake is not None and not wake.is_set():
            self._loop_ref.call(wake.set)

    # ---- writing ---------------------------------------------------------------------------

    async def drain(self) -> None:
        """Write everything outstanding now (journal changes and history); raises on failure."""
        await self.flush_journal()
        await self.flush_history()
        await self.backend.compact()

    async def flush_journal(self) -> None:
        """Write the urgent buffer now: entries, then records, then removals."""
        async with self._flush_lock:  # one batch at a time keeps puts before their removals
            await self._flush_batch()

    async def _flush_batch(self) -> None:
        with self._lock:
            batch, self._urgent = self._urgent, _Pending()
            self._history = {}
            seq = self._seq
            self._sent.update(batch.puts)
        if batch:
            journaled = False
            self._writing = batch.records
            self._journal_in_flight = len(batch)
            try:
                await self.backend.journal_put(list(batch.puts.values()), self.owner)
                journaled = True
                await self.backend.save_records(list(batch.records.values()), self.owner)
                self._committed(seq)  # durable and visible everywhere: held responses may go
                await self.backend.journal_remove(sorted(batch.removes))
            except Exception:
                self._journal_in_flight = 0
                self._put_back(batch)
                self._committed(seq if journaled else None)
                raise
            finally:
                self._writing = {}
            self._journal_in_flight = 0
            if self._refusal_warned and len(self._urgent) < self.settings.max_buffered // 2:
                self._refusal_warned = False  # the next episode of refusals is reported again
        self._committed(seq)

    def _committed(self, seq: int | None) -> None:
        """Resolve waiters up to ``seq`` with True; None (a failed write): all with False."""
        if seq is not None:
            self._written = max(self._written, seq)
        keep: list[tuple[int, asyncio.Future[bool]]] = []
        for wanted, waiter in self._waiters:
            if seq is None or wanted <= self._written:
                if not waiter.done():
                    waiter.set_result(seq is not None)
            else:
                keep.append((wanted, waiter))
        self._waiters = keep

    async def wait_written(self, seq: int, timeout: float) -> Commit:
        """Wait until journal write ``seq`` is committed, the backend fails, or ``timeout``."""
        if seq <= self._written:
            return Commit.COMMITTED
        if not self._healthy or self._loop_ref.loop is None:
            return Commit.FAILING
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, waiter))
        try:
            committed = await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            self.stats.barrier_timeouts += 1
            return Commit.TIMED_OUT
        return Commit.COMMITTED if committed else Commit.FAILING

    async def flush_history(self) -> None:
        """Write finished records that changed since the last batch, ``HISTORY_CHUNK`` per
        transaction: a flood's 100,000 records in one call would hold the backend (and, while
        their rows are encoded, the event loop) for seconds, starving the lease heartbeat."""
        records = self.store.take_dirty()
        if not records:
            return
        written = 0
        self._history_in_flight = len(records)
        try:
            while written < len(records):
                chunk = records[written : written + HISTORY_CHUNK]
                await self.backend.save_records(chunk)
                written += len(chunk)
                self._history_in_flight = len(records) - written
        except Exception:
            rest = records[written:]
            self._history_in_flight = 0
            room = max(0, self.settings.max_buffered - self.buffered())
            for record in rest[-room:] if room else []:
                self.store.mark_dirty(record)
            self._dropped(len(rest) - min(room, len(rest)))
            raise
        self._history_in_flight = 0
        if (
            self._full_warned
            and self._healthy
            and self.buffered() < self.settings.max_buffered // 2
        ):
            self._full_warned = False  # the next episode of drops is reported again

    def _put_back(self, batch: _Pending) -> None:
        """Merge a failed batch under newer changes so nothing is lost or reordered."""
        with self._lock:
            newer = self._urgent
            for task_id, entry in newer.puts.items():
                batch.puts[task_id] = entry
            for task_id in newer.removes:
                batch.puts.pop(task_id, None)
            batch.removes |= newer.removes
            batch.records.update(newer.records)
            self._urgent = batch
            excess = (
                len(batch)
                + self.store.dirty_count
                + self._history_in_flight
                - self.settings.max_buffered
            )
            dropped = 0
            while excess > 0 and batch.records:  # the oldest history goes first
                batch.records.pop(next(iter(batch.records)))
                excess -= 1
                dropped += 1
        self._dropped(dropped)

    def _dropped(self, count: int) -> None:
        if count <= 0:
            return
        self.stats.dropped_writes += count
        if not self._full_warned:
            self._full_warned = True
            logger.warning(
                "the write buffer is full (max_buffered=%d): backend %s is unavailable or "
                "slower than tasks finish; dropping the oldest finished-record writes (journal "
                "changes are kept), counted in dropped_writes",
                self.settings.max_buffered,
                self.backend.describe(),
            )

    def _write_failed(self, what: str) -> None:
        self.stats.write_failures += 1
        if self._healthy:
            self._healthy = False
            logger.warning(
                "writing the %s to %s failed; buffering and retrying with backoff",
                what,
                self.backend.describe(),
                exc_info=True,
            )

    def _write_ok(self) -> None:
        if not self._healthy:
            self._healthy = True
            self._full_warned = False
            logger.warning(
                "backend %s answers again; buffered writes drained", self.backend.describe()
            )

    # ---- background loops --------------------------------------------------------------------

    async def _writer(self) -> None:
        assert self._wake is not None
        assert self._stopping is not None
        backoff = 0.05
        while not self._stopping.is_set():
            await self._wake.wait()
            self._wake.clear()
            if self._stopping.is_set():
                return
            await asyncio.sleep(0)  # the rest of this tick joins the batch
            try:
                await self.flush_journal()
            except Exception:
                self._write_failed("journal")
                if await self._pause(backoff):
                    return
                backoff = min(backoff * 2, 5.0)
                self._wake.set()
                continue
            backoff = 0.05
            self._write_ok()

    async def _history_loop(self) -> None:
        assert self._history_due is not None
        interval = self.settings.snapshot_interval
        wait = interval
        while True:
            if await self._pause(wait, self._history_due):
                return
            # Set: woken early because many records were waiting (a busy moment).
            busy = self._history_due.is_set()
            self._history_due.clear()
            try:
                await self.flush_history()
                if not busy:
                    # A quiet moment: let the backend tidy up now rather than at shutdown.
                    await self.backend.compact()
            except Exception:
                self._write_failed("history")
                wait = min(max(wait * 2, 0.5), interval)
                continue
            wait = interval

    async def _lease_loop(self) -> None:
        interval = self.settings.heartbeat_interval
        while True:
            wait = interval if not self._lease_failing else min(interval, 1.0)
            if await self._pause(wait):
                return
            if await self._renew() and self._claiming:
                await self._guarded("claim", self.claim)

    async def _retention_loop(self) -> None:
        while not await self._pause(self.settings.prune_interval):
            await self._guarded("retention", self.prune)

    async def _pause(self, seconds: float, early: asyncio.Event | None = None) -> bool:
        """Sleep ``seconds`` (less if ``early`` is set); True when the persister is stopping."""
        assert self._stopping is not None
        waits = [asyncio.ensure_future(self._stopping.wait())]
        if early is not None:
            waits.append(asyncio.ensure_future(early.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        return self._stopping.is_set()

    async def _guarded(self, what: str, job: Callable[[], Awaitable[None]]) -> None:
        try:
            await job()
        except Exception:
            logger.warning(
                "periodic %s against %s failed", what, self.backend.describe(), exc_info=True
            )

    # ---- the lease and claims ----------------------------------------------------------------

    async def _renew(self) -> bool:
        """Heartbeat; on failure say so. Whether the lease may have expired is judged by the
        time since the last confirmed renewal, so a renewal that hangs past the lease and then
        succeeds is reported as well as one that fails."""
        sent = time.monotonic()
        renewal = asyncio.ensure_future(self.backend.heartbeat(self.owner, self.settings.lease_ttl))
        # Wait (never cancel) until the renewal ends or the lease runs out, whichever is first.
        await asyncio.wait({renewal}, timeout=max(0.0, self._lease_until - sent))
        if not renewal.done():
            self._lease_lapsed()
        try:
            await renewal
        except Exception:
            self.stats.lease_failures += 1
            if not self._lease_failing:
                self._lease_failing = True
                logger.warning(
                    "lease heartbeat of %s to %s failed; retrying",
                    self.owner,
                    self.backend.describe(),
                    exc_info=True,
                )
            if time.monotonic() >= self._lease_until:
                self._lease_lapsed()
            return False
        if time.monotonic() >= self._lease_until:  # confirmed, but after the lease ran out
            self._lease_lapsed()
        self._lease_until = sent + self.settings.lease_ttl
        if self._lease_failing or self._lapse_reported:
            self._lease_failing = False
            self._lapse_reported = False
            logger.warning(
                "lease heartbeat of %s works again; rewriting %d journal entries",
                self.owner,
                len(self._active),
            )
            self._rejournal()
        return True

    def _lease_lapsed(self) -> None:
        """No renewal confirmed within ``lease_ttl``: say so once per lapse, and count it."""
        if self._lapse_reported:
            return
        self._lapse_reported = True
        self.stats.lease_expirations += 1
        logger.error(
            "the lease of instance %s may have expired (no renewal confirmed for %gs, "
            "lease_ttl=%gs): another instance may claim its %d journaled tasks and run them "
            "again (at-least-once)",
            self.owner,
            time.monotonic() - (self._lease_until - self.settings.lease_ttl),
            self.settings.lease_ttl,
            len(self._active),
        )

    def _rejournal(self) -> None:
        """Write the entries of active tasks again (the backend may have lost them)."""
        with self._lock:
            for task_id, entry in self._active.items():
                if task_id not in self._urgent.removes:
                    self._urgent.puts[task_id] = entry
            self._seq += 1
        self._kick()

    async def claim(self) -> None:
        """Take entries no live instance owns and hand them to ``on_claim``, batch by batch."""
        while self._claiming:
            entries = await self.backend.journal_claim(self.owner, CLAIM_BATCH)
            if entries and self._claiming and self.on_claim is not None:
                self.stats.claimed += len(entries)
                logger.info("instance %s claimed %d journaled tasks", self.owner, len(entries))
                self.on_claim(entries)
            if len(entries) < CLAIM_BATCH:
                return

    async def prune(self) -> None:
        """Delete finished records older than ``retention_days`` from memory and backend."""
        days = self.settings.retention_days
        if days is None:
            return
        cutoff = datetime.now(UTC) - timedelta(days=days)
        self.forget(
            self.store.clear_finished(keep=lambda r: r.end_time is None or r.end_time >= cutoff)
        )
        deleted = await self.backend.delete_records_before(cutoff)
        if deleted:
            logger.info("retention: deleted %d records finished before %s", deleted, cutoff)
