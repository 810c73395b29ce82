"""Data written by fastapi-taskflow 0.12, found and imported once.

0.12 kept finished tasks in ``task_snapshots`` and the tasks still waiting at a shutdown in
``task_pending_requeue`` (the same columns in SQLite, PostgreSQL and MySQL; Redis hashes with
the same fields under ``fbtm:snapshots:...``). Each backend reads its own layout
(``TaskBackend._legacy_page``); this module turns the rows into records and journal entries:

* finished history is saved as records (rows stay in the 0.12 tables, so a rollback to 0.12
  still has its history);
* waiting tasks are journaled unowned, so the next claim (this startup's, or a running
  instance's) runs them, and are then removed from 0.12's table; one whose arguments cannot be
  read becomes a FAILED record saying why;
* one-off runs (``task_scheduled_once``) become this version's schedule rows, armed by the
  scheduler when it starts;
* the backend's metadata remembers the import (``LEGACY_MARK``), so it happens once, at the
  first startup or on ``taskflow migrate``.

0.12 sealed arguments as a Fernet token of a pickle of ``(args, kwargs)``. With the same
``encrypt_args_key`` they are read (the token authenticates the app's own data before anything
is unpickled) and sealed again in this version's format.
"""

from __future__ import annotations

import base64
import json
import logging
import pickle
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, get_args

from .backends.base import JournalEntry, Row, ScheduledRun, TaskBackend
from .crypto import ArgumentCipher
from .models import ExecutorKind, TaskRecord, TaskSource, TaskStatus
from .serialization import encode_call

logger = logging.getLogger("fastapi_taskflow.legacy")

LEGACY_MARK = "imported_0_12"
_LOCK = "taskflow:import-0.12"
_PAGE = 1000
_UNFINISHED = {TaskStatus.PENDING.value, TaskStatus.RUNNING.value}


@dataclass(slots=True)
class LegacyImport:
    """What an import found: counts, and when the import was done."""

    records: int = 0
    waiting: int = 0
    failed: int = 0
    scheduled: int = 0
    unreadable: int = 0
    imported_at: str = ""
    #: True when an earlier run had already imported (the counts are that run's).
    already: bool = False

    @property
    def found(self) -> bool:
        return bool(
            self.records or self.waiting or self.failed or self.scheduled or self.unreadable
        )

    def summary(self) -> str:
        return (
            f"{self.records} finished records, {self.waiting} waiting tasks journaled to run,"
            f" {self.failed} waiting tasks that cannot run (FAILED), {self.scheduled} one-off runs"
            f" scheduled, {self.unreadable} unreadable rows skipped"
        )


