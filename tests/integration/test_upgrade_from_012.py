"""An app upgraded from fastapi-taskflow 0.12 finds its data: history kept, waiting tasks run.

The 0.12 data is written here by hand in 0.12's layout (its tables ``task_snapshots`` and
``task_pending_requeue``; its Redis hashes and index sets), on a real SQLite file, Redis,
PostgreSQL and MariaDB.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from cryptography.fernet import Fernet
from typer.testing import CliRunner

from fastapi_taskflow import TaskManager, TaskStatus
from fastapi_taskflow.backends.base import TaskBackend
from fastapi_taskflow.backends.mysql import MySQLBackend
from fastapi_taskflow.backends.postgres import PostgresBackend
from fastapi_taskflow.backends.redis import RedisBackend
from fastapi_taskflow.backends.sql import SqlBackend
from fastapi_taskflow.backends.sqlite import SqliteBackend
from fastapi_taskflow.cli import build_app
from fastapi_taskflow.legacy import import_legacy
from servers import PERSISTENT_KINDS, MariaDBServer, PostgresServer
from sqlite_files import sqlite_file

SNAPSHOT_COLUMNS = (
    "task_id", "func_name", "status", "created_at", "start_time", "end_time", "duration",
    "retries_used", "error", "snapshotted_at", "args_json", "kwargs_json", "logs_json",
    "stacktrace", "encrypted_payload", "source", "priority", "executor", "queue",
)  # fmt: skip
SCHEDULED_COLUMNS = (
    "run_key", "func_name", "fire_at", "created_at", "args_json", "kwargs_json",
    "encrypted_payload", "queue", "priority", "idempotency_key", "tags_json",
)  # fmt: skip
PENDING_COLUMNS = (
    "task_id", "func_name", "created_at", "retries_used", "args_json", "kwargs_json",
    "encrypted_payload", "queue",
)  # fmt: skip


def snapshot(task_id: str, status: str, **fields: Any) -> dict[str, Any]:
    """One row of 0.12's ``task_snapshots``, as 0.12 wrote it (ISO times, JSON text)."""
    row: dict[str, Any] = {
        "task_id": task_id,
        "func_name": "send_email",
        "status": status,
        "created_at": "2025-03-01T10:00:00+00:00",
        "start_time": "2025-03-01T10:00:01+00:00",
        "end_time": "2025-03-01T10:00:02+00:00",
        "duration": 1.0,
        "retries_used": 0,
        "error": None,
        "snapshotted_at": "2025-03-01T10:00:03",
        "args_json": json.dumps(["a@example.com"]),
        "kwargs_json": json.dumps({"subject": "hi"}),
        "logs_json": json.dumps(["sent"]),
        "stacktrace": None,
        "encrypted_payload": None,
        "source": "manual",
        "priority": None,
        "executor": "async",
        "queue": "default",
    }
    return {**row, **fields}


def waiting(task_id: str, **fields: Any) -> dict[str, Any]:
    """One row of 0.12's ``task_pending_requeue``: a task that had not run at shutdown."""
    row: dict[str, Any] = {
        "task_id": task_id,
        "func_name": "send_email",
        "created_at": "2025-03-01T11:00:00",
        "retries_used": 0,
        "args_json": json.dumps(["late@example.com"]),
        "kwargs_json": json.dumps({"subject": "later"}),
        "encrypted_payload": None,
        "queue": "default",
    }
    return {**row, **fields}


def scheduled(run_key: str, **fields: Any) -> dict[str, Any]:
    """One row of 0.12's ``task_scheduled_once``: a one-off run, here already due."""
    row: dict[str, Any] = {
        "run_key": run_key,
        "func_name": "send_email",
        "fire_at": "2025-03-01T12:00:00+00:00",
        "created_at": "2025-03-01T11:00:00+00:00",
        "args_json": json.dumps(["due@example.com"]),
        "kwargs_json": json.dumps({"subject": "reminder"}),
        "encrypted_payload": None,
        "queue": "default",
        "priority": None,
        "idempotency_key": None,
        "tags_json": json.dumps({"kind": "reminder"}),
    }
    return {**row, **fields}


OLD_HISTORY = [
    snapshot("old-ok", "success"),
    snapshot("old-bad", "failed", error="SMTP down", logs_json=json.dumps(["try 1"])),
]

# ---- writing 0.12's layout -------------------------------------------------------------------

Writer = Callable[..., Awaitable[None]]

