"""Durability: journal, requeue after shutdown or crash, claims, corrupt rows, outages, barrier."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from control_helpers import wait_until
from cryptography.fernet import Fernet
from fastapi import Depends, FastAPI

from asgi_calls import empty_body, post_scope
from fastapi_taskflow import ManagedBackgroundTasks, TaskManager, TaskStatus
from fastapi_taskflow.backends import MemoryBackend
from fastapi_taskflow.backends.base import JournalEntry, TaskBackend
from fastapi_taskflow.backends.sqlite import SqliteBackend
from fastapi_taskflow.errors import BackendError
from fastapi_taskflow.models import TaskRecord
from fastapi_taskflow.serialization import encode_call
from sqlite_files import sqlite_file

FAST = {"heartbeat_interval": 0.05, "lease_ttl": 0.3, "drain_timeout": 0.0}


class FlakyBackend(MemoryBackend):
    """A memory backend that can be switched off: every primitive raises while ``down``."""

    shared = True

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.saved: list[str] = []

    def _check(self) -> None:
        if self.down:
            raise BackendError("backend is down (test)")

    async def _write_rows(self, rows: list[dict[str, Any]], origin: str = "") -> None:
        self._check()
        self.saved += [str(r["task_id"]) for r in rows]
        await super()._write_rows(rows, origin)

    async def _journal_write(self, items: list[tuple[str, str]], owner: str) -> None:
        self._check()
        await super()._journal_write(items, owner)

    async def _journal_delete(self, task_ids: list[str]) -> None:
        self._check()
        await super()._journal_delete(task_ids)

    async def _journal_claim(self, owner: str, limit: int) -> list[tuple[str, str]]:
        self._check()
        return await super()._journal_claim(owner, limit)

    async def _heartbeat(self, owner: str, ttl: float) -> None:
        self._check()
        await super()._heartbeat(owner, ttl)

    def journal_ids(self) -> set[str]:
        return set(self._journal)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "tasks.db"


def build(path: Path, seen: list[Any], **options: Any) -> tuple[TaskManager, Any, Any]:
    """A manager on ``path`` with a gated ``blocker`` and a ``record_call`` task."""
    tm = TaskManager(snapshot_db=str(path), **{**FAST, **options})
    gate = asyncio.Event()

    @tm.task(name="jobs.blocker")
    async def blocker() -> None:
        await gate.wait()

    @tm.task(name="jobs.record_call")
    async def record_call(*args: Any, **kwargs: Any) -> None:
        seen.append((args, kwargs))

    return tm, blocker, record_call


async def test_requeued_arguments_tags_priority_and_queue_survive_a_restart(db: Path) -> None:
    """Defect 9: a requeued task gets back datetime, tuple, bytes, Decimal, UUID, int-keyed
    dicts, and keeps its tags, priority and queue."""
    seen: list[Any] = []
    args = (datetime(2025, 5, 1, 12, tzinfo=UTC), (1, "a"), b"\x00\xff", Decimal("1.10"))
    kwargs = {"ident": uuid.UUID(int=7), "by_id": {1: "one"}, "when": timedelta(seconds=3)}
    tm, blocker, record_call = build(db, seen, requeue_pending=True, max_concurrent_tasks=1)
    await tm.startup()
    tm.add_task(blocker)
    handle = tm.add_task(
        record_call, *args, tags={"team": "a"}, priority=5, queue="default", **kwargs
    )
    await tm.shutdown()
    assert seen == []

    again, _, _ = build(db, seen, requeue_pending=True)
    await again.startup()
    try:
        record = await asyncio.wait_for(again.wait_for(again.store.get(handle.task_id)), 5)
    finally:
        await again.shutdown()
    assert record.status is TaskStatus.SUCCESS
    assert seen == [(args, kwargs)]
    got_args, got_kwargs = seen[0]
    assert [type(a) for a in got_args] == [type(a) for a in args]
    assert {k: type(v) for k, v in got_kwargs.items()} == {k: type(v) for k, v in kwargs.items()}
    assert (record.tags, record.priority, record.queue) == ({"team": "a"}, 5, "default")
    assert record.source == "requeue"
    assert record.requeue_count == 0  # it never started before: no attempt counted


async def test_without_requeue_pending_tasks_are_recorded_interrupted(db: Path) -> None:
    """Defect 2: at a clean shutdown without requeue, waiting tasks become INTERRUPTED."""
    seen: list[Any] = []
    tm, blocker, record_call = build(db, seen, max_concurrent_tasks=1)
    await tm.startup()
    tm.add_task(blocker)
    waiting = tm.add_task(record_call, 1)
    await tm.shutdown()
    backend = SqliteBackend(db)
    await backend.open()
    try:
        record = await backend.get_record(waiting.task_id)
    finally:
        await backend.close()
    assert record is not None
    assert record.status is TaskStatus.INTERRUPTED
    assert "shut down" in (record.error or "")


async def test_running_task_is_drained_then_requeued_with_an_attempt_counted(db: Path) -> None:
    """A requeueable task still running after drain_timeout is interrupted, kept, and runs
    again at the next start with requeue_count 1."""
    seen: list[Any] = []
    tm, blocker, _ = build(db, seen, requeue_pending=True)
    await tm.startup()
    running = tm.add_task(blocker)
    await wait_until(lambda: running.status is TaskStatus.RUNNING)
    await tm.shutdown()
    assert running.status is TaskStatus.PENDING  # kept: it waits for the next start

    again, _, _ = build(db, seen, requeue_pending=True)
    await again.startup()
    try:
        record = again.store.get(running.task_id)
        assert record is not None
        assert record.status is TaskStatus.RUNNING
        assert record.requeue_count == 1
    finally:
        await again.shutdown()


@pytest.mark.parametrize("restart", ["new manager", "same manager"])
async def test_a_task_kept_at_shutdown_counts_pending_then_one_success(
    db: Path, restart: str
) -> None:
    """A running task kept at shutdown is saved and counted PENDING (it waits for the next
    start), not INTERRUPTED; after its rerun the counters hold one SUCCESS and nothing else."""
    started, release = asyncio.Event(), asyncio.Event()

    def make() -> tuple[TaskManager, Any]:
        tm = TaskManager(snapshot_db=str(db), requeue_pending=True, **FAST)

        @tm.task(name="jobs.hold")
        async def hold() -> None:
            started.set()
            await release.wait()

        return tm, hold

    tm, hold = make()
    await tm.startup()
    handle = tm.add_task(hold)
    await started.wait()
    await tm.shutdown()
    assert handle.status is TaskStatus.PENDING
    assert (tm.metrics()["pending"], tm.metrics()["interrupted"]) == (1, 0)
    backend = SqliteBackend(db)
    await backend.open()
    try:
        saved = await backend.get_record(handle.task_id)
    finally:
        await backend.close()
    assert saved is not None
    assert saved.status is TaskStatus.PENDING

    again = make()[0] if restart == "new manager" else tm
    release.set()
    await again.startup()
    try:
        await again.join(timeout=5)
        metrics = again.metrics()
        record = again.store.get(handle.task_id)
    finally:
        await again.shutdown()
    assert record is not None
    assert record.status is TaskStatus.SUCCESS
    counts = {s.value: metrics[s.value] for s in TaskStatus}
    assert counts == {**dict.fromkeys(counts, 0), "success": 1}
    assert metrics["total"] == 1


async def _dead_owner_entries(backend: TaskBackend, *entries: JournalEntry) -> None:
    """Entries of an instance that died: its lease is about to expire and is never renewed."""
    await backend.open()
    await backend.heartbeat("dead", 0.2)
    await backend.journal_put(list(entries), "dead")


def _entry(task_id: str, func_name: str = "jobs.record_call", **fields: Any) -> JournalEntry:
    payload = fields.pop("payload", encode_call((task_id,), {}))
    return JournalEntry(
        task_id=task_id, func_name=func_name, payload=payload, requeue=True, **fields
    )


async def test_live_instance_claims_a_dead_instances_tasks_and_caps_requeues() -> None:
    """While running, an instance claims entries whose owner's lease expired: one mid-run
    fewer than max_requeues times runs again; one past the cap becomes FAILED with the reason."""
    backend = MemoryBackend()
    await _dead_owner_entries(
        backend,
        _entry("again", requeue_count=2),
        _entry("poison", requeue_count=3),
    )
    seen: list[Any] = []
    tm = TaskManager(snapshot_backend=backend, max_requeues=2, **FAST)

    @tm.task(name="jobs.record_call")
    async def record_call(*args: Any) -> None:
        seen.append(args)

    await tm.startup()
    try:
        assert tm.store.get("again") is None  # the dead owner's lease was still alive
        await wait_until(lambda: len(seen) == 1 and tm.store.get("poison") is not None)
        await tm.join(timeout=5)
        again, poison = tm.store.get("again"), tm.store.get("poison")
        assert again is not None
        assert poison is not None
        assert again.status is TaskStatus.SUCCESS
        assert poison.status is TaskStatus.FAILED
        assert "max_requeues=2" in (poison.error or "")
        assert tm.metrics()["claimed_tasks"] == 2
    finally:
        await tm.shutdown()
    assert seen == [("again",)]
    assert await backend.journal_owned(tm.instance_id) == []


async def test_a_started_task_marks_its_entry_so_a_crash_counts_an_attempt() -> None:
    """When a requeueable task starts, its journal entry is rewritten with requeue_count + 1."""
    backend = MemoryBackend()
    tm = TaskManager(snapshot_backend=backend, requeue_pending=True, **FAST)
    gate = asyncio.Event()

    @tm.task(name="jobs.blocker")
    async def blocker() -> None:
        await gate.wait()

    await tm.startup()
    try:
        handle = tm.add_task(blocker)

        async def marked() -> bool:
            owned = await backend.journal_owned(tm.instance_id)
            return [e.requeue_count for e in owned] == [1]

        deadline = time.monotonic() + 5
        while not await marked():
            assert time.monotonic() < deadline, "start mark not written"
            await asyncio.sleep(0.01)
        gate.set()
        await handle.wait(timeout=5)
    finally:
        await tm.shutdown()


async def test_corrupt_rows_are_skipped_named_and_counted(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Bad JSON, an unknown task, an undecryptable or unreadable payload: each is skipped with
    a warning naming it, counted in corrupt_rows; the startup goes on and good work runs."""
    key = Fernet.generate_key()
    backend = SqliteBackend(db)
    await _dead_owner_entries(
        backend,
        _entry("good"),
        _entry("unknown", func_name="gone.module:task"),
        _entry("secret", payload=b"not a fernet token", encrypted=True),
        _entry("garbled", payload=b"{not json"),
    )
    await backend.drop_owner("dead")
    await backend.close()
    with sqlite_file(db) as raw:
        raw.execute("INSERT INTO tf_journal (task_id, owner, data) VALUES ('bad', NULL, '{x')")
    caplog.set_level(logging.WARNING)
    seen: list[Any] = []
    tm, _, _ = build(db, seen, encrypt_args_key=key)
    await tm.startup()
    try:
        await tm.join(timeout=5)
        metrics = tm.metrics()
    finally:
        await tm.shutdown()
    assert seen == [(("good",), {})]
    assert metrics["corrupt_rows"] == 4
    text = caplog.text
    for name in ("bad", "unknown", "secret", "garbled"):
        assert f" {name}" in text
    assert "gone.module:task" in text


