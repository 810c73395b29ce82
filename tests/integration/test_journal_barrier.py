"""The response barrier on a real SQLite file whose write lock another connection holds."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import Depends, FastAPI

from asgi_calls import empty_body, post_scope
from fastapi_taskflow import ManagedBackgroundTasks, TaskManager, TaskStatus
from fastapi_taskflow.backends.base import RecordQuery
from fastapi_taskflow.barrier import JournalBarrier
from sqlite_files import sqlite_file


@dataclass
class Answer:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    journal_at_start: set[str] = field(default_factory=set)


def _journal_ids(path: Path) -> set[str]:
    """The committed journal, read by a third connection (WAL readers do not wait for locks)."""
    with sqlite_file(path) as db:
        return {row[0] for row in db.execute("SELECT task_id FROM tf_journal")}


@contextmanager
def write_lock_held(path: Path, seconds: float) -> Iterator[None]:
    """Another connection takes the file's write lock and releases it after ``seconds``."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    handle = asyncio.get_running_loop().call_later(seconds, other.execute, "COMMIT")
    try:
        yield
    finally:
        handle.cancel()
        if other.in_transaction:
            other.execute("COMMIT")
        other.close()


async def call(app: FastAPI, path: Path, route: str) -> Answer:
    """One POST through the whole ASGI stack, noting the committed journal at response start."""
    answer = Answer()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = {k.decode(): v.decode() for k, v in message["headers"]}
            answer.journal_at_start = await asyncio.to_thread(_journal_ids, path)
        elif message["type"] == "http.response.body":
            answer.body += message.get("body", b"")

    await app(post_scope(route), empty_body, send)
    return answer


@dataclass
class Service:
    app: FastAPI
    manager: TaskManager
    path: Path
    ran: list[str]


@pytest.fixture
async def service(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Service]:
    """A started app whose route journals one task (requeue_pending) on a real SQLite file."""
    path = tmp_path / "tasks.db"
    options = dict(getattr(request, "param", {}))
    by_hand = options.pop("barrier_by_hand", False)
    manager = TaskManager(snapshot_db=str(path), requeue_pending=True, **options)
    app = FastAPI()
    if by_hand:  # an app that starts the manager itself adds the middleware (docs/durability.md)
        app.add_middleware(JournalBarrier, manager=manager)
    else:
        manager.init_app(app)
    ran: list[str] = []

    @manager.task(name="jobs.note")
    async def note(word: str) -> None:
        ran.append(word)

    @app.post("/enqueue")
    async def enqueue(tasks: ManagedBackgroundTasks = Depends(manager.get_tasks)) -> dict[str, str]:  # noqa: B008
        return {"task_id": tasks.add_task(note, "hello")}

    await manager.startup()
    try:
        yield Service(app, manager, path, ran)
    finally:
        await manager.shutdown()


@pytest.mark.parametrize(
    "service", [{}, {"barrier_by_hand": True}], indirect=True, ids=["init_app", "by_hand"]
)
async def test_a_2xx_waits_for_a_commit_slower_than_two_seconds(service: Service) -> None:
    """With the write lock held 2.6 s (under the 5 s busy timeout), the 200 goes out only
    once the task's journal entry is committed, whether init_app or the app added the
    barrier: a crash after the response keeps the task."""
    with write_lock_held(service.path, 2.6):
        answer = await call(service.app, service.path, "/enqueue")
    assert answer.status == 200
    task_id = json.loads(answer.body)["task_id"]
    assert task_id in answer.journal_at_start
    await service.manager.join(timeout=5)
    assert service.ran == ["hello"]
    assert service.manager.metrics()["barrier_timeouts"] == 0


@pytest.mark.parametrize("service", [{"barrier_timeout": 0.3}], indirect=True)
async def test_past_barrier_timeout_the_task_is_withdrawn_and_the_answer_is_503(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """A commit slower than barrier_timeout: 503 with Retry-After, the task withdrawn (never
    runs, CANCELLED with the reason, its entry removed), a metric and a warning."""
    caplog.set_level(logging.WARNING, "fastapi_taskflow.barrier")
    with write_lock_held(service.path, 1.5):
        answer = await call(service.app, service.path, "/enqueue")
        assert answer.status == 503
        assert answer.headers["retry-after"] == "1"
        assert "retry later" in json.loads(answer.body)["detail"]
    assert service.manager.metrics()["barrier_timeouts"] == 1
    assert any("barrier_timeout" in r.getMessage() for r in caplog.records)
    await service.manager.join(timeout=5)
    assert service.manager.persister is not None
    await service.manager.persister.drain()
    assert service.ran == []
    assert _journal_ids(service.path) == set()
    records = (await service.manager.list_records(RecordQuery())).records
    assert [r.status for r in records] == [TaskStatus.CANCELLED]
    assert "barrier_timeout" in (records[0].error or "")