_DDL = [
    "CREATE TABLE task_snapshots (task_id VARCHAR(64) PRIMARY KEY, func_name TEXT NOT NULL,"
    " status VARCHAR(32) NOT NULL, created_at TEXT, start_time TEXT, end_time TEXT,"
    " duration DOUBLE PRECISION, retries_used INTEGER DEFAULT 0, error TEXT,"
    " snapshotted_at TEXT, args_json TEXT, kwargs_json TEXT, logs_json TEXT, stacktrace TEXT,"
    " encrypted_payload TEXT, source VARCHAR(32) DEFAULT 'manual', priority INTEGER,"
    " executor VARCHAR(32), queue VARCHAR(128) DEFAULT 'default')",
    "CREATE TABLE task_pending_requeue (task_id VARCHAR(64) PRIMARY KEY, func_name TEXT NOT NULL,"
    " created_at TEXT, retries_used INTEGER DEFAULT 0, args_json TEXT, kwargs_json TEXT,"
    " encrypted_payload TEXT, queue VARCHAR(128) DEFAULT 'default')",
    "CREATE TABLE task_scheduled_once (run_key VARCHAR(191) PRIMARY KEY, func_name TEXT NOT NULL,"
    " fire_at VARCHAR(64) NOT NULL, created_at TEXT, args_json TEXT, kwargs_json TEXT,"
    " encrypted_payload TEXT, queue VARCHAR(128) DEFAULT 'default', priority INTEGER,"
    " idempotency_key VARCHAR(191), tags_json TEXT)",
]


