"""The ``taskflow`` operations commands (tasks, dead-letters, keys, run) on a real SQLite file."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from typer.testing import CliRunner

from fastapi_taskflow import SqliteBackend, TaskManager, TaskStatus
from fastapi_taskflow.backends.base import JournalEntry, RecordQuery
from fastapi_taskflow.cli import build_app
from fastapi_taskflow.commands.common import ExitCode, parse_since
from fastapi_taskflow.models import TaskRecord
from fastapi_taskflow.serialization import encode_call, encode_result

NOW = datetime.now(UTC)
FAILED_ID = "11111111-1111-4111-8111-111111111111"


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    """A CLI runner in an empty folder, with no configuration from the environment."""
    monkeypatch.chdir(tmp_path)
    for name in ("TASKFLOW_CONFIG", "TASKFLOW_REDIS_URL", "TASKFLOW_APP"):
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


def record(task_id: str, status: TaskStatus, age: timedelta = timedelta(0), **f: Any) -> TaskRecord:
    created = NOW - age
    return TaskRecord(
        task_id=task_id,
        func_name=f.pop("func_name", "billing.charge"),
        status=status,
        created_at=created,
        start_time=created,
        end_time=created + timedelta(seconds=1),
        **f,
    )


def entry(task_id: str, **f: Any) -> JournalEntry:
    return JournalEntry(
        task_id=task_id,
        func_name="billing.charge",
        payload=encode_call(("order-9",), {}),
        requeue=True,
        **f,
    )


def seed(
    path: Path,
    records: Sequence[TaskRecord] = (),
    entries: Sequence[JournalEntry] = (),
    owner: str | None = None,
) -> None:
    """Write records and journal entries (owned by ``owner``, else unowned) to a SQLite file."""

    async def go() -> None:
        backend = SqliteBackend(path)
        await backend.open()
        await backend.save_records(list(records))
        if entries:
            await backend.journal_put(list(entries), owner or "gone")
            if owner is None:
                await backend.journal_release("gone")
        await backend.close()

    asyncio.run(go())


def read(path: Path) -> tuple[dict[str, TaskRecord], list[JournalEntry]]:
    async def go() -> tuple[dict[str, TaskRecord], list[JournalEntry]]:
        backend = SqliteBackend(path)
        await backend.open()
        records = (await backend.query_records(RecordQuery(limit=1000))).records
        entries, _ = await backend.journal_page()
        await backend.close()
        return {r.task_id: r for r in records}, entries

    return asyncio.run(go())


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A SQLite file with one failed, one successful and one old failed task."""
    path = tmp_path / "tasks.db"
    seed(
        path,
        [
            record(
                FAILED_ID,
                TaskStatus.FAILED,
                args=("order-1",),
                error="ConnectionError: payment gateway down",
            ),
            record("ok-1", TaskStatus.SUCCESS, func_name="mail.send"),
            record("old-1", TaskStatus.FAILED, age=timedelta(days=3), error="old"),
        ],
    )
    return path


def invoke(runner: CliRunner, *args: str) -> Any:
    return runner.invoke(build_app(), list(args))


def test_keys_generate_prints_a_fernet_key(runner: CliRunner) -> None:
    """keys generate prints one valid key; --json wraps it."""
    result = invoke(runner, "keys", "generate")
    assert result.exit_code == 0
    Fernet(result.stdout.strip())
    data = json.loads(invoke(runner, "keys", "generate", "--json").stdout)
    Fernet(data["key"])


def test_tasks_list_table_and_json(runner: CliRunner, db: Path) -> None:
    """A table for people; --json with full ids and filters for scripts."""
    table = invoke(runner, "tasks", "list", "--db", str(db))
    assert table.exit_code == 0, table.output
    assert "billing.charge" in table.stdout
    assert "failed" in table.stdout
    data = json.loads(invoke(runner, "tasks", "list", "--db", str(db), "--json").stdout)
    assert {t["task_id"] for t in data["tasks"]} == {FAILED_ID, "ok-1", "old-1"}
    failed = json.loads(
        invoke(
            runner,
            "tasks",
            "list",
            "--db",
            str(db),
            "--status",
            "failed",
            "--since",
            "6h",
            "--json",
        ).stdout
    )
    assert [t["task_id"] for t in failed["tasks"]] == [FAILED_ID]


