"""The backend contract: what the manager needs from storage, and the rules every backend keeps.

Template methods: the public async methods live here and do the conversions, validation and
corrupt-row handling once; a backend implements the small ``_primitives`` on plain rows.

Four kinds of data live in a backend:

* **records**: finished (and, for shared history, active) tasks as JSON rows, paged newest first;
* **the journal**: tasks that must not be lost. An entry is written at enqueue and removed when
  the task finishes. Each entry has an *owner* (an instance id). Owners renew one lease by
  heartbeat; entries of an owner whose lease expired, or with no owner (released at a clean
  shutdown), are *claimed* atomically by a live instance, which re-runs or interrupts them;
* **idempotency keys**: reserved atomically, so two instances never both run one key;
* **locks and one-off schedules**: a scheduled slot fires on exactly one instance; one-off runs
  (``schedule_once``) are rows of their own, put and taken atomically;
* **instances**: each live instance's description (host, pid, counts), expiring with its lease;
* **commands**: a short-lived channel every instance reads from a position (cursor), so a
  cancel or a queue change sent on one instance reaches the one that runs the task;
* **rate limits**: one GCRA state per limit, taken atomically (see ``ratelimit.py``);
* **the audit trail**: TaskAdmin's log of actions, appended one entry at a time and trimmed to
  the newest entries in the same atomic step, so instances recording at once all land.

A backend with ``system_of_record = True`` is where the truth lives when several instances
share it (see ARCHITECTURE.md): every task has a row from enqueue (PENDING) through RUNNING (with
progress) to its end, and the backend keeps, in the same transaction as each record write:

* **stats**: counters per status, per queue and status, and the duration histogram, always the
  aggregate of the stored rows (see ``stats.py``); deletes take their rows' share away;
* **throughput**: per ``THROUGHPUT_BUCKET`` seconds, how many records became SUCCESS / FAILED;
* **a change feed**: one entry per record write batch, ``(origin instance, task ids)``, read
  after a cursor by every instance's live dashboard, pruned to the newest entries.

Primitives for it (all in one transaction with the rows, where they write):

* ``_write_rows(rows, origin)``: upsert rows, apply the stats delta of (old row -> new row) with
  :func:`~fastapi_taskflow.stats.add_delta`, count throughput with
  :func:`~fastapi_taskflow.stats.throughput_key`, append one change entry ``(origin, ids)``;
* ``_delete_rows_before`` / ``_delete_rows``: also subtract the deleted rows' contribution;
* ``_read_stats() -> {key: number}``; ``_read_throughput(first_bucket) -> [(bucket, s, f)]``;
* ``_changes_after(cursor, limit) -> (entries, cursor, gap)``;
* ``_read_rows(task_ids)``: several records in one round trip (default: ``_read_row`` each).

A backend written before these leaves ``system_of_record`` False: it is called as before
(``_write_rows(rows)``), and the manager falls back, with a warning at startup, to this
instance's own counters and change feed.

Write a custom backend by subclassing :class:`TaskBackend` and implementing the primitives; run
``tests/contract`` against it (see docs/backends.md).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import BackendError
from ..models import TaskRecord, TaskSource, TaskStatus
from ..ratelimit import RateLimit
from ..serialization import compact_json, decode_call, record_call
from ..stats import THROUGHPUT_BUCKET, THROUGHPUT_POINTS, ClusterStats, throughput_samples

logger = logging.getLogger("fastapi_taskflow.backends")

Row = dict[str, Any]
# Seconds a command stays in the channel: readers are live instances a second behind at most;
# an instance started later must not act on old commands (it reads from the end).
COMMAND_TTL = 60.0


@dataclass(slots=True)
class RecordQuery:
    """Filters for paging through records, newest first."""

    status: str | None = None
    func_name: str | None = None
    queue: str | None = None
    tag: tuple[str, str] | None = None
    text: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 50
    cursor: str | None = None

    def matches(self, record: TaskRecord) -> bool:
        """The same filter in Python, for the in-memory part of a merged list."""
        if self.status is not None and record.status.value != self.status:
            return False
        if self.func_name is not None and record.func_name != self.func_name:
            return False
        if self.queue is not None and record.queue != self.queue:
            return False
        if self.tag is not None and record.tags.get(self.tag[0]) != self.tag[1]:
            return False
        created = record.created_at.timestamp()
        if self.since is not None and created < self.since.timestamp():
            return False
        if self.until is not None and created >= self.until.timestamp():
            return False
        if self.text:
            needle = self.text.lower()
            haystack = f"{record.func_name}\n{record.task_id}\n{record.error or ''}".lower()
            if needle not in haystack:
                return False
        return True


def encode_cursor(created_at: float, task_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at!r}|{task_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[float, str]:
    """Raises ``ValueError`` for a cursor this code did not make (a NaN or infinite time
    included: a backend would answer it with an error, not a page)."""
    try:
        created, task_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        when = float(created)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"invalid cursor {cursor!r}") from exc
    if not math.isfinite(when):
        raise ValueError(f"invalid cursor {cursor!r}: its time is not a finite number")
    return when, task_id


@dataclass(slots=True)
class RecordPage:
    records: list[TaskRecord]
    next_cursor: str | None


@dataclass(slots=True)
class ChangePage:
    """What the change feed holds after a cursor: ``(origin, task ids)`` entries, oldest first.

    ``gap`` is True when entries after the cursor were pruned before they were read (the
    reader should reload rather than trust its view).
    """

    entries: list[tuple[str, list[str]]]
    cursor: str
    gap: bool = False

    def task_ids(self, skip_origin: str | None = None) -> set[str]:
        """Ids changed by any instance but ``skip_origin``."""
        return {tid for origin, ids in self.entries if origin != skip_origin for tid in ids}


@dataclass(slots=True)
class JournalEntry:
    """A task that must survive the process: enough to run it again after a crash."""

    task_id: str
    func_name: str
    payload: bytes
    encrypted: bool = False
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    tags: dict[str, str] = field(default_factory=dict)
    priority: int | None = None
    queue: str = "default"
    idempotency_key: str | None = None
    source: TaskSource = "manual"
    retries_used: int = 0
    requeue_count: int = 0
    requeue: bool = False
    owner: str | None = None
    # W3C trace context from the enqueue (tracing on): a requeued task stays in its trace.
    trace_context: dict[str, str] | None = None

    def to_json(self) -> str:
        return compact_json(
            {
                "task_id": self.task_id,
                "func_name": self.func_name,
                "payload": base64.b64encode(self.payload).decode("ascii"),
                "encrypted": self.encrypted,
                "created_at": self.created_at.isoformat(),
                "tags": self.tags,
                "priority": self.priority,
                "queue": self.queue,
                "idempotency_key": self.idempotency_key,
                "source": self.source,
                "retries_used": self.retries_used,
                "requeue_count": self.requeue_count,
                "requeue": self.requeue,
                "trace": self.trace_context,
            }
        )

    @classmethod
    def from_json(cls, data: str | bytes, owner: str | None = None) -> JournalEntry:
        raw = json.loads(data)
        return cls(
            task_id=raw["task_id"],
            func_name=raw["func_name"],
            payload=base64.b64decode(raw["payload"]),
            encrypted=bool(raw["encrypted"]),
            created_at=datetime.fromisoformat(raw["created_at"]),
            tags=dict(raw.get("tags") or {}),
            priority=raw.get("priority"),
            queue=raw.get("queue") or "default",
            idempotency_key=raw.get("idempotency_key"),
            source=raw.get("source") or "manual",
            retries_used=int(raw.get("retries_used") or 0),
            requeue_count=int(raw.get("requeue_count") or 0),
            requeue=bool(raw.get("requeue")),
            owner=owner,
            trace_context=raw.get("trace") or None,
        )


@dataclass(slots=True)
class InstanceInfo:
    """One live instance as the others see it; renewed with its lease heartbeat."""

    instance_id: str
    host: str
    pid: int
    version: str
    started_at: datetime
    heartbeat_at: datetime
    running: int = 0
    waiting: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "host": self.host,
            "pid": self.pid,
            "version": self.version,
            "started_at": self.started_at.isoformat(),
            "heartbeat_at": self.heartbeat_at.isoformat(),
            "running": self.running,
            "waiting": self.waiting,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> InstanceInfo:
        return cls(
            instance_id=str(raw["instance_id"]),
            host=str(raw["host"]),
            pid=int(raw["pid"]),
            version=str(raw["version"]),
            started_at=datetime.fromisoformat(raw["started_at"]),
            heartbeat_at=datetime.fromisoformat(raw["heartbeat_at"]),
            running=int(raw.get("running") or 0),
            waiting=int(raw.get("waiting") or 0),
        )


@dataclass(slots=True)
class Command:
    """A request from one instance to the others: cancel a task, forget one, change a queue.

    ``target`` is the instance meant to act (None: every instance that can); ``sender``
    skips its own commands (it already acted on them).
    """

    kind: str
    sender: str
    target: str | None = None
    task_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    sent_at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return compact_json(
            {
                "kind": self.kind,
                "sender": self.sender,
                "target": self.target,
                "task_id": self.task_id,
                "data": self.data,
                "sent_at": self.sent_at,
            }
        )

    @classmethod
    def from_json(cls, data: str | bytes) -> Command:
        raw = json.loads(data)
        return cls(
            kind=str(raw["kind"]),
            sender=str(raw["sender"]),
            target=raw.get("target"),
            task_id=raw.get("task_id"),
            data=dict(raw.get("data") or {}),
            sent_at=float(raw.get("sent_at") or 0.0),
        )


@dataclass(slots=True)
class ScheduledRun:
    """A one-off run saved in the backend: its key, when it is due, and its document."""

    run_key: str
    run_at: float
    document: dict[str, Any]


def _dt(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def record_to_row(record: TaskRecord) -> Row:
    """A record as the row every backend stores: indexed columns plus one JSON document."""
    payload = (
        {"encrypted_payload": base64.b64encode(record.encrypted_payload).decode("ascii")}
        if record.encrypted_payload is not None
        else {"call": record_call(record).decode()}
    )
    document: dict[str, Any] = {
        "task_id": record.task_id,
        "func_name": record.func_name,
        "status": record.status.value,
        "created_at": record.created_at.isoformat(),
        "source": record.source,
        "executor": record.executor,
        "queue": record.queue,
        **payload,
    }
    # Fields still at their default are left out (row_to_record fills them in): most rows
    # have no error, logs, tags, progress or retries, and every row is encoded once per task.
    for name, value in (
        ("start_time", _dt(record.start_time)),
        ("end_time", _dt(record.end_time)),
        ("error", record.error),
        ("stacktrace", record.stacktrace),
        ("idempotency_key", record.idempotency_key),
        ("priority", record.priority),
        ("progress", record.progress),
        ("progress_message", record.progress_message),
        ("waiting_reason", record.waiting_reason),
    ):
        if value is not None:
            document[name] = value
    counts_and_lists: tuple[tuple[str, Any], ...] = (
        ("retries_used", record.retries_used),
        ("requeue_count", record.requeue_count),
        ("logs", record.logs),
        ("tags", record.tags),
    )
    for name, filled in counts_and_lists:
        if filled:
            document[name] = filled
    if record.encrypted_error is not None:
        document["encrypted_error"] = base64.b64encode(record.encrypted_error).decode("ascii")
    if record.result_data is not None:
        document["result"] = record.result_data.decode()
    elif record.encrypted_result is not None:
        document["encrypted_result"] = base64.b64encode(record.encrypted_result).decode("ascii")
    if record.result_note is not None:
        document["result_note"] = record.result_note
    if record.result_expires_at is not None:
        document["result_expires_at"] = record.result_expires_at.isoformat()
    status = record.status
    return {
        "task_id": record.task_id,
        "func_name": record.func_name,
        "status": status.value,
        "queue": record.queue,
        "created_at": record.created_at.timestamp(),
        "end_time": record.end_time.timestamp() if record.end_time else None,
        # A column of its own so backends can search errors without parsing ``data``.
        "error": record.error,
        # What the duration histogram counts (finished rows only): kept so a delete can take
        # the row's share away without parsing ``data``.
        "duration": record.duration if status.finished else None,
        "data": compact_json(document),
    }


def row_to_record(data: str | bytes) -> TaskRecord:
    """Inverse of :func:`record_to_row` (from its ``data`` column); raises ``ValueError``."""
    try:
        doc = json.loads(data)
        if "encrypted_payload" in doc:
            args: tuple[Any, ...] = ()
            kwargs: dict[str, Any] = {}
            encrypted: bytes | None = base64.b64decode(doc["encrypted_payload"])
        else:
            args, kwargs = decode_call(doc.get("call") or '{"a":[],"k":{}}')
            encrypted = None
        return TaskRecord(
            task_id=doc["task_id"],
            func_name=doc["func_name"],
            status=TaskStatus(doc["status"]),
            args=args,
            kwargs=kwargs,
            created_at=_parse_dt(doc["created_at"]) or datetime.now(UTC),
            start_time=_parse_dt(doc.get("start_time")),
            end_time=_parse_dt(doc.get("end_time")),
            retries_used=int(doc.get("retries_used") or 0),
            error=doc.get("error"),
            logs=list(doc["logs"]) if doc.get("logs") else (),
            stacktrace=doc.get("stacktrace"),
            idempotency_key=doc.get("idempotency_key"),
            tags=dict(doc.get("tags") or {}),
            source=doc.get("source") or "manual",
            priority=doc.get("priority"),
            executor=doc.get("executor") or "async",
            queue=doc.get("queue") or "default",
            progress=doc.get("progress"),
            progress_message=doc.get("progress_message"),
            encrypted_payload=encrypted,
            requeue_count=int(doc.get("requeue_count") or 0),
            encrypted_error=(
                base64.b64decode(doc["encrypted_error"]) if doc.get("encrypted_error") else None
            ),
            # Rows written before results existed have none of these: no result kept.
            result_data=doc["result"].encode() if doc.get("result") is not None else None,
            encrypted_result=(
                base64.b64decode(doc["encrypted_result"]) if doc.get("encrypted_result") else None
            ),
            result_note=doc.get("result_note"),
            waiting_reason=doc.get("waiting_reason"),
            result_expires_at=_parse_dt(doc.get("result_expires_at")),
        )
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"corrupt task record: {exc}") from exc


class TaskBackend(ABC):
    """Base of every backend. Public methods are final; implement the primitives below."""

    #: True when several processes (or machines) can share this backend's data.
    shared: bool = False
    #: True when the backend implements the system-of-record primitives (stats, throughput,
    #: change feed written with the rows; see the module docstring). False: the older contract.
    system_of_record: bool = False

    def __init__(self) -> None:
        self.corrupt_rows = 0

    # ---- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and create what is missing; raises :class:`BackendError` when unreachable."""

    async def close(self) -> None:
        """Release connections. Safe to call twice."""

    async def compact(self) -> None:
        """Housekeeping at a quiet moment (after a history batch). Default: nothing."""

    def describe(self) -> str:
        """A one-line description for logs and errors; never includes a password."""
        return type(self).__name__

    # ---- records ---------------------------------------------------------------------------

    async def save_records(self, records: Sequence[TaskRecord], origin: str = "") -> None:
        """Insert or replace records by task id, in one batch; ``origin`` (the instance that
        wrote them) goes into the change feed."""
        if not records:
            return
        rows = [record_to_row(r) for r in records]
        if self.system_of_record:
            await self._write_rows(rows, origin)
        else:
            await self._write_rows(rows)

    async def get_records(self, task_ids: Sequence[str]) -> list[TaskRecord]:
        """The records of ``task_ids`` that exist, in one round trip where the backend can."""
        if not task_ids:
            return []
        rows = await self._read_rows(list(task_ids))
        return [r for tid, data in rows if (r := self._decode(tid, data)) is not None]

    async def get_record(self, task_id: str) -> TaskRecord | None:
        data = await self._read_row(task_id)
        return self._decode(task_id, data) if data is not None else None

    async def query_records(self, query: RecordQuery) -> RecordPage:
        """One page of records matching ``query``, newest first, and the cursor to the next."""
        after = decode_cursor(query.cursor) if query.cursor else None
        rows = await self._query_rows(query, after, query.limit + 1)
        records = [r for tid, data in rows if (r := self._decode(tid, data)) is not None]
        page = records[: query.limit]
        next_cursor = None
        if len(rows) > query.limit and page:
            last = page[-1]
            next_cursor = encode_cursor(last.created_at.timestamp(), last.task_id)
        return RecordPage(page, next_cursor)

    async def delete_records_before(self, cutoff: datetime) -> int:
        """Delete finished records that ended before ``cutoff``; returns how many."""
        return await self._delete_rows_before(cutoff.timestamp())

    async def delete_records(self, task_ids: Sequence[str]) -> int:
        return await self._delete_rows(list(task_ids)) if task_ids else 0

    async def count_by_status(self) -> dict[str, int]:
        """Records per status, counted from the rows (a scan on most backends)."""
        return await self._count_rows()

    async def status_counts(self) -> dict[str, int]:
        """Records per status: from the kept stats when the backend keeps them (no scan), else
        :meth:`count_by_status`."""
        if not self.system_of_record:
            return await self._count_rows()
        stats = await self.read_stats()
        return {status.value: count for status, count in stats.counts.items() if count}

    # ---- the system of record: stats, throughput, change feed -------------------------------

    async def read_stats(self, throughput: bool = False) -> ClusterStats:
        """The stored counters (and, if asked, the throughput samples); no scan."""
        self._require_system_of_record("read_stats")
        stats = ClusterStats.from_flat(await self._read_stats())
        if throughput:
            now = time.time()
            first = int(now // THROUGHPUT_BUCKET) - THROUGHPUT_POINTS
            buckets = await self._read_throughput(first)
            stats.throughput = throughput_samples(
                buckets,
                stats.counts[TaskStatus.SUCCESS],
                stats.counts[TaskStatus.FAILED],
                now,
            )
        return stats

    async def read_changes(self, cursor: str | None, limit: int = 1000) -> ChangePage:
        """Change entries after ``cursor``; None: none, only the cursor of the newest entry
        (where a new reader starts)."""
        self._require_system_of_record("read_changes")
        entries, new_cursor, gap = await self._changes_after(cursor, limit)
        return ChangePage(entries, new_cursor, gap)

    def _require_system_of_record(self, what: str) -> None:
        if not self.system_of_record:
            raise BackendError(
                f"{self.describe()} does not implement {what} (system_of_record is False; "
                "see docs/backends.md)"
            )

    def _decode(self, task_id: str, data: str | bytes) -> TaskRecord | None:
        try:
            return row_to_record(data)
        except ValueError as exc:
            # One bad row must never stop a startup or a page: skip it, say which, count it.
            self.corrupt_rows += 1
            logger.warning(
                "skipping corrupt task record %s in %s: %s", task_id, self.describe(), exc
            )
            return None

    # ---- journal ---------------------------------------------------------------------------

    async def journal_put(self, entries: Sequence[JournalEntry], owner: str) -> None:
        """Write entries owned by ``owner`` (one transaction for the batch)."""
        if entries:
            await self._journal_write([(e.task_id, e.to_json()) for e in entries], owner)

    async def journal_remove(self, task_ids: Sequence[str]) -> None:
        if task_ids:
            await self._journal_delete(list(task_ids))

    async def journal_release(self, owner: str) -> int:
        """Clear ``owner`` from its entries (a clean shutdown) so the next claim takes them."""
        return await self._journal_release(owner)

    async def heartbeat(self, owner: str, ttl: float) -> None:
        """Renew ``owner``'s lease: its entries are not claimable for ``ttl`` seconds."""
        await self._heartbeat(owner, ttl)

    async def drop_owner(self, owner: str) -> None:
        """Forget ``owner``'s lease (a clean shutdown), so its released entries are claimable."""
        await self._drop_owner(owner)

    async def journal_claim(self, owner: str, limit: int = 1000) -> list[JournalEntry]:
        """Atomically take entries with no owner or an owner whose lease expired."""
        claimed = await self._journal_claim(owner, limit)
        entries = []
        for task_id, data in claimed:
            try:
                entries.append(JournalEntry.from_json(data, owner=owner))
            except (KeyError, TypeError, ValueError) as exc:
                self.corrupt_rows += 1
                logger.warning("dropping corrupt journal entry %s: %s", task_id, exc)
                await self._journal_delete([task_id])
        return entries

    async def journal_owned(self, owner: str) -> list[JournalEntry]:
        """Entries currently owned by ``owner`` (diagnostics and tests)."""
        return [JournalEntry.from_json(d, owner=owner) for _, d in await self._journal_list(owner)]

    # ---- maintenance: walking every stored payload (key rotation) --------------------------

    async def journal_page(
        self, after: str | None = None, limit: int = 500
    ) -> tuple[list[JournalEntry], str | None]:
        """Entries of every owner (``owner`` set) in task-id order after ``after``; next cursor.

        The cursor is None at the end. Corrupt entries are skipped (and counted), not removed.
        """
        rows = await self._journal_page(after, limit)
        entries = []
        for task_id, owner, data in rows:
            try:
                entries.append(JournalEntry.from_json(data, owner=owner))
            except (KeyError, TypeError, ValueError) as exc:
                self.corrupt_rows += 1
                logger.warning("skipping corrupt journal entry %s: %s", task_id, exc)
        return entries, (rows[-1][0] if len(rows) >= limit else None)

    async def journal_update(self, entries: Sequence[JournalEntry]) -> int:
        """Rewrite entries that still exist, keeping their owner; returns how many.

        An entry removed meanwhile (its task finished) stays removed.
        """
        if not entries:
            return 0
        return await self._journal_update([(e.task_id, e.to_json()) for e in entries])

    async def update_records(self, records: Sequence[TaskRecord]) -> int:
        """Rewrite records that still exist (same task id and columns); returns how many.

        A record deleted meanwhile (retention, a replaced retry) stays deleted.
        """
        if not records:
            return 0
        return await self._update_rows([(r.task_id, record_to_row(r)["data"]) for r in records])

    # ---- idempotency, locks, metadata --------------------------------------------------------

    async def reserve_idempotency_key(
        self, key: str, task_id: str, ttl: float | None
    ) -> str | None:
        """Reserve ``key`` for ``task_id``. Returns None when reserved, else the holder's id."""
        return await self._reserve_key(key, task_id, ttl)

    async def release_idempotency_key(self, key: str, task_id: str) -> None:
        """Free ``key`` if ``task_id`` still holds it (the task failed, was cancelled...)."""
        await self._release_key(key, task_id)

    async def acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        """Take a named lock for ``ttl`` seconds; False when another owner holds it."""
        return await self._acquire_lock(name, owner, ttl)

    async def get_meta(self, key: str) -> str | None:
        return await self._get_meta(key)

    async def take_rate_token(self, key: str, limit: RateLimit) -> float:
        """One start under the rate limit ``key``: 0.0 when it may start now (the start is
        counted), else the seconds until the next start could be allowed (nothing counted).

        Atomic across every process sharing this backend: two callers never take one slot.
        """
        wait = await self._take_rate_token(key, limit.interval, limit.burst)
        return wait if wait > 0 else 0.0

    async def set_meta(self, key: str, value: str) -> None:
        await self._set_meta(key, value)

    # ---- instances -------------------------------------------------------------------------

    async def announce_instance(self, info: InstanceInfo, ttl: float) -> None:
        """Publish ``info``; :meth:`live_instances` lists it for ``ttl`` seconds after this call."""
        await self._put_instance(info.instance_id, compact_json(info.to_dict()), ttl)

    async def live_instances(self) -> list[InstanceInfo]:
        """Every instance whose last announcement has not expired, by instance id."""
        found = []
        for instance_id, data in await self._list_instances():
            try:
                found.append(InstanceInfo.from_dict(json.loads(data)))
            except (KeyError, TypeError, ValueError) as exc:
                self.corrupt_rows += 1
                logger.warning("skipping corrupt instance entry %s: %s", instance_id, exc)
        return sorted(found, key=lambda info: info.instance_id)

    async def forget_instance(self, instance_id: str) -> None:
        """Remove an instance's announcement at once (its clean shutdown)."""
        await self._remove_instance(instance_id)

    # ---- commands ----------------------------------------------------------------------------

    #: Seconds between two reads of a backend whose ``_read_commands`` cannot wait itself.
    command_poll_interval: float = 0.1

    async def send_command(self, command: Command) -> None:
        """Append ``command`` to the channel; every reader past its position sees it once."""
        await self._send_command(command.to_json())

    async def command_position(self) -> str:
        """The channel's end now: reading from here yields only commands sent later."""
        return await self._command_position()

    async def read_commands(self, after: str, wait: float) -> tuple[list[Command], str]:
        """Commands sent after position ``after``, oldest first, and the position to read from
        next; waits up to ``wait`` seconds when there are none yet."""
        deadline = time.monotonic() + wait
        while True:
            rows = await self._read_commands(after, max(0.0, deadline - time.monotonic()))
            left = deadline - time.monotonic()
            if rows or left <= 0:
                break
            await asyncio.sleep(min(self.command_poll_interval, left))
        commands = []
        for position, data in rows:
            after = position
            try:
                commands.append(Command.from_json(data))
            except (KeyError, TypeError, ValueError) as exc:
                self.corrupt_rows += 1
                logger.warning("skipping corrupt command at %s: %s", position, exc)
        return commands, after

    # ---- one-off schedules ---------------------------------------------------------------------

    async def put_scheduled(self, run: ScheduledRun) -> bool:
        """Save a one-off run unless its key is taken; False (nothing written) when it is."""
        return await self._put_schedule(run.run_key, run.run_at, compact_json(run.document))

    async def take_scheduled(self, run_key: str) -> ScheduledRun | None:
        """Remove a run and return it; of concurrent callers exactly one gets it (fire or
        cancel), the others get None."""
        taken = await self._take_schedule(run_key)
        if taken is None:
            return None
        run_at, data = taken
        document = self._json_object(data, f"one-off run {run_key}")
        return ScheduledRun(run_key, run_at, document) if document is not None else None

    async def list_scheduled(self, before: float | None = None) -> list[ScheduledRun]:
        """Saved runs (due before ``before``, epoch seconds, when given), soonest first."""
        runs = []
        for run_key, run_at, data in await self._list_schedules(before):
            document = self._json_object(data, f"one-off run {run_key}")
            if document is not None:
                runs.append(ScheduledRun(run_key, run_at, document))
        return runs

    def _json_object(self, data: str | bytes, what: str) -> dict[str, Any] | None:
        """``data`` as a JSON object; None (counted as corrupt, logged) when it is not one."""
        try:
            document = json.loads(data)
            if not isinstance(document, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            self.corrupt_rows += 1
            logger.warning("skipping corrupt %s: %s", what, exc)
            return None
        return document

    # ---- the audit trail -------------------------------------------------------------------------

    async def append_audit(self, entry: Mapping[str, Any], keep: int) -> None:
        """Add ``entry`` (a JSON object with an ``entry_id``) as the newest and drop all but the
        newest ``keep``, atomically: appends from every instance at once all land."""
        if keep < 1:
            raise ValueError(f"keep={keep}: keep at least the entry just appended")
        await self._append_audit(compact_json(dict(entry)), keep)

    async def read_audit(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` entries, newest first. An entry stored twice (a migration run
        again after a crash) is listed once; corrupt ones are skipped and counted."""
        entries: list[dict[str, Any]] = []
        seen: set[Any] = set()
        for data in await self._read_audit(limit):
            entry = self._json_object(data, "audit entry")
            if entry is None:
                continue
            entry_id = entry.get("entry_id")
            if entry_id is None or entry_id not in seen:
                seen.add(entry_id)
                entries.append(entry)
        return entries

    # ---- counters: state every instance must agree on (login limits, ended sessions) --------

    async def counter_add(self, key: str, amount: int, ttl: float) -> int:
        """Add ``amount`` to the counter ``key`` (an absent or expired one starts at 0), make it
        expire ``ttl`` seconds from now and return the new value, atomically."""
        return await self._counter_add(key, amount, ttl)

    async def counter_get(self, key: str) -> tuple[int, float]:
        """(value, seconds until it expires) of a live counter; ``(0, 0.0)`` when there is none."""
        return await self._counter_get(key)

    async def counter_delete(self, key: str) -> None:
        await self._counter_delete(key)

    # ---- primitives ------------------------------------------------------------------------

    @abstractmethod
    async def _write_rows(self, rows: list[Row], origin: str = "") -> None:
        """Upsert ``rows``. With ``system_of_record``: in the same transaction, apply the stats
        delta of each (old row -> new row), count throughput, append one change entry
        ``(origin, [task ids])``. Older backends are called with ``rows`` only."""

    @abstractmethod
    async def _read_row(self, task_id: str) -> str | bytes | None: ...

    @abstractmethod
    async def _query_rows(
        self, query: RecordQuery, after: tuple[float, str] | None, limit: int
    ) -> list[tuple[str, str | bytes]]:
        """(task_id, data) pairs matching ``query`` ordered by (created_at, task_id) descending,
        strictly after the cursor position ``after``; at most ``limit``."""

    @abstractmethod
    async def _delete_rows_before(self, cutoff: float) -> int:
        """Delete finished rows with ``end_time < cutoff`` (and, with ``system_of_record``,
        their stats contribution, in the same transaction); returns how many."""

    @abstractmethod
    async def _delete_rows(self, task_ids: list[str]) -> int:
        """Delete these rows (and their stats contribution); returns how many existed."""

    @abstractmethod
    async def _count_rows(self) -> dict[str, int]: ...

    @abstractmethod
    async def _journal_write(self, items: list[tuple[str, str]], owner: str) -> None: ...

    @abstractmethod
    async def _journal_delete(self, task_ids: list[str]) -> None: ...

    @abstractmethod
    async def _journal_release(self, owner: str) -> int: ...

    @abstractmethod
    async def _journal_claim(self, owner: str, limit: int) -> list[tuple[str, str]]: ...

    @abstractmethod
    async def _journal_list(self, owner: str) -> list[tuple[str, str]]: ...

    @abstractmethod
    async def _heartbeat(self, owner: str, ttl: float) -> None: ...

    @abstractmethod
    async def _drop_owner(self, owner: str) -> None: ...

    @abstractmethod
    async def _reserve_key(self, key: str, task_id: str, ttl: float | None) -> str | None: ...

    @abstractmethod
    async def _release_key(self, key: str, task_id: str) -> None: ...

    @abstractmethod
    async def _acquire_lock(self, name: str, owner: str, ttl: float) -> bool: ...

    @abstractmethod
    async def _get_meta(self, key: str) -> str | None: ...

    @abstractmethod
    async def _set_meta(self, key: str, value: str) -> None: ...

    # System-of-record primitives: not abstract, so a backend written before them still works
    # (``system_of_record = False``: the manager uses this instance's own counters and feed).

    async def _read_stats(self) -> dict[str, float]:
        """Every stored counter (keys in ``stats.py``); missing keys read as 0."""
        raise BackendError(f"{self.describe()} keeps no stats")

    async def _read_throughput(self, first_bucket: int) -> list[tuple[int, int, int]]:
        """(bucket, became SUCCESS, became FAILED) for buckets >= ``first_bucket``."""
        raise BackendError(f"{self.describe()} keeps no throughput")

    async def _changes_after(
        self, cursor: str | None, limit: int
    ) -> tuple[list[tuple[str, list[str]]], str, bool]:
        """Up to ``limit`` change entries strictly after ``cursor``, oldest first, the cursor of
        the last one returned (``cursor`` itself when none) and whether entries after
        ``cursor`` were pruned unread. ``cursor`` None: ``([], newest cursor, False)``."""
        raise BackendError(f"{self.describe()} keeps no change feed")

    async def _read_rows(self, task_ids: list[str]) -> list[tuple[str, str | bytes]]:
        """(task_id, data) of the ids that exist; override to read them in one round trip."""
        out: list[tuple[str, str | bytes]] = []
        for task_id in task_ids:
            data = await self._read_row(task_id)
            if data is not None:
                out.append((task_id, data))
        return out

    # Maintenance primitives: not abstract, so a backend written before them still works for
    # tasks; only ``taskflow keys rotate`` needs them.

    async def _journal_page(
        self, after: str | None, limit: int
    ) -> list[tuple[str, str | None, str]]:
        """(task_id, owner, data) of entries with task_id > ``after``, ascending, ``limit``."""
        raise BackendError(f"{self.describe()} cannot list its journal (needed by key rotation)")

    async def _journal_update(self, items: list[tuple[str, str]]) -> int:
        """Replace the data of existing entries only, owner untouched; returns how many."""
        raise BackendError(f"{self.describe()} cannot update its journal (needed by key rotation)")

    async def _update_rows(self, items: list[tuple[str, str]]) -> int:
        """Replace the ``data`` of existing records only; returns how many."""
        raise BackendError(f"{self.describe()} cannot update records (needed by key rotation)")

    # Several-instance primitives: not abstract, so a backend written before them still runs
    # tasks; each raises NotImplementedError naming what needs it. ``BackendContract`` checks
    # them.

    async def _put_instance(self, instance_id: str, data: str, ttl: float) -> None:
        """Insert or replace ``instance_id``'s ``data``, expiring ``ttl`` seconds from now."""
        raise self._missing("instance announcements (GET /tasks/instances)")

    async def _list_instances(self) -> list[tuple[str, str]]:
        """(instance_id, data) of every unexpired announcement, any order."""
        raise self._missing("instance announcements (GET /tasks/instances)")

    async def _remove_instance(self, instance_id: str) -> None:
        """Delete ``instance_id``'s announcement if present."""
        raise self._missing("instance announcements (GET /tasks/instances)")

    async def _send_command(self, data: str) -> None:
        """Append ``data`` to the command channel (and prune what is older than a minute)."""
        raise self._missing("the command channel (commands across instances)")

    async def _command_position(self) -> str:
        """The position of the newest command (a position before any when there is none)."""
        raise self._missing("the command channel (commands across instances)")

    async def _read_commands(self, after: str, wait: float) -> list[tuple[str, str]]:
        """(position, data) of commands after ``after``, oldest first. May wait up to ``wait``
        seconds for one; returning at once is fine (the caller polls)."""
        raise self._missing("the command channel (commands across instances)")

    async def _put_schedule(self, run_key: str, run_at: float, data: str) -> bool:
        """Insert the row unless ``run_key`` exists, atomically; True when inserted."""
        raise self._missing("one-off schedule rows (schedule_once)")

    async def _take_schedule(self, run_key: str) -> tuple[float, str] | None:
        """Delete the row and return (run_at, data), atomically; None when absent."""
        raise self._missing("one-off schedule rows (schedule_once)")

    async def _list_schedules(self, before: float | None) -> list[tuple[str, float, str]]:
        """(run_key, run_at, data) with run_at < ``before`` (all when None), by run_at."""
        raise self._missing("one-off schedule rows (schedule_once)")

    async def _take_rate_token(self, key: str, interval: float, burst: int) -> float:
        """GCRA on the state stored under ``key`` (see ``ratelimit.gcra_step``), atomically:
        read the theoretical arrival time (missing: now), and if ``now >= tat - (burst - 1) *
        interval`` store ``max(tat, now) + interval`` and return 0.0; else store nothing and
        return the seconds until that holds. Use one clock for every caller (the server's)."""
        raise self._missing("rate limits (rate_limit= on a task or a queue)")

    async def _append_audit(self, data: str, keep: int) -> None:
        """Store ``data`` after every entry stored so far and delete all but the newest
        ``keep``, in one atomic step (concurrent callers never overwrite one another)."""
        raise self._missing("the audit trail (TaskAdmin's audit log across instances)")

    async def _read_audit(self, limit: int) -> Sequence[str | bytes]:
        """The data of the newest ``limit`` entries, newest (last stored) first."""
        raise self._missing("the audit trail (TaskAdmin's audit log across instances)")

    def _missing(self, feature: str) -> NotImplementedError:
        return NotImplementedError(f"{self.describe()} does not implement {feature}")

    # Counter primitives: not abstract either. A backend without them raises
    # NotImplementedError and TaskAdmin keeps its login limits and ended sessions per process.

    async def _counter_add(self, key: str, amount: int, ttl: float) -> int:
        raise self._missing("shared counters (TaskAdmin's login limits and ended sessions)")

    async def _counter_get(self, key: str) -> tuple[int, float]:
        raise self._missing("shared counters (TaskAdmin's login limits and ended sessions)")

    async def _counter_delete(self, key: str) -> None:
        raise self._missing("shared counters (TaskAdmin's login limits and ended sessions)")

    # Data written by fastapi-taskflow 0.12 (``legacy.py`` imports it once). Not abstract: a
    # backend with no 0.12 predecessor has none.

    async def _legacy_page(self, table: str, after: str | None, limit: int) -> list[Row]:
        """Rows of 0.12's ``table`` (``task_snapshots``, ``task_pending_requeue`` or
        ``task_scheduled_once``) as column -> value, key (``task_id``; ``run_key``) > ``after``
        ascending, at most ``limit``; [] when there is no such table."""
        return []

    async def _legacy_delete(self, table: str, keys: list[str]) -> None:
        """Remove rows of 0.12's ``table`` by key (once they are imported here)."""
