"""PostgreSQL and MySQL backends beyond the contract: configuration, masking, schema versions,
the missing-driver error, and a manager running on each against a real server."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from fastapi_taskflow import TaskManager, TaskStatus
from fastapi_taskflow.backends import sql
from fastapi_taskflow.backends.mysql import MySQLBackend
from fastapi_taskflow.backends.postgres import PostgresBackend
from fastapi_taskflow.backends.sql import SqlBackend
from fastapi_taskflow.cli import config_check
from fastapi_taskflow.di import TaskflowContainer, TaskflowSettings, running
from fastapi_taskflow.errors import BackendError, ConfigurationError
from fastapi_taskflow.testing_contract import make_record
from servers import MariaDBServer, PostgresServer


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres),
                        pytest.param("mysql", marks=pytest.mark.mysql)])  # fmt: skip
def sql_url(request: pytest.FixtureRequest) -> str:
    """A URL of a real PostgreSQL or MariaDB database the session started."""
    if request.param == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        return server.url
    maria: MariaDBServer = request.getfixturevalue("mariadb_server")
    return maria.url_for("taskflow")


def make(url: str, **options: Any) -> SqlBackend:
    kind = PostgresBackend if url.startswith("postgresql") else MySQLBackend
    return kind(url, **options)


@pytest.fixture(autouse=True)
def no_taskflow_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No TASKFLOW_* variable or config file of the caller leaks into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("TASKFLOW_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


async def test_manager_runs_tasks_and_keeps_history(sql_url: str, table_prefix: str) -> None:
    """A durable task runs on each SQL backend; a second manager on the same tables sees it."""
    manager = TaskManager(
        snapshot_backend=make(sql_url, table_prefix=table_prefix), requeue_pending=True
    )

    @manager.task(name="sql.double", persist=True)
    async def double(n: int) -> int:
        return n * 2

    await manager.startup()
    handle = manager.add_task(double, 21)
    await manager.join()
    await manager.shutdown()
    reader = make(sql_url, table_prefix=table_prefix)
    await reader.open()
    try:
        record = await reader.get_record(str(handle))
        assert record is not None
        assert record.status is TaskStatus.SUCCESS
        assert record.args == (21,)
        assert await reader.journal_page() == ([], None)
    finally:
        await reader.close()


@pytest.mark.postgres
@pytest.mark.mysql
@pytest.mark.parametrize("kind", ["postgres", "mysql"])
async def test_container_builds_the_configured_backend_from_yaml_and_env(
    kind: str,
    request: pytest.FixtureRequest,
    table_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """backend.kind postgres|mysql in YAML with the URL from TASKFLOW_BACKEND__... builds and
    opens that backend; its description masks the password."""
    if kind == "postgres":
        url = request.getfixturevalue("postgres_server").url
        url = url.replace("postgres@", "postgres:pg-SECRET@")  # trust auth ignores it
    else:
        url = request.getfixturevalue("mariadb_server").url_for("taskflow")
    (tmp_path / "taskflow.yaml").write_text(
        f"backend:\n  kind: {kind}\n  {kind}:\n    table_prefix: {table_prefix}\n    max_size: 3\n"
    )
    monkeypatch.setenv(f"TASKFLOW_BACKEND__{kind.upper()}__URL", url)
    settings = TaskflowSettings(tmp_path / "taskflow.yaml")
    container = TaskflowContainer()
    container.config.from_dict(settings.model_dump(mode="python"))
    async with running(container):
        backend = await container.backend()
        assert isinstance(backend, PostgresBackend if kind == "postgres" else MySQLBackend)
        assert backend.max_size == 3
        assert await backend.schema_version() == sql.SCHEMA_VERSION
        password = url.split(":")[2].split("@")[0]
        assert password not in backend.describe()
        assert ":***@" in backend.describe()
    assert password not in settings.backend.describe()
    assert password not in str(settings.masked_dump())


def test_config_check_masks_sql_passwords(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`taskflow config check` prints the PostgreSQL and MySQL URLs with the password masked."""
    path = tmp_path / "taskflow.yaml"
    path.write_text(
        "backend:\n  kind: mysql\n  mysql:\n    url: mysql://app:my-SECRET@db:3306/tasks\n"
        "  postgres:\n    url: postgresql://app:pg-SECRET@db/tasks\n"
    )
    assert config_check(path) == 0
    out = capsys.readouterr().out
    assert "SECRET" not in out
    assert "mysql://app:***@db:3306/tasks" in out
    assert "postgresql://app:***@db/tasks" in out