class _Rows:
    """Turns 0.12 rows into this version's records and journal entries."""

    def __init__(self, cipher: ArgumentCipher | None) -> None:
        self.cipher = cipher
        self.now = datetime.now(UTC)

    def call(self, row: Row) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """The row's arguments, or None when they are sealed and cannot be opened."""
        token = _text(row.get("encrypted_payload"))
        if token is None:
            args = json.loads(_text(row.get("args_json")) or "[]")
            kwargs = json.loads(_text(row.get("kwargs_json")) or "{}")
            return tuple(args), dict(kwargs)
        if self.cipher is None:
            return None
        try:
            args, kwargs = pickle.loads(self.cipher.decrypt(token.encode()))
        except Exception:  # a wrong key, or a token that is not 0.12's
            logger.warning("cannot open the 0.12 arguments of task %s", row.get("task_id"))
            return None
        return tuple(args), dict(kwargs)

    def sealed(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes | None:
        return self.cipher.encrypt(encode_call(args, kwargs)) if self.cipher else None

    def record(self, row: Row) -> TaskRecord:
        status = str(row["status"])
        if status not in {s.value for s in TaskStatus}:
            raise ValueError(f"unknown status {status!r}")
        call = self.call(row)
        logs = list(json.loads(_text(row.get("logs_json")) or "[]"))
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = {}
        sealed = None
        if call is None:
            logs.append("arguments sealed by fastapi-taskflow 0.12 could not be read")
        elif _text(row.get("encrypted_payload")) is not None:
            sealed = self.sealed(*call)
        else:
            args, kwargs = call
        end_time = _when(row.get("end_time"))
        error = _text(row.get("error"))
        if status in _UNFINISHED:
            # 0.12 stopped while it ran; nothing here will finish it.
            error = error or f"was {status} when fastapi-taskflow 0.12 stopped"
            status, end_time = TaskStatus.INTERRUPTED.value, end_time or self.now
        return TaskRecord(
            task_id=str(row["task_id"]),
            func_name=str(row["func_name"]),
            status=TaskStatus(status),
            args=args,
            kwargs=kwargs,
            created_at=_when(row.get("created_at")) or self.now,
            start_time=_when(row.get("start_time")),
            end_time=end_time,
            retries_used=int(row.get("retries_used") or 0),
            error=error,
            logs=logs,
            stacktrace=_text(row.get("stacktrace")),
            source=_one_of(row.get("source"), TaskSource, "manual"),
            priority=int(row["priority"]) if _text(row.get("priority")) else None,
            executor=_one_of(row.get("executor"), ExecutorKind, "async"),
            queue=_text(row.get("queue")) or "default",
            encrypted_payload=sealed,
        )

    def waiting(self, row: Row) -> JournalEntry | TaskRecord:
        """A journal entry that runs the waiting task, or a FAILED record when it cannot."""
        call = self.call(row)
        created = _when(row.get("created_at")) or self.now
        if call is None:
            return TaskRecord(
                task_id=str(row["task_id"]),
                func_name=str(row["func_name"]),
                status=TaskStatus.FAILED,
                created_at=created,
                end_time=self.now,
                error=(
                    "its arguments were sealed by fastapi-taskflow 0.12 and cannot be read"
                    " without 0.12's encrypt_args_key, which this app was not given at its"
                    " first start; enqueue the task again"
                ),
                queue=_text(row.get("queue")) or "default",
            )
        sealed = self.sealed(*call) if _text(row.get("encrypted_payload")) else None
        return JournalEntry(
            task_id=str(row["task_id"]),
            func_name=str(row["func_name"]),
            payload=sealed if sealed is not None else encode_call(*call),
            encrypted=sealed is not None,
            created_at=created,
            queue=_text(row.get("queue")) or "default",
            retries_used=int(row.get("retries_used") or 0),
            requeue=True,
        )


def _scheduled_run(rows: _Rows, row: Row) -> ScheduledRun | None:
    """0.12's one-off run as this version's schedule row; None when its arguments are sealed
    and cannot be opened (it stays in 0.12's table, counted as unreadable)."""
    call = rows.call(row)
    if call is None:
        return None
    sealed = rows.sealed(*call) if _text(row.get("encrypted_payload")) else None
    payload = sealed if sealed is not None else encode_call(*call)
    fire_at = _when(row.get("fire_at"))
    if fire_at is None:
        raise ValueError("no fire_at")
    run_at = fire_at.timestamp()
    document = {
        "func_name": str(row["func_name"]),
        "payload": base64.b64encode(payload).decode("ascii"),
        "encrypted": sealed is not None,
        "run_at": run_at,
        "tags": dict(json.loads(_text(row.get("tags_json")) or "{}")),
        "priority": int(row["priority"]) if _text(row.get("priority")) else None,
        "queue": _text(row.get("queue")),
        "idempotency_key": _text(row.get("idempotency_key")),
    }
    return ScheduledRun(str(row["run_key"]), run_at, document)


def _text(value: Any) -> str | None:
    """A column or hash field as text; None for NULL and for Redis's empty strings."""
    if value is None or value == "":
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _one_of(value: Any, kind: Any, default: str) -> Any:
    """``value`` if it is one of the ``Literal`` type ``kind``'s values, else ``default``."""
    text = _text(value)
    return text if text in get_args(kind) else default


def _when(value: Any) -> datetime | None:
    text = _text(value)
    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    # 0.12 wrote some times with utcnow(): naive, but UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def _pages(
    backend: TaskBackend, table: str, key: str = "task_id"
) -> AsyncIterator[list[Row]]:
    """0.12's ``table`` a page at a time, in ``key`` order."""
    after: str | None = None
    while True:
        rows = await backend._legacy_page(table, after, _PAGE)
        if not rows:
            return
        yield rows
        if len(rows) < _PAGE:
            return
        after = str(rows[-1][key])