def _insert(table: str, columns: tuple[str, ...]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


def _tables(
    history: list[dict[str, Any]], pending: list[dict[str, Any]], once: list[dict[str, Any]]
) -> list[tuple[str, tuple[str, ...], list[dict[str, Any]]]]:
    return [
        ("task_snapshots", SNAPSHOT_COLUMNS, history),
        ("task_pending_requeue", PENDING_COLUMNS, pending),
        ("task_scheduled_once", SCHEDULED_COLUMNS, once),
    ]


def sqlite_writer(path: Path) -> Writer:
    async def write(
        history: list[dict[str, Any]],
        pending: list[dict[str, Any]],
        once: list[dict[str, Any]] = (),  # type: ignore[assignment]
    ) -> None:
        with sqlite_file(path) as db:
            for statement in _DDL:
                db.execute(statement)
            for table, columns, rows in _tables(history, pending, list(once)):
                db.executemany(_insert(table, columns), [[r[c] for c in columns] for r in rows])

    return write


def sql_writer(make: Callable[[], SqlBackend]) -> Writer:
    """Raw statements through a backend's connection (tables made before it ever ran)."""

    async def write(
        history: list[dict[str, Any]],
        pending: list[dict[str, Any]],
        once: list[dict[str, Any]] = (),  # type: ignore[assignment]
    ) -> None:
        backend = make()
        await backend.open()
        try:
            async with backend.session() as s:
                for statement in _DDL:
                    await s.execute(statement)
                for table, columns, rows in _tables(history, pending, list(once)):
                    for row in rows:
                        await s.execute(_insert(table, columns), [row[c] for c in columns])
        finally:
            await backend.close()

    return write


def redis_writer(url: str, prefix: str) -> Writer:
    """0.12's keys: a hash per task under ``<prefix>:<id>`` listed in ``<prefix>:_index``;
    waiting tasks under ``<prefix>:_pending:<id>`` listed in ``<prefix>:_pending:_index``."""

    async def write(
        history: list[dict[str, Any]],
        pending: list[dict[str, Any]],
        once: list[dict[str, Any]] = (),  # type: ignore[assignment]
    ) -> None:
        client = aioredis.Redis.from_url(url, decode_responses=True)
        try:
            for infix, rows in (("", history), (":_pending", pending)):
                for row in rows:
                    fields = {k: "" if v is None else str(v) for k, v in row.items()}
                    await client.hset(f"{prefix}{infix}:{row['task_id']}", mapping=fields)
                    await client.sadd(f"{prefix}{infix}:_index", row["task_id"])
            for row in once:  # one-off runs: a sorted set by fire time
                fields = {k: "" if v is None else str(v) for k, v in row.items()}
                await client.hset(f"{prefix}:_scheduled:{row['run_key']}", mapping=fields)
                fire_at = datetime.fromisoformat(row["fire_at"]).timestamp()
                await client.zadd(f"{prefix}:_scheduled:_index", {row["run_key"]: fire_at})
        finally:
            await client.aclose()

    return write


class Target:
    """A backend kind: how to make its backend and how to write 0.12's data into it."""

    def __init__(self, make: Callable[[], TaskBackend], write: Writer) -> None:
        self.make = make
        self.write = write


@pytest.fixture(params=PERSISTENT_KINDS)
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    """A fresh store of each kind (0.12's table names are fixed: a new database per test)."""
    name = f"legacy_{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        path = tmp_path / "tasks.db"
        yield Target(lambda: SqliteBackend(path), sqlite_writer(path))
    elif request.param == "redis":
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        yield Target(lambda: RedisBackend(url, prefix=prefix), redis_writer(url, prefix))
    elif request.param == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        import asyncpg

        admin = await asyncpg.connect(server.url)
        await admin.execute(f"CREATE DATABASE {name}")
        await admin.close()

        def make_pg() -> SqlBackend:
            return PostgresBackend(server.url_for(name))

        yield Target(make_pg, sql_writer(make_pg))
    else:
        maria: MariaDBServer = request.getfixturevalue("mariadb_server")
        url = maria.create_database(name)

        def make_my() -> SqlBackend:
            return MySQLBackend(url)

        yield Target(make_my, sql_writer(make_my))


def app_manager(backend: TaskBackend, sent: list[tuple[Any, ...]], **options: Any) -> TaskManager:
    """The upgraded app: the same task function, now named ``<module>:send_email``."""
    manager = TaskManager(snapshot_backend=backend, requeue_pending=True, **options)

    @manager.task(retries=0)
    async def send_email(address: str, subject: str = "") -> None:
        sent.append((address, subject))

    return manager


async def test_startup_imports_history_and_runs_waiting_tasks_once(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    """The first start keeps 0.12's finished history, runs its waiting task under its bare
    name, and says so in one log line; the second start imports nothing again."""
    await target.write(OLD_HISTORY, [waiting("old-wait")])
    sent: list[tuple[Any, ...]] = []
    manager = app_manager(target.make(), sent)
    with caplog.at_level(logging.INFO, logger="fastapi_taskflow.legacy"):
        await manager.startup()
        await manager.join(timeout=10)
    imported = [r.getMessage() for r in caplog.records if r.name == "fastapi_taskflow.legacy"]
    assert len(imported) == 1
    assert "2 finished records, 1 waiting tasks journaled" in imported[0]
    assert sent == [("late@example.com", "later")]
    ok, bad = await manager.get_record("old-ok"), await manager.get_record("old-bad")
    assert ok is not None
    assert ok.status is TaskStatus.SUCCESS
    assert ok.args == ("a@example.com",)
    assert ok.kwargs == {"subject": "hi"}
    assert bad is not None
    assert bad.status is TaskStatus.FAILED
    assert bad.error == "SMTP down"
    assert list(bad.logs) == ["try 1"]
    ran = await manager.get_record("old-wait")
    assert ran is not None
    assert ran.status is TaskStatus.SUCCESS
    await manager.shutdown()

    caplog.clear()
    again = app_manager(target.make(), sent)
    with caplog.at_level(logging.INFO, logger="fastapi_taskflow.legacy"):
        await again.startup()
        await again.join(timeout=10)
    await again.shutdown()
    assert not [r for r in caplog.records if r.name == "fastapi_taskflow.legacy"]
    assert sent == [("late@example.com", "later")]


async def test_a_0_12_one_off_run_fires_after_the_upgrade(target: Target) -> None:
    """A one-off run 0.12 had scheduled (already due) fires once at the first start, with its
    arguments and tags, under its bare task name."""
    await target.write([], [], [scheduled("remind-1")])
    sent: list[tuple[Any, ...]] = []
    manager = app_manager(target.make(), sent)
    await manager.startup()
    try:
        await until(lambda: bool(sent))
        await manager.join(timeout=10)
        assert sent == [("due@example.com", "reminder")]
        assert await manager.list_scheduled() == []
    finally:
        await manager.shutdown()


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Poll ``condition`` (a timer in the scheduler fires the run) with a deadline."""
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "not reached in time"
        await asyncio.sleep(0.02)


async def test_a_failed_0_12_task_retries_under_its_bare_name(target: Target) -> None:
    """Retrying a 0.12 record stored as ``send_email`` runs the registered task."""
    await target.write(OLD_HISTORY, [])
    sent: list[tuple[Any, ...]] = []
    manager = app_manager(target.make(), sent)
    await manager.startup()
    try:
        handle = await manager.retry("old-bad")
        await handle.wait()
        assert sent == [("a@example.com", "hi")]
    finally:
        await manager.shutdown()


def sealed(key: bytes, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Arguments as 0.12 sealed them: a Fernet token of a pickle of (args, kwargs)."""
    return Fernet(key).encrypt(pickle.dumps((args, kwargs))).decode()


async def test_sealed_arguments_open_with_the_same_key(tmp_path: Path) -> None:
    """A waiting task 0.12 sealed runs with its arguments when the app has the same key, and
    stays sealed (in this version's format) in the imported history."""
    key = Fernet.generate_key()
    path = tmp_path / "tasks.db"
    await sqlite_writer(path)(
        [snapshot("old-ok", "success", args_json="[]", kwargs_json="{}",
                  encrypted_payload=sealed(key, ("s@example.com",), {}))],
        [waiting("old-wait", args_json="[]", kwargs_json="{}",
                 encrypted_payload=sealed(key, ("w@example.com",), {"subject": "x"}))],
    )  # fmt: skip
    sent: list[tuple[Any, ...]] = []
    manager = app_manager(SqliteBackend(path), sent, encrypt_args_key=key)
    await manager.startup()
    await manager.join(timeout=10)
    try:
        assert sent == [("w@example.com", "x")]
        record = await manager.get_record("old-ok")
        assert record is not None
        assert record.encrypted_payload is not None
        assert manager.cipher is not None
        assert b"s@example.com" in manager.cipher.decrypt(record.encrypted_payload)
    finally:
        await manager.shutdown()


async def test_sealed_waiting_task_without_the_key_fails_with_the_reason(tmp_path: Path) -> None:
    """Without the key a sealed waiting task is not lost silently: it becomes FAILED, saying
    which key to configure."""
    path = tmp_path / "tasks.db"
    token = sealed(Fernet.generate_key(), ("w@example.com",), {})
    await sqlite_writer(path)([], [waiting("old-wait", encrypted_payload=token)])
    sent: list[tuple[Any, ...]] = []
    manager = app_manager(SqliteBackend(path), sent)
    await manager.startup()
    await manager.join(timeout=10)
    try:
        record = await manager.get_record("old-wait")
        assert record is not None
        assert record.status is TaskStatus.FAILED
        assert record.error is not None
        assert "encrypt_args_key" in record.error
        assert sent == []
    finally:
        await manager.shutdown()


def test_taskflow_migrate_imports_on_demand_and_reports_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`taskflow migrate --db` imports and prints the counts; a second run says it was done."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TASKFLOW_CONFIG", raising=False)
    path = tmp_path / "tasks.db"
    asyncio.run(sqlite_writer(path)(OLD_HISTORY, [waiting("old-wait")]))
    runner = CliRunner()
    first = runner.invoke(build_app(), ["migrate", "--db", str(path), "--json"])
    assert first.exit_code == 0, first.output
    counts = json.loads(first.output)
    assert (counts["status"], counts["records"], counts["waiting"]) == ("imported", 2, 1)
    second = runner.invoke(build_app(), ["migrate", "--db", str(path)])
    assert second.exit_code == 0, second.output
    assert "already imported" in second.output
    assert "2 finished records, 1 waiting tasks" in second.output

    async def journaled() -> list[str]:
        backend = SqliteBackend(path)
        await backend.open()
        try:
            entries, _ = await backend.journal_page()
            return [e.task_id for e in entries]
        finally:
            await backend.close()

    assert asyncio.run(journaled()) == ["old-wait"]
    with sqlite_file(path) as db:
        kept = db.execute("SELECT COUNT(*) FROM task_snapshots").fetchone()[0]
        waiting_left = db.execute("SELECT COUNT(*) FROM task_pending_requeue").fetchone()[0]
    assert (kept, waiting_left) == (2, 0)  # history left for a rollback; waiting ones moved


def test_taskflow_migrate_exits_5_when_a_waiting_task_cannot_be_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sealed waiting task without its key: recorded FAILED, counted, exit code 5."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TASKFLOW_CONFIG", raising=False)
    path = tmp_path / "tasks.db"
    token = sealed(Fernet.generate_key(), ("w@example.com",), {})
    asyncio.run(sqlite_writer(path)([], [waiting("old-wait", encrypted_payload=token)]))
    result = CliRunner().invoke(build_app(), ["migrate", "--db", str(path), "--json"])
    assert result.exit_code == 5, result.output
    assert json.loads(result.output)["failed"] == 1


async def test_instances_starting_together_import_once(target: Target) -> None:
    """Two instances importing at once: one imports, the other finds it done or under way;
    each waiting task is journaled once."""
    await target.write(OLD_HISTORY, [waiting("old-wait")])
    first, second = target.make(), target.make()
    await asyncio.gather(first.open(), second.open())
    try:
        reports = await asyncio.gather(import_legacy(first), import_legacy(second))
        assert sorted(r.already for r in reports) == [False, True]
        entries, _ = await first.journal_page()
        assert [e.task_id for e in entries] == ["old-wait"]
        assert (await first.get_record("old-ok")) is not None
    finally:
        await first.close()
        await second.close()
