"""Key rotation: stored payloads move to the first key, in resumable batches."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from fastapi_taskflow import MemoryBackend, QueueConfig, SqliteBackend, TaskManager, TaskStatus
from fastapi_taskflow.backends.base import JournalEntry, TaskBackend
from fastapi_taskflow.crypto import ArgumentCipher
from fastapi_taskflow.keyrotation import CURSOR_KEY, rotate_keys
from fastapi_taskflow.models import TaskRecord
from fastapi_taskflow.serialization import encode_call

OLD, NEW, LOST = (Fernet.generate_key() for _ in range(3))


def sealed(key: bytes, *args: Any) -> bytes:
    return Fernet(key).encrypt(encode_call(args, {}))


async def seed(backend: TaskBackend, count: int, key: bytes = OLD) -> None:
    """``count`` finished records and ``count`` journal entries encrypted with ``key``."""
    await backend.save_records(
        [
            TaskRecord(
                task_id=f"r{i}",
                func_name="f",
                status=TaskStatus.SUCCESS,
                encrypted_payload=sealed(key, i),
            )
            for i in range(count)
        ]
    )
    await backend.journal_put(
        [
            JournalEntry(task_id=f"j{i}", func_name="f", payload=sealed(key, i), encrypted=True)
            for i in range(count)
        ],
        "owner",
    )


async def test_rotation_moves_journal_and_history_to_the_first_key() -> None:
    """Every payload is readable with the new key alone afterwards; a rerun changes nothing."""
    backend = MemoryBackend()
    await seed(backend, 5)
    cipher = ArgumentCipher([NEW, OLD])
    seen: list[tuple[str, int, int | None]] = []

    report = await rotate_keys(backend, cipher, batch_size=2, progress=lambda *p: seen.append(p))

    assert (report.rotated, report.total, report.skipped_undecryptable) == (10, 10, 0)
    new_only = ArgumentCipher(NEW)
    entries, _ = await backend.journal_page()
    assert all(new_only.is_current(e.payload) for e in entries)
    for i in range(5):
        record = await backend.get_record(f"r{i}")
        assert record is not None
        assert record.encrypted_payload is not None
        assert new_only.decrypt(record.encrypted_payload) == encode_call((i,), {})
    assert seen[-1] == ("history", 5, 5)
    assert any(phase == "journal" for phase, _, _ in seen)
    assert await backend.get_meta(CURSOR_KEY) == ""

    again = await rotate_keys(backend, cipher)
    assert (again.rotated, again.unchanged, again.total) == (0, 10, 10)


async def test_undecryptable_payloads_are_counted_listed_and_left_alone() -> None:
    """A payload no configured key opens is reported, not changed."""
    backend = MemoryBackend()
    await seed(backend, 2)
    await backend.save_records(
        [
            TaskRecord(
                task_id="lost",
                func_name="f",
                status=TaskStatus.FAILED,
                encrypted_payload=sealed(LOST, 1),
            )
        ]
    )

    report = await rotate_keys(backend, ArgumentCipher([NEW, OLD]))

    assert (report.rotated, report.skipped_undecryptable, report.total) == (4, 1, 5)
    assert report.undecryptable_ids == ["lost"]
    stored = await backend.get_record("lost")
    assert stored is not None
    assert Fernet(LOST).decrypt(stored.encrypted_payload or b"")


async def test_an_interrupted_rotation_resumes_from_its_cursor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run that dies mid-way leaves a cursor; the next run resumes and finishes the job."""
    backend = MemoryBackend()
    await seed(backend, 4)
    cipher = ArgumentCipher([NEW, OLD])
    real_update = backend.update_records
    calls = {"n": 0}

    async def failing_update(records: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("backend went away")
        return await real_update(records)

    monkeypatch.setattr(backend, "update_records", failing_update)
    with pytest.raises(ConnectionError):
        await rotate_keys(backend, cipher, batch_size=1)
    assert '"phase": "records"' in (await backend.get_meta(CURSOR_KEY) or "")

    report = await rotate_keys(backend, cipher, batch_size=1)
    assert report.resumed
    assert report.rotated == 8
    new_only = ArgumentCipher(NEW)
    for i in range(4):
        record = await backend.get_record(f"r{i}")
        assert record is not None
        assert new_only.is_current(record.encrypted_payload or b"")


async def test_a_cursor_for_another_key_is_ignored() -> None:
    """A leftover cursor from a rotation to a different key does not skip anything."""
    backend = MemoryBackend()
    await seed(backend, 2)
    other = ArgumentCipher([LOST, OLD])
    await backend.set_meta(
        CURSOR_KEY,
        f'{{"key": "{other.key_id}", "phase": "records", "after": "zzz", "counts": {{}}}}',
    )
    report = await rotate_keys(backend, ArgumentCipher([NEW, OLD]))
    assert not report.resumed
    assert report.rotated == 4


async def test_sealed_errors_are_rotated_too() -> None:
    """A record's sealed error (encrypt_errors) moves to the first key with its arguments."""
    backend = MemoryBackend()
    await backend.save_records(
        [
            TaskRecord(
                task_id="e1",
                func_name="f",
                status=TaskStatus.FAILED,
                encrypted_payload=sealed(OLD, 1),
                encrypted_error=Fernet(OLD).encrypt(b"{}"),
            )
        ]
    )
    report = await rotate_keys(backend, ArgumentCipher([NEW, OLD]))
    assert report.rotated == 1
    record = await backend.get_record("e1")
    assert record is not None
    assert ArgumentCipher(NEW).is_current(record.encrypted_error or b"")


async def test_rotate_with_tasks_pending_across_a_restart(tmp_path: Path) -> None:
    """Tasks journaled under the old key run after a rotation on an app with only the new key."""
    db = tmp_path / "tasks.db"
    ran: list[str] = []
    gate = asyncio.Event()

    def build(key: Any) -> tuple[TaskManager, Any, Any]:
        manager = TaskManager(
            snapshot_backend=SqliteBackend(db),
            encrypt_args_key=key,
            requeue_pending=True,
            queues={"one": QueueConfig(concurrency=1)},
            drain_timeout=0,
        )

        @manager.task(queue="one", name="block")
        async def block() -> None:
            await gate.wait()

        @manager.task(queue="one", name="mail")
        async def mail(to: str) -> None:
            ran.append(to)

        return manager, block, mail

    first, block, mail = build(OLD)
    await first.startup()
    first.add_task(block)
    for name in ("ann", "bob"):
        first.add_task(mail, name)
    await first.shutdown()

    backend = SqliteBackend(db)
    await backend.open()
    report = await rotate_keys(backend, ArgumentCipher([NEW, OLD]))
    await backend.close()
    assert report.skipped_undecryptable == 0
    assert report.rotated >= 3  # the three journaled tasks (and any history rows)

    gate.set()
    second, _, _ = build(NEW)
    await second.startup()
    await second.join(timeout=10)
    await second.shutdown()
    assert sorted(ran) == ["ann", "bob"]