async def _import_scheduled(backend: TaskBackend, rows: _Rows, report: LegacyImport) -> None:
    """0.12's one-off runs become schedule rows (the scheduler arms them at its start)."""
    async for page in _pages(backend, "task_scheduled_once", "run_key"):
        done: list[str] = []
        for row in page:
            try:
                run = _scheduled_run(rows, row)
            except (KeyError, TypeError, ValueError) as exc:
                run = None
                logger.warning(
                    "skipping unreadable 0.12 one-off run %s: %s", row.get("run_key"), exc
                )
            if run is None:
                report.unreadable += 1
                continue
            try:
                await backend.put_scheduled(run)  # False: the key is taken here already
            except NotImplementedError:
                logger.warning(
                    "%s keeps no one-off runs: 0.12's stay where they are", backend.describe()
                )
                return
            done.append(run.run_key)
            report.scheduled += 1
        if done:
            await backend._legacy_delete("task_scheduled_once", done)


async def import_legacy(backend: TaskBackend, cipher: ArgumentCipher | None = None) -> LegacyImport:
    """Import 0.12's data from ``backend`` unless that was done before; what was imported.

    Safe when several instances start at once: one takes a lock and imports, the others find
    the lock taken and go on (the entries it journals are claimable by any of them).
    """
    mark = await backend.get_meta(LEGACY_MARK)
    if mark is not None:
        return LegacyImport(**{"scheduled": 0, **json.loads(mark), "already": True})
    owner = f"taskflow-import-{uuid.uuid4().hex[:8]}"
    if not await backend.acquire_lock(_LOCK, owner, 600):
        return LegacyImport(already=True)
    report = LegacyImport(imported_at=datetime.now(UTC).isoformat())
    rows = _Rows(cipher)
    async for page in _pages(backend, "task_snapshots"):
        records = []
        for row in page:
            try:
                records.append(rows.record(row))
            except (KeyError, TypeError, ValueError) as exc:
                report.unreadable += 1
                logger.warning("skipping unreadable 0.12 record %s: %s", row.get("task_id"), exc)
        await backend.save_records(records)
        report.records += len(records)
    async for page in _pages(backend, "task_pending_requeue"):
        entries: list[JournalEntry] = []
        failed: list[TaskRecord] = []
        for row in page:
            try:
                made = rows.waiting(row)
            except (KeyError, TypeError, ValueError) as exc:
                report.unreadable += 1
                logger.warning(
                    "skipping unreadable 0.12 waiting task %s: %s", row.get("task_id"), exc
                )
                continue
            if isinstance(made, JournalEntry):
                entries.append(made)
            else:
                failed.append(made)
        await backend.save_records(failed)
        await backend.journal_put(entries, owner)
        await backend.journal_release(owner)  # unowned: the next claim runs them
        await backend._legacy_delete("task_pending_requeue", [str(r["task_id"]) for r in page])
        report.waiting += len(entries)
        report.failed += len(failed)
    await _import_scheduled(backend, rows, report)
    fields = asdict(report)
    fields.pop("already")
    await backend.set_meta(LEGACY_MARK, json.dumps(fields))
    if report.found:
        logger.info(
            "imported fastapi-taskflow 0.12 data from %s: %s", backend.describe(), report.summary()
        )
    return report