def test_bad_sql_settings_name_the_key_and_hide_the_password(tmp_path: Path) -> None:
    """A wrong scheme, a bad table prefix and min_size > max_size are each named by key; the
    password in the URL is not echoed."""
    path = tmp_path / "bad.yaml"
    path.write_text(
        "backend:\n  kind: postgres\n  postgres:\n    url: http://u:pg-SECRET@h/db\n"
        "    table_prefix: 'x; drop'\n  mysql:\n    min_size: 5\n    max_size: 2\n"
    )
    with pytest.raises(ConfigurationError) as exc:
        TaskflowSettings(path)
    message = str(exc.value)
    assert "SECRET" not in message
    assert "backend.postgres.url" in message
    assert "backend.postgres.table_prefix" in message
    assert "min_size (5) is above max_size (2)" in message


@pytest.mark.parametrize(
    ("make_backend", "hint"),
    [
        (lambda: PostgresBackend("postgresql://u:pw@h/db"), "fastapi-taskflow[postgres]"),
        (lambda: MySQLBackend("mysql://u:pw@h/db"), "fastapi-taskflow[mysql]"),
    ],
    ids=["postgres", "mysql"],
)
def test_missing_driver_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, make_backend: Any, hint: str
) -> None:
    """Without its driver a SQL backend fails at construction with the pip command to run."""
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    monkeypatch.setitem(sys.modules, "asyncmy", None)
    with pytest.raises(ConfigurationError, match=f"pip install '{hint}'".replace("[", r"\[")):
        make_backend()


@pytest.mark.parametrize(
    "url", ["postgresql://app:pg-SECRET@127.0.0.1:1/db", "mysql://app:my-SECRET@127.0.0.1:1/db"]
)
async def test_unreachable_server_error_masks_the_password(url: str) -> None:
    """Opening against a closed port raises BackendError naming the server, never the
    password."""
    backend = make(url, connect_timeout=2)
    with pytest.raises(BackendError) as exc:
        await backend.open()
    assert "SECRET" not in str(exc.value)
    assert "127.0.0.1:1" in str(exc.value)


def test_legacy_pool_keywords_warn_with_the_new_spelling() -> None:
    """0.12's min_conn/max_conn/max_workers still work, each with a DeprecationWarning."""
    with pytest.warns(DeprecationWarning, match="is now max_size"):
        backend = PostgresBackend("postgresql://h/db", max_conn=7)
    assert backend.max_size == 7
    with pytest.warns(DeprecationWarning, match="max_workers.*no effect"):
        MySQLBackend("mysql://h/db", max_workers=4)
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):
        PostgresBackend("postgresql://h/db", nope=1)


async def test_newer_schema_is_refused(sql_url: str, table_prefix: str) -> None:
    """Tables written by a newer fastapi-taskflow are refused with a clear error, not misread."""
    backend = make(sql_url, table_prefix=table_prefix)
    await backend.open()
    await backend.execute("UPDATE {t}schema SET version = ? WHERE id = 1", [99])
    await backend.close()
    with pytest.raises(BackendError, match=r"schema version 99.*upgrade fastapi-taskflow"):
        await make(sql_url, table_prefix=table_prefix).open()


async def test_older_schema_is_migrated_once(
    sql_url: str, table_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening tables at an older schema version runs the migration steps and records the new
    version; data already there stays."""
    backend = make(sql_url, table_prefix=table_prefix)
    await backend.open()
    await backend.set_meta("kept", "yes")
    await backend.execute("UPDATE {t}schema SET version = ? WHERE id = 1", [0])
    await backend.close()
    monkeypatch.setitem(sql.MIGRATIONS, 0, ["CREATE TABLE {t}added (x INTEGER)"])
    upgraded = make(sql_url, table_prefix=table_prefix)
    await upgraded.open()
    try:
        assert await upgraded.schema_version() == sql.SCHEMA_VERSION
        rows = await upgraded.fetch("SELECT COUNT(*) FROM {t}added")
        assert [int(row[0]) for row in rows] == [0]
        assert await upgraded.get_meta("kept") == "yes"
    finally:
        await upgraded.close()


async def test_instances_starting_together_create_the_schema_once(
    sql_url: str, table_prefix: str
) -> None:
    """Several backends opening at once on fresh tables all succeed (the schema lock)."""
    backends = [make(sql_url, table_prefix=table_prefix) for _ in range(4)]
    await asyncio.gather(*(b.open() for b in backends))
    try:
        assert {await b.schema_version() for b in backends} == {sql.SCHEMA_VERSION}
    finally:
        for b in backends:
            await b.close()


def test_bad_table_prefix_is_refused() -> None:
    """A table prefix that is not a plain identifier never reaches SQL."""
    with pytest.raises(ConfigurationError, match="table_prefix"):
        PostgresBackend("postgresql://h/db", table_prefix="x; DROP TABLE y")


@pytest.mark.postgres
async def test_a_given_asyncpg_pool_is_borrowed_not_closed(
    postgres_server: PostgresServer, table_prefix: str
) -> None:
    """PostgresBackend(pool=...) works on the app's own pool and leaves it open at close()."""
    import asyncpg

    pool = await asyncpg.create_pool(postgres_server.url, min_size=1, max_size=2)
    try:
        backend = PostgresBackend(pool=pool, table_prefix=table_prefix)
        await backend.open()
        await backend.set_meta("k", "v")
        await backend.close()
        assert await pool.fetchval(f"SELECT value FROM {table_prefix}meta") == "v"
        assert "given pool" in backend.describe()
    finally:
        await pool.close()


async def test_a_pool_of_another_driver_is_refused() -> None:
    """A 0.12-style psycopg2 pool (anything but an asyncpg.Pool) is a clear error at open()."""
    backend = PostgresBackend(pool=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"pool= must be an asyncpg\.Pool"):
        await backend.open()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: PostgresBackend("mysql://u:pw-SECRET@h/db"), "must start with postgresql://"),
        (lambda: PostgresBackend(), "give either url= or pool="),
        (lambda: PostgresBackend("postgresql://h/db", min_size=5, max_size=2), "min_size <="),
        (lambda: MySQLBackend("postgresql://u:pw-SECRET@h/db"), "must start with mysql://"),
        (lambda: MySQLBackend("mysql://u:pw-SECRET@h"), "name the database"),
        (lambda: MySQLBackend("mysql://u:pw-SECRET@h/db?ssl=1"), "unknown option 'ssl'"),
    ],
)
def test_bad_arguments_are_clear_errors_without_the_password(build: Any, message: str) -> None:
    """Wrong URLs and pool sizes fail at construction, saying why, never echoing a password."""
    with pytest.raises(ConfigurationError, match=message) as exc:
        build()
    assert "SECRET" not in str(exc.value)