async def test_idempotency_key_survives_a_restart_while_pending(db: Path) -> None:
    """A pending keyed task requeued at restart still owns its key: the same key returns it."""
    seen: list[Any] = []
    tm, blocker, record_call = build(db, seen, requeue_pending=True, max_concurrent_tasks=1)
    await tm.startup()
    tm.add_task(blocker)
    first = tm.add_task(record_call, 1, idempotency_key="order-9")
    await tm.shutdown()

    again, _, record_again = build(db, seen, requeue_pending=True)
    await again.startup()
    try:
        second = again.add_task(record_again, 2, idempotency_key="order-9")
        assert second == first
        await second.wait(timeout=5)  # (the requeued blocker keeps waiting on its gate)
    finally:
        await again.shutdown()
    assert seen == [((1,), {})]


async def test_outage_buffers_writes_and_drains_when_the_backend_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Backend down: tasks still run, writes wait (buffered_writes, bounded with one warning),
    the heartbeat failure says the lease may expire; back up: the buffer drains and the
    journal entries of active tasks are written again."""
    backend = FlakyBackend()
    tm = TaskManager(
        snapshot_backend=backend,
        requeue_pending=True,
        snapshot_interval=0.05,
        max_buffered=30,
        **FAST,
    )
    gate = asyncio.Event()

    @tm.task(name="jobs.blocker")
    async def blocker() -> None:
        await gate.wait()

    @tm.task(name="jobs.quick")
    async def quick(n: int) -> int:
        return n

    caplog.set_level(logging.WARNING)
    await tm.startup()
    try:
        held = tm.add_task(blocker)
        await wait_until(lambda: held.task_id in backend.journal_ids())
        backend.down = True
        backend._journal.clear()  # a Redis restarted without persistence lost the journal
        handles = [tm.add_task(quick, n) for n in range(40)]
        for handle in handles:
            await handle.wait(timeout=5)
        metrics = tm.metrics()
        assert metrics["buffered_writes"] > 0
        assert metrics["dropped_writes"] > 0
        await wait_until(lambda: "may have expired" in caplog.text, timeout=5)
        backend.down = False
        await wait_until(lambda: tm.metrics()["buffered_writes"] == 0, timeout=5)
        await wait_until(lambda: held.task_id in backend.journal_ids(), timeout=5)
        assert len([r for r in caplog.records if "buffer is full" in r.getMessage()]) == 1
        gate.set()
        await held.wait(timeout=5)
    finally:
        await tm.shutdown()
    assert set(backend.saved) >= {h.task_id for h in handles[-30:]}


async def test_shutdown_writes_only_what_changed(db: Path) -> None:
    """With 5,000 records of history in the backend, startup loads none of them (counts come
    from the backend) and shutdown writes only the records that changed since."""
    backend = SqliteBackend(db)
    await backend.open()
    now = datetime.now(UTC)
    old = [
        TaskRecord(
            f"old{i}", "jobs.record_call", status=TaskStatus.SUCCESS, created_at=now, end_time=now
        )
        for i in range(5000)
    ]
    await backend.save_records(old)
    await backend.close()
    seen: list[Any] = []
    tm, _, record_call = build(db, seen, snapshot_interval=3600)
    await tm.startup()
    assert len(tm.store) == 0
    assert tm.metrics()["success"] == 5000
    saved: set[str] = set()
    assert tm.backend is not None
    original = tm.backend.save_records

    async def counting(records: Any, origin: str = "") -> None:
        saved.update(r.task_id for r in records)
        await original(records, origin)

    tm.backend.save_records = counting  # type: ignore[method-assign]
    handles = [tm.add_task(record_call, n) for n in range(3)]
    await tm.join(timeout=5)
    await tm.shutdown()
    assert saved == {h.task_id for h in handles}


async def test_a_response_waits_for_its_tasks_journal_write() -> None:
    """init_app adds the journal barrier: when the response starts, the entry is committed."""
    backend = FlakyBackend()
    tm = TaskManager(snapshot_backend=backend, requeue_pending=True, **FAST)
    app = FastAPI()
    tm.init_app(app)

    @tm.task(name="jobs.quick")
    async def quick() -> None:
        return None

    @app.post("/run")
    async def run(tasks: ManagedBackgroundTasks = Depends(tm.get_tasks)) -> dict[str, str]:  # noqa: B008
        return {"task_id": tasks.add_task(quick)}

    original = backend._journal_write

    async def slow_write(items: list[tuple[str, str]], owner: str) -> None:
        await asyncio.sleep(0.02)  # a slow disk: the response must not overtake it
        await original(items, owner)

    backend._journal_write = slow_write  # type: ignore[method-assign]
    journaled_at_start: list[set[str]] = []
    bodies: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            journaled_at_start.append(backend.journal_ids())
        elif message["type"] == "http.response.body":
            bodies.append(message.get("body", b""))

    await tm.startup()
    try:
        await app(post_scope("/run"), empty_body, send)
        await tm.join(timeout=5)
    finally:
        await tm.shutdown()
    task_id = json.loads(b"".join(bodies))["task_id"]
    assert journaled_at_start == [{task_id}]


async def test_restarting_the_same_manager_does_not_double_count_history(db: Path) -> None:
    """Counters after a restart equal the history in the backend, not memory plus backend."""
    tm = TaskManager(snapshot_db=str(db))

    @tm.task()
    async def ok(n: int) -> int:
        return n

    for _round in range(2):
        await tm.startup()
        for n in range(3):
            tm.add_task(ok, n)
        await tm.join()
        await tm.shutdown()
    await tm.startup()
    assert tm.metrics()["success"] == 6
    assert tm.metrics()["total"] == 6
    await tm.shutdown()


async def test_the_running_parts_exist_together_only_while_the_manager_runs(
    tmp_path: Path,
) -> None:
    """With a backend, persister, recovery and cluster appear together at startup and go
    together at shutdown; without one, none of them is ever made."""
    tm = TaskManager(snapshot_backend=SqliteBackend(str(tmp_path / "t.db")), **FAST)
    bare = TaskManager()
    assert (tm.persister, tm.recovery, tm.cluster) == (None, None, None)
    await tm.startup()
    await bare.startup()
    try:
        assert tm.persister is not None
        assert tm.recovery is not None
        assert tm.cluster is not None
        assert tm.recovery.persister is tm.persister
        assert (bare.persister, bare.recovery, bare.cluster) == (None, None, None)
    finally:
        await tm.shutdown()
        await bare.shutdown()
    assert (tm.persister, tm.recovery, tm.cluster) == (None, None, None)