def test_tasks_list_pages_with_a_cursor(runner: CliRunner, db: Path) -> None:
    """--limit gives a next cursor; --cursor continues from it."""
    first = json.loads(
        invoke(runner, "tasks", "list", "--db", str(db), "--limit", "2", "--json").stdout
    )
    assert len(first["tasks"]) == 2
    assert first["next_cursor"]
    rest = json.loads(
        invoke(
            runner,
            "tasks",
            "list",
            "--db",
            str(db),
            "--limit",
            "2",
            "--cursor",
            first["next_cursor"],
            "--json",
        ).stdout
    )
    assert [t["task_id"] for t in rest["tasks"]] == ["old-1"]
    assert rest["next_cursor"] is None


def test_tasks_show_includes_a_kept_result(runner: CliRunner, tmp_path: Path) -> None:
    """show prints a kept result in its JSON form, and a sealed one as sealed."""
    path = tmp_path / "results.db"
    clear = record("r-clear", TaskStatus.SUCCESS, result_data=encode_result({"pdf": b"%PDF"}))
    sealed = record("r-sealed", TaskStatus.SUCCESS, encrypted_result=b"gAAAA-sealed")
    seed(path, [clear, sealed])
    shown = json.loads(
        invoke(runner, "tasks", "show", "r-clear", "--db", str(path), "--json").stdout
    )
    assert shown["result"] == {"pdf": {"type": "bytes", "size": 4}}
    hidden = json.loads(
        invoke(runner, "tasks", "show", "r-sealed", "--db", str(path), "--json").stdout
    )
    assert hidden["result"] == {"type": "encrypted"}


def test_tasks_show_found_and_not_found(runner: CliRunner, db: Path) -> None:
    """show prints the record (args on request); an unknown id exits 3."""
    data = json.loads(
        invoke(runner, "tasks", "show", FAILED_ID, "--db", str(db), "--args", "--json").stdout
    )
    assert data["error"] == "ConnectionError: payment gateway down"
    assert data["args"] == ["order-1"]
    missing = invoke(runner, "tasks", "show", "nope", "--db", str(db))
    assert missing.exit_code == ExitCode.NOT_FOUND
    assert "no task with id 'nope'" in missing.output


def test_retry_journals_a_new_task_that_the_app_runs(runner: CliRunner, db: Path) -> None:
    """retry writes an unowned journal entry; the app's next start runs it with the same args."""
    result = invoke(runner, "tasks", "retry", FAILED_ID, "--db", str(db), "--json")
    assert result.exit_code == 0, result.output
    new_id = json.loads(result.stdout)["task_id"]
    _, entries = read(db)
    assert [(e.task_id, e.owner, e.tags["retry_of"]) for e in entries] == [
        (new_id, None, FAILED_ID)
    ]

    charged: list[str] = []

    async def app_start() -> TaskRecord | None:
        manager = TaskManager(snapshot_db=str(db))

        @manager.task(name="billing.charge")
        async def charge(order: str) -> None:
            charged.append(order)

        await manager.startup()
        await manager.join(timeout=10)
        found = await manager.get_record(new_id)
        await manager.shutdown()
        return found

    done = asyncio.run(app_start())
    assert charged == ["order-1"]
    assert done is not None
    assert done.status is TaskStatus.SUCCESS


def test_retry_refuses_a_successful_task(runner: CliRunner, db: Path) -> None:
    """Only failed, interrupted or cancelled tasks retry: exit 4 otherwise, 3 when unknown."""
    assert invoke(runner, "tasks", "retry", "ok-1", "--db", str(db)).exit_code == ExitCode.REFUSED
    assert invoke(runner, "tasks", "retry", "x", "--db", str(db)).exit_code == ExitCode.NOT_FOUND


def test_cancel_an_unowned_journaled_task(runner: CliRunner, tmp_path: Path) -> None:
    """A journaled task no instance holds is removed from the journal and recorded CANCELLED."""
    path = tmp_path / "j.db"
    seed(path, entries=[entry("waiting-1")])
    result = invoke(runner, "tasks", "cancel", "waiting-1", "--db", str(path))
    assert result.exit_code == 0, result.output
    records, entries = read(path)
    assert entries == []
    assert records["waiting-1"].status is TaskStatus.CANCELLED
    assert records["waiting-1"].args == ("order-9",)


