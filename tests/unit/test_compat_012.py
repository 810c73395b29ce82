"""fastapi-taskflow 0.12's names and keywords still work, each renamed one with a warning."""

from __future__ import annotations

import importlib
import warnings
from datetime import timedelta
from pathlib import Path

import pytest

import fastapi_taskflow
from fastapi_taskflow import ManagedBackgroundTasks, TaskManager, TaskRegistry
from fastapi_taskflow.backends.base import TaskBackend
from fastapi_taskflow.backends.redis import RedisBackend
from fastapi_taskflow.backends.sqlite import SqliteBackend
from fastapi_taskflow.errors import UnknownTaskError
from fastapi_taskflow.loggers.chain import ObserverChain
from fastapi_taskflow.registry import TaskOptions


@pytest.mark.parametrize(
    ("module", "name", "new"),
    [
        ("fastapi_taskflow", "SnapshotBackend", TaskBackend),
        ("fastapi_taskflow.backends", "SnapshotBackend", TaskBackend),
        ("fastapi_taskflow", "LoggerChain", ObserverChain),
        ("fastapi_taskflow.loggers", "LoggerChain", ObserverChain),
        ("fastapi_taskflow", "TaskConfig", TaskOptions),
    ],
)
def test_renamed_classes_resolve_with_a_warning_naming_the_new_one(
    module: str, name: str, new: type
) -> None:
    """`from fastapi_taskflow import SnapshotBackend` (etc.) gives the new class and a
    DeprecationWarning that names it."""
    imported = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=f"{name} is now {new.__name__}"):
        assert getattr(imported, name) is new


def test_moved_and_new_names_import_without_a_warning() -> None:
    """TaskAuthBackend at the top level, PostgresBackend, MySQLBackend and ScheduledOnce."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from fastapi_taskflow import (
            MySQLBackend,
            PostgresBackend,
            ScheduledOnce,
            TaskAuthBackend,
        )
    from fastapi_taskflow.admin.auth import TaskAuthBackend as moved
    from fastapi_taskflow.backends.mysql import MySQLBackend as mysql
    from fastapi_taskflow.backends.postgres import PostgresBackend as postgres

    assert (TaskAuthBackend, PostgresBackend, MySQLBackend) == (moved, postgres, mysql)
    assert ScheduledOnce.__dataclass_fields__.keys() >= {"run_key", "func_name", "fire_at"}


@pytest.mark.parametrize("name", ["SnapshotScheduler", "TaskExecutionContext"])
def test_removed_names_say_what_replaces_them(name: str) -> None:
    """A 0.12 name with no counterpart fails with an AttributeError that says what to do."""
    with pytest.raises(AttributeError, match=f"{name} was removed after fastapi-taskflow 0.12"):
        getattr(fastapi_taskflow, name)


def test_task_config_has_0_12_fields() -> None:
    """TaskConfig (now TaskOptions) takes 0.12's fields by keyword."""
    with pytest.warns(DeprecationWarning, match="TaskConfig is now TaskOptions"):
        task_config = fastapi_taskflow.TaskConfig
    config = task_config(retries=3, delay=1.0, backoff=2.0, persist=True, name="send", eager=True)
    assert (config.retries, config.name, config.persist) == (3, "send", True)


def test_sqlite_db_path_keyword(tmp_path: Path) -> None:
    """SqliteBackend(db_path=...) works, warning that it is path= now; no argument at all
    means 0.12's tasks.db."""
    with pytest.warns(DeprecationWarning, match=r"db_path=\.\.\.\) is now path="):
        backend = SqliteBackend(db_path=tmp_path / "x.db")
    assert backend.path == tmp_path / "x.db"
    assert SqliteBackend().path == Path("tasks.db")
    with pytest.warns(DeprecationWarning, match="max_workers"):
        SqliteBackend(tmp_path / "y.db", max_workers=4)


def test_redis_ttl_keyword_and_client_options() -> None:
    """RedisBackend(url, ttl=...) sets record_ttl with a warning; extra keywords reach the
    Redis client as in 0.12."""
    with pytest.warns(DeprecationWarning, match=r"ttl=\.\.\.\) is now record_ttl="):
        backend = RedisBackend("redis://h:6379/0", ttl=3600, health_check_interval=5)
    assert backend.record_ttl == 3600
    assert backend.client_options == {"health_check_interval": 5}
    with pytest.raises(TypeError, match="give record_ttl= only"):
        RedisBackend("redis://h:6379/0", ttl=1, record_ttl=2)


@pytest.mark.redis
async def test_redis_client_options_reach_the_client(redis_url: str) -> None:
    """0.12's extra RedisBackend keywords are handed to redis.asyncio's client."""
    backend = RedisBackend(redis_url, client_name="taskflow-upgrade-test")
    await backend.open()
    try:
        assert await backend._redis().client_getname() == "taskflow-upgrade-test"
    finally:
        await backend.close()


def test_managed_background_tasks_task_manager_keyword() -> None:
    """ManagedBackgroundTasks(task_manager=...) works as in 0.12, with a warning."""
    manager = TaskManager()
    with pytest.warns(DeprecationWarning, match=r"task_manager=\.\.\.\) is now manager="):
        tasks = ManagedBackgroundTasks(task_manager=manager)
    assert tasks._manager is manager


async def test_scheduled_once_from_list_scheduled() -> None:
    """ScheduledOnce.from_dict turns list_scheduled()'s items into 0.12's objects."""
    from fastapi_taskflow import ScheduledOnce

    manager = TaskManager()

    @manager.task()
    async def remind(who: str) -> None:
        return None

    await manager.startup()
    try:
        key = await manager.schedule_once(remind, "ann", run_at=timedelta(hours=1), run_key="r1")
        [item] = await manager.list_scheduled()
        once = ScheduledOnce.from_dict(item)
    finally:
        await manager.shutdown()
    assert (key, once.run_key, once.func_name) == ("r1", "r1", item["func_name"])
    assert once.to_dict()["fire_at"].endswith("Z")


def send_email(address: str) -> None:
    """A task whose 0.12 name was its bare function name."""


def make_other_send_email() -> object:
    def send_email(address: str) -> None:  # same __name__, another qualified name
        return None

    return send_email


def test_bare_name_resolves_when_unambiguous() -> None:
    """A bare 0.12 name finds the one task of that function name."""
    registry = TaskRegistry()
    registry.task()(send_email)
    assert registry.get("send_email").func is send_email
    assert registry.find("send_email") is registry.get(registry.names()[0])


def test_ambiguous_bare_name_is_a_clear_error() -> None:
    """Two tasks with the function name send_email: the error lists both and says what to do."""
    registry = TaskRegistry()
    registry.task()(send_email)
    registry.task()(make_other_send_email())  # type: ignore[type-var]
    assert registry.find("send_email") is None
    with pytest.raises(UnknownTaskError, match="matches several tasks") as exc:
        registry.get("send_email")
    assert "make_other_send_email.<locals>.send_email" in str(exc.value)
    assert "@task(name='send_email')" in str(exc.value)
    with pytest.raises(UnknownTaskError, match="no task is registered under the name 'nope'"):
        registry.get("nope")
