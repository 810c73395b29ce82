"""Persister: everything between the in-memory store and a backend.

* The journal: tasks that must survive the process are written at enqueue and removed when they
  finish. Writes from one loop tick share one transaction (group commit).
* History: finished records are written in batches, at most ``snapshot_interval`` after they
  finish, and at shutdown (only what changed, so shutdown time does not grow with history).
* The lease: this instance renews its owner lease by heartbeat; entries whose owner stopped
  renewing are claimed by a live instance (see ``recover``).
* Outages: a failed write is retried with backoff; what waits is bounded, counted and warned about.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from .backends.base import JournalEntry, TaskBackend
from .models import TaskRecord
from .store import TaskStore

logger = logging.getLogger("fastapi_taskflow.persistence")


@dataclass(slots=True)
class DurabilitySettings:
    """Timings of the journal and history writes; defaults suit most apps."""

    snapshot_interval: float = 60.0
    heartbeat_interval: float = 10.0
    lease_ttl: float = 30.0
    max_buffered: int = 100_000
    retention_days: float | None = None
    max_requeues: int = 3


@dataclass(slots=True)
class _Pending:
    puts: dict[str, JournalEntry] = field(default_factory=dict)
    removes: set[str] = field(default_factory=set)
    records: dict[str, TaskRecord] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.puts or self.removes or self.records)


class Persister:
    """Journal, history batches, lease heartbeat and retention for one manager."""

    def __init__(
        self, backend: TaskBackend, store: TaskStore, owner: str, settings: DurabilitySettings
    ) -> None:
        self.backend = backend
        self.store = store
        self.owner = owner
        self.settings = settings
        self._urgent = _Pending()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.write_failures = 0
        self.dropped = 0

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        await self.backend.heartbeat(self.owner, self.settings.lease_ttl)
        self.store.seed_counts(await self.backend.count_by_status())
        self._tasks = [
            asyncio.create_task(self._writer(), name="taskflow-journal"),
            asyncio.create_task(
                self._every(self.settings.snapshot_interval, self.flush_history),
                name="taskflow-history",
            ),
            asyncio.create_task(
                self._every(self.settings.heartbeat_interval, self._heartbeat),
                name="taskflow-heartbeat",
            ),
        ]
        if self.settings.retention_days is not None:
            await self.prune()
            self._tasks.append(
                asyncio.create_task(self._every(3600.0, self.prune), name="taskflow-retention")
            )

    async def stop(self) -> None:
        """Write everything outstanding, then give up the lease so another start can claim."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.flush_journal()
        await self.flush_history()
        try:
            await self.backend.journal_release(self.owner)
            await self.backend.drop_owner(self.owner)
        except Exception:
            logger.error("could not release the journal lease of %s", self.owner, exc_info=True)

    # ---- what the manager reports ----------------------------------------------------------

    def journal(self, entry: JournalEntry) -> None:
        self._urgent.removes.discard(entry.task_id)
        self._urgent.puts[entry.task_id] = entry
        self._kick()

    def finished(self, record: TaskRecord, journaled: bool) -> None:
        """A task ended: journaled ones are settled at once, others join the next batch."""
        if journaled:
            self._urgent.puts.pop(record.task_id, None)
            self._urgent.removes.add(record.task_id)
            self._urgent.records[record.task_id] = record
            self._kick()
        else:
            self.store.mark_dirty(record)

    def save_soon(self, record: TaskRecord) -> None:
        self._urgent.records[record.task_id] = record
        self._kick()

    def _kick(self) -> None:
        # Sync routes enqueue from worker threads; an asyncio.Event is set on its own loop only.
        if self._wake is None or self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    # ---- writing ---------------------------------------------------------------------------

    async def flush_journal(self) -> None:
        """Write the urgent buffer now (one batch per kind)."""
        batch, self._urgent = self._urgent, _Pending()
        if not batch:
            return
        try:
            await self.backend.journal_put(list(batch.puts.values()), self.owner)
            await self.backend.save_records(list(batch.records.values()))
            await self.backend.journal_remove(sorted(batch.removes))
        except Exception:
            self._put_back(batch)
            raise

    async def flush_history(self) -> None:
        records = self.store.take_dirty()
        if not records:
            return
        try:
            await self.backend.save_records(records)
        except Exception:
            for record in records:
                self.store.mark_dirty(record)
            self._warn_failure("history")
            if self._closing:
                return
            raise

    def _put_back(self, batch: _Pending) -> None:
        """Merge a failed batch under newer changes so nothing is lost or reordered."""
        newer = self._urgent
        batch.puts.update(newer.puts)
        for task_id in newer.removes:
            batch.puts.pop(task_id, None)
        batch.removes |= newer.removes
        batch.records.update(newer.records)
        self._urgent = batch
        waiting = len(batch.puts) + len(batch.removes) + len(batch.records)
        if waiting > self.settings.max_buffered:
            logger.warning(
                "backend %s unavailable: %d writes buffered (limit %d)",
                self.backend.describe(),
                waiting,
                self.settings.max_buffered,
            )

    async def _writer(self) -> None:
        assert self._wake is not None
        backoff = 0.05
        while True:
            await self._wake.wait()
            self._wake.clear()
            # Let the rest of this loop tick enqueue too: one transaction for all of them.
            await asyncio.sleep(0)
            try:
                await self.flush_journal()
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except Exception:
                self._warn_failure("journal")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self._wake.set()

    def _warn_failure(self, what: str) -> None:
        self.write_failures += 1
        logger.warning(
            "writing the %s to %s failed; will retry",
            what,
            self.backend.describe(),
            exc_info=self.write_failures == 1,
        )

    async def _heartbeat(self) -> None:
        await self.backend.heartbeat(self.owner, self.settings.lease_ttl)

    async def prune(self) -> None:
        """Delete finished records older than ``retention_days`` from memory and backend."""
        days = self.settings.retention_days
        if days is None:
            return
        cutoff = datetime.now(UTC) - timedelta(days=days)
        self.store.clear_finished(keep=lambda r: r.end_time is None or r.end_time >= cutoff)
        deleted = await self.backend.delete_records_before(cutoff)
        if deleted:
            logger.info("retention: deleted %d records finished before %s", deleted, cutoff)

    async def _every(self, interval: float, job: object) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await job()  # type: ignore[operator]
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("periodic %s failed", getattr(job, "__name__", job), exc_info=True)

    async def claim_orphans(self) -> list[JournalEntry]:
        """Journal entries no live instance owns (crashed, or released at a clean shutdown)."""
        return await self.backend.journal_claim(self.owner)