def test_cancel_refuses_a_held_task_unless_forced(runner: CliRunner, tmp_path: Path) -> None:
    """A task an instance holds needs --force (exit 4 without); finished ones are refused."""
    path = tmp_path / "j.db"
    seed(path, [record("done-1", TaskStatus.SUCCESS)], [entry("held-1")], owner="instance-a")
    held = invoke(runner, "tasks", "cancel", "held-1", "--db", str(path))
    assert held.exit_code == ExitCode.REFUSED
    assert "instance-a" in held.output
    assert invoke(runner, "tasks", "cancel", "held-1", "--db", str(path), "--force").exit_code == 0
    done = invoke(runner, "tasks", "cancel", "done-1", "--db", str(path))
    assert done.exit_code == ExitCode.REFUSED
    assert invoke(runner, "tasks", "cancel", "x", "--db", str(path)).exit_code == 3


def test_list_and_show_the_journal(runner: CliRunner, tmp_path: Path) -> None:
    """--journal lists unfinished tasks with their owner; show finds a journaled task."""
    path = tmp_path / "j.db"
    seed(path, entries=[entry("held-1")], owner="instance-a")
    data = json.loads(
        invoke(runner, "tasks", "list", "--journal", "--db", str(path), "--json").stdout
    )
    assert [(e["task_id"], e["owner"]) for e in data["journal"]] == [("held-1", "instance-a")]
    shown = json.loads(
        invoke(runner, "tasks", "show", "held-1", "--db", str(path), "--json").stdout
    )
    assert shown["status"] == "journaled"
    assert shown["journal"]["owner"] == "instance-a"


def test_dead_letters_replay_window_and_dry_run(runner: CliRunner, db: Path) -> None:
    """replay --since takes failures in the window only; --dry-run writes nothing."""
    dry = json.loads(
        invoke(
            runner,
            "dead-letters",
            "replay",
            "--since",
            "6h",
            "--db",
            str(db),
            "--dry-run",
            "--json",
        ).stdout
    )
    assert (dry["count"], dry["tasks"][0]["new_task_id"]) == (1, None)
    assert read(db)[1] == []

    result = invoke(
        runner,
        "dead-letters",
        "replay",
        "--since",
        "7d",
        "--func",
        "billing.charge",
        "--db",
        str(db),
    )
    assert result.exit_code == 0, result.output
    assert "replayed 2 failed task(s)" in result.stdout
    _, entries = read(db)
    assert sorted(e.tags["retry_of"] for e in entries) == sorted([FAILED_ID, "old-1"])
    assert all(e.owner is None and e.requeue and e.source == "replay" for e in entries)


def test_replay_needs_since_and_a_valid_duration(runner: CliRunner, db: Path) -> None:
    """A missing or malformed --since is a usage error (exit 2)."""
    assert invoke(runner, "dead-letters", "replay", "--db", str(db)).exit_code == 2
    bad = invoke(runner, "dead-letters", "replay", "--since", "soon", "--db", str(db))
    assert bad.exit_code == ExitCode.USAGE
    assert "duration like 6h" in bad.output


def test_keys_rotate_reports_and_exits_5_on_undecryptable(
    runner: CliRunner, tmp_path: Path
) -> None:
    """rotate re-encrypts with the first --key; payloads no key opens give exit 5."""
    old, new, lost = (Fernet.generate_key() for _ in range(3))
    path = tmp_path / "k.db"
    seed(
        path,
        [
            record("a", TaskStatus.SUCCESS, encrypted_payload=Fernet(old).encrypt(b"x")),
            record("b", TaskStatus.FAILED, encrypted_payload=Fernet(lost).encrypt(b"x")),
        ],
    )
    result = invoke(
        runner,
        "keys",
        "rotate",
        "--db",
        str(path),
        "--key",
        new.decode(),
        "--key",
        old.decode(),
        "--json",
    )
    assert result.exit_code == ExitCode.INCOMPLETE, result.output
    report = json.loads(result.stdout)
    assert (report["rotated"], report["skipped_undecryptable"]) == (1, 1)
    assert report["undecryptable_ids"] == ["b"]
    table = invoke(
        runner, "keys", "rotate", "--db", str(path), "--key", new.decode(), "--key", old.decode()
    )
    assert "unchanged" in table.stdout
    assert "could not decrypt" in table.stdout


