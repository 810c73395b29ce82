"""The audit trail (admin/audit.py): where its entries live and that none is lost."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fastapi_taskflow.admin.audit import META_KEY, AuditLog
from fastapi_taskflow.backends.base import TaskBackend
from fastapi_taskflow.backends.memory import MemoryBackend
from fastapi_taskflow.backends.sqlite import SqliteBackend


def audit_on(
    backend: TaskBackend | None, started: bool = True, max_entries: int = 1000
) -> AuditLog:
    """An AuditLog whose manager is (started or not) on ``backend``."""
    manager: Any = SimpleNamespace(backend=backend, started=started, instance_id="i-test")
    return AuditLog(lambda: manager, max_entries=max_entries)


class FailingBackend(MemoryBackend):
    """A backend whose audit trail is down (the server is unreachable)."""

    async def _append_audit(self, data: str, keep: int) -> None:
        raise OSError("connection refused")


class OldBackend(MemoryBackend):
    """A custom backend written before the audit primitives."""

    async def _append_audit(self, data: str, keep: int) -> None:
        raise self._missing("the audit trail")

    async def _read_audit(self, limit: int) -> list[str | bytes]:
        raise self._missing("the audit trail")


@pytest.fixture
async def shared_file(tmp_path: Path) -> AsyncIterator[tuple[SqliteBackend, SqliteBackend]]:
    """Two backend objects on one SQLite file: two instances of one app."""
    first = SqliteBackend(tmp_path / "tasks.db")
    second = SqliteBackend(tmp_path / "tasks.db")
    await first.open()
    await second.open()
    yield first, second
    await first.close()
    await second.close()


async def test_without_backend_entries_are_newest_first_and_bounded() -> None:
    """No backend: the trail lives in this process, newest first, the newest max_entries."""
    audit = audit_on(None, max_entries=3)
    for n in range(5):
        await audit.record("cancel", f"t{n}", "ann", "ok")
    assert [e.task_id for e in await audit.entries()] == ["t4", "t3", "t2"]
    assert [e.task_id for e in await audit.entries(limit=2)] == ["t4", "t3"]


async def test_two_instances_recording_at_once_lose_no_entry(
    shared_file: tuple[SqliteBackend, SqliteBackend],
) -> None:
    """Two admins on one backend record 40 actions at once: both list all 40."""
    first, second = (audit_on(backend) for backend in shared_file)
    await asyncio.gather(
        *((first if n % 2 else second).record("retry", f"t{n}", "ann", "ok") for n in range(40))
    )
    for audit in (first, second):
        entries = await audit.entries(limit=1000)
        assert sorted(e.task_id for e in entries) == sorted(f"t{n}" for n in range(40))


async def test_the_backend_keeps_the_trail_for_a_new_admin() -> None:
    """Entries recorded by one admin are listed by another on the same backend."""
    backend = MemoryBackend()
    await audit_on(backend).record("cancel", "t1", "ann", "ok", status="running")
    [entry] = await audit_on(backend).entries()
    assert (entry.action, entry.task_id, entry.actor) == ("cancel", "t1", "ann")
    assert entry.detail == {"result": "ok", "status": "running"}


async def test_before_startup_entries_stay_in_this_process() -> None:
    """A manager not started yet: the entry is kept here, the backend is not touched."""
    backend = MemoryBackend()
    audit = audit_on(backend, started=False)
    await audit.record("cancel", "t1", "ann", "ok")
    assert [e.task_id for e in await audit.entries()] == ["t1"]
    assert await backend.read_audit(10) == []


async def test_a_failing_backend_keeps_the_entry_here_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The backend refuses the entry: it is logged and still listed by this instance."""
    audit = audit_on(FailingBackend())
    with caplog.at_level(logging.ERROR, "fastapi_taskflow.admin"):
        await audit.record("cancel", "t1", "ann", "ok")
    assert "could not persist the audit entry" in caplog.text
    assert [e.task_id for e in await audit.entries()] == ["t1"]


async def test_a_backend_without_audit_primitives_keeps_the_trail_here(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A custom backend without the audit primitives: one warning, the trail in this process."""
    audit = audit_on(OldBackend())
    with caplog.at_level(logging.WARNING, "fastapi_taskflow.admin"):
        await audit.record("cancel", "t1", "ann", "ok")
        await audit.record("cancel", "t2", "ann", "ok")
    assert caplog.text.count("keeps no audit trail") == 1
    assert [e.task_id for e in await audit.entries()] == ["t2", "t1"]


def old_document(count: int) -> str:
    """The trail as an older version stored it: one JSON list in meta, oldest first."""
    return json.dumps(
        [
            {
                "entry_id": f"old{n}",
                "action": "retry",
                "task_id": f"t{n}",
                "actor": "ann",
                "timestamp": f"2025-01-01T12:00:{n:02d}+00:00",
                "detail": {"result": "ok"},
            }
            for n in range(count)
        ]
    )


async def test_the_old_meta_document_is_moved_once(
    shared_file: tuple[SqliteBackend, SqliteBackend],
) -> None:
    """A trail an older version kept in meta is listed (newest first), then the document is
    gone; two instances starting on it at once move it once."""
    first_backend, second_backend = shared_file
    await first_backend.set_meta(META_KEY, old_document(3))
    first, second = audit_on(first_backend), audit_on(second_backend)
    await asyncio.gather(first.entries(), second.entries())
    await first.record("cancel", "new", "bob", "ok")
    for audit in (first, second):
        assert [e.task_id for e in await audit.entries()] == ["new", "t2", "t1", "t0"]
    assert not await first_backend.get_meta(META_KEY)