@pytest.mark.postgres
async def test_a_postgres_reader_waiting_for_commands_wakes_on_notify(
    postgres_server: PostgresServer, table_prefix: str
) -> None:
    """A reader waiting on the command channel gets a command another connection sent while
    it waited: NOTIFY wakes it, it does not poll."""
    reader = PostgresBackend(postgres_server.url, table_prefix=table_prefix)
    sender = PostgresBackend(postgres_server.url, table_prefix=table_prefix)
    await reader.open()
    await sender.open()
    try:
        position = await reader._command_position()
        waiting = asyncio.create_task(reader._read_commands(position, 60))
        # Send only once the reader waits (its event registered): then only NOTIFY can wake it.
        while not reader._waiters.get("commands"):  # noqa: ASYNC110 (no hook to await)
            await asyncio.sleep(0.01)
        await sender._send_command('{"kind": "cancel"}')
        assert [data for _, data in await waiting] == ['{"kind": "cancel"}']
    finally:
        await reader.close()
        await sender.close()


async def test_concurrent_senders_get_consecutive_positions(
    sql_url: str, table_prefix: str
) -> None:
    """Commands sent at once through two connections take consecutive positions, in the order
    they committed, so a reader past one position never misses an earlier command."""
    first, second = (
        make(sql_url, table_prefix=table_prefix),
        make(sql_url, table_prefix=table_prefix),
    )
    await first.open()
    await second.open()
    try:
        start = int(await first._command_position())
        await asyncio.gather(*(b._send_command(str(i)) for i, b in enumerate([first, second] * 5)))
        rows = await second._read_commands(str(start), 0)
        assert [int(p) for p, _ in rows] == list(range(start + 1, start + 11))
        assert sorted(d for _, d in rows) == sorted(str(i) for i in range(10))
    finally:
        await first.close()
        await second.close()


@pytest.mark.postgres
async def test_a_record_write_notifies_postgres_listeners(
    postgres_server: PostgresServer, table_prefix: str
) -> None:
    """Each record write batch sends a NOTIFY on the change channel: a listener wakes."""
    reader = PostgresBackend(postgres_server.url, table_prefix=table_prefix)
    writer = PostgresBackend(postgres_server.url, table_prefix=table_prefix)
    await reader.open()
    await writer.open()
    try:
        async with reader.listening("changes", 60) as woken:
            await writer.save_records([make_record("n1")], origin="writer")
            assert await woken()
        page = await reader.read_changes("0")
        assert page.entries == [("writer", ["n1"])]
    finally:
        await reader.close()
        await writer.close()


async def test_concurrent_overlapping_writes_neither_deadlock_nor_miscount(
    sql_url: str, table_prefix: str
) -> None:
    """Two instances writing overlapping batches in opposite orders at once all commit, and the
    stored counts are those of the rows."""
    first, second = (
        make(sql_url, table_prefix=table_prefix),
        make(sql_url, table_prefix=table_prefix),
    )
    await first.open()
    await second.open()
    try:
        ids = [f"t{i:02d}" for i in range(20)]
        batches = [
            (first if n % 2 else second).save_records(
                [make_record(i, status=TaskStatus.SUCCESS) for i in (ids if n % 2 else ids[::-1])]
            )
            for n in range(8)
        ]
        await asyncio.gather(*batches)
        assert await first.count_by_status() == {"success": 20}
        assert await second.status_counts() == {"success": 20}
    finally:
        await first.close()
        await second.close()