def test_keys_rotate_without_keys_is_a_usage_error(runner: CliRunner, db: Path) -> None:
    """No --key and no configured keys: exit 2 with what to do."""
    result = invoke(runner, "keys", "rotate", "--db", str(db))
    assert result.exit_code == ExitCode.USAGE
    assert "encryption.keys" in result.output


def test_configured_backend_is_used_without_db(runner: CliRunner, db: Path, tmp_path: Path) -> None:
    """Without --db/--redis the backend comes from the YAML configuration."""
    config = tmp_path / "taskflow.yaml"
    config.write_text(f"backend:\n  kind: sqlite\n  sqlite:\n    path: {db}\n")
    data = json.loads(invoke(runner, "tasks", "list", "--config", str(config), "--json").stdout)
    assert len(data["tasks"]) == 3
    memory = tmp_path / "memory.yaml"
    memory.write_text("backend:\n  kind: memory\n")
    result = invoke(runner, "tasks", "list", "--config", str(memory))
    assert result.exit_code == ExitCode.ERROR
    assert "--db PATH or --redis URL" in result.output


def test_backend_option_errors(runner: CliRunner, tmp_path: Path) -> None:
    """A missing SQLite file exits 1; --db with --redis exits 2."""
    missing = invoke(runner, "tasks", "list", "--db", str(tmp_path / "none.db"))
    assert missing.exit_code == ExitCode.ERROR
    assert "no SQLite database" in missing.output
    both = invoke(runner, "tasks", "list", "--db", "x", "--redis", "redis://h")
    assert both.exit_code == ExitCode.USAGE


def test_run_serves_the_app_with_uvicorn(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run hands module:attr to uvicorn (default: the DI example's factory, as make run);
    --factory calls the target; a bad target exits 2."""
    import uvicorn

    calls: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    assert invoke(runner, "run").exit_code == 0
    assert invoke(runner, "run", "--app", "mypkg.web:api", "--port", "9000").exit_code == 0
    assert invoke(runner, "run", "--app", "mypkg.web:build", "--factory").exit_code == 0
    assert calls[0] == (
        "examples.di_app.app:create_app",
        {
            "host": "127.0.0.1",
            "port": 8000,
            "reload": False,
            "log_level": "info",
            "factory": True,
            "app_dir": ".",
        },
    )
    assert calls[1] == (
        "mypkg.web:api",
        {
            "host": "127.0.0.1",
            "port": 9000,
            "reload": False,
            "log_level": "info",
            "factory": False,
            "app_dir": ".",
        },
    )
    assert calls[2][0] == "mypkg.web:build"
    assert calls[2][1]["factory"] is True
    assert invoke(runner, "run", "--app", "not a target").exit_code == ExitCode.USAGE


def test_parse_since_accepts_durations_and_iso_times() -> None:
    """6h/30m/2d/1w are durations before now; ISO times are taken as given (UTC if naive)."""
    now = datetime(2025, 1, 2, tzinfo=UTC)
    assert parse_since("6h", now=now) == now - timedelta(hours=6)
    assert parse_since("1w", now=now) == now - timedelta(weeks=1)
    assert parse_since("2025-01-01T00:00:00") == datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_since(None) is None


@pytest.mark.redis
def test_tasks_list_against_redis(runner: CliRunner, redis_url: str, redis_prefix: str) -> None:
    """--redis URL --prefix P reads the same records a Redis-backed app wrote."""
    from fastapi_taskflow import RedisBackend

    async def go() -> None:
        backend = RedisBackend(redis_url, prefix=redis_prefix)
        await backend.open()
        await backend.save_records([record(FAILED_ID, TaskStatus.FAILED)])
        await backend.close()

    asyncio.run(go())
    data = json.loads(
        invoke(
            runner, "tasks", "list", "--redis", redis_url, "--prefix", redis_prefix, "--json"
        ).stdout
    )
    assert [t["task_id"] for t in data["tasks"]] == [FAILED_ID]
