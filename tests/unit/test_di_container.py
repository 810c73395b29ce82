"""TaskflowContainer: only the selected backend, ordered start/stop, nothing half-started."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from dependency_injector import containers, providers
from dependency_injector.wiring import Provide, inject

from fastapi_taskflow import InMemoryLogger, MemoryBackend, TaskManager, TaskRegistry, TaskStatus
from fastapi_taskflow.backends import SqliteBackend
from fastapi_taskflow.di import (
    TaskflowContainer,
    TaskflowSettings,
    running,
    start_resources,
    stop_resources,
)
from fastapi_taskflow.errors import BackendError, ConfigurationError
from fastapi_taskflow.executors import threads as executor_threads


class RecordingBackend(MemoryBackend):
    """A memory backend that records when it opens and closes."""

    def __init__(self, events: list[str], fail: bool = False) -> None:
        super().__init__()
        self.events = events
        self.fail = fail

    async def open(self) -> None:
        if self.fail:
            raise BackendError("backend refused to open")
        if "backend opened" not in self.events:  # open() is idempotent, like the real ones
            self.events.append("backend opened")

    async def close(self) -> None:
        self.events.append("backend closed")


@pytest.fixture
def events() -> list[str]:
    """What happened, in order."""
    return []


@pytest.fixture
def container(tmp_path: Path) -> Iterator[TaskflowContainer]:
    """A container on an SQLite file in tmp_path."""
    container = TaskflowContainer()
    container.config.from_dict(
        {"backend": {"kind": "sqlite", "sqlite": {"path": str(tmp_path / "t.db")}}}
    )
    yield container
    container.reset_override()


@pytest.fixture
def record_stops(monkeypatch: pytest.MonkeyPatch, events: list[str]) -> None:
    """Record when the manager and the thread pool stop."""
    original = TaskManager.shutdown

    async def shutdown(self: TaskManager) -> None:
        await original(self)
        events.append("manager stopped")

    class RecordingPool(ThreadPoolExecutor):
        def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
            super().shutdown(wait=wait, cancel_futures=cancel_futures)
            events.append("thread pool stopped")

    monkeypatch.setattr(TaskManager, "shutdown", shutdown)
    # The container builds its pool with the one thread-pool builder, executors.threads.
    monkeypatch.setattr(executor_threads, "ThreadPoolExecutor", RecordingPool)


async def test_only_the_selected_backend_is_built(
    container: TaskflowContainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kind: sqlite builds and opens an SqliteBackend; no other backend is constructed."""
    import fastapi_taskflow.backends as backends

    built: list[str] = []
    for name in ("MemoryBackend", "RedisBackend"):
        monkeypatch.setattr(backends, name, lambda *a, _n=name, **k: built.append(_n))
    async with running(container):
        assert isinstance(await container.backend(), SqliteBackend)
    assert built == []


async def test_order_of_start_and_stop(
    container: TaskflowContainer, events: list[str], record_stops: None
) -> None:
    """Backend opens first; shutdown stops the manager, then the pools, then the backend."""
    container.config.from_dict({"max_sync_threads": 2})
    container.backend_factory.override(providers.Factory(RecordingBackend, events))
    await start_resources(container)
    assert isinstance((await container.task_manager()).executors.thread_pool, ThreadPoolExecutor)
    await container.shutdown_resources()
    assert events == ["backend opened", "manager stopped", "thread pool stopped", "backend closed"]


async def test_plain_init_resources_works(container: TaskflowContainer) -> None:
    """await container.init_resources() / shutdown_resources() start and stop everything."""
    await container.init_resources()
    manager = await container.task_manager()
    assert isinstance(manager, TaskManager)
    await container.shutdown_resources()
    assert not container.task_manager.initialized
    assert not container.backend.initialized


async def test_tasks_from_the_users_registry_run(tmp_path: Path) -> None:
    """Tasks declared on the user's own registry at import time run in the container's manager."""
    registry = TaskRegistry()

    @registry.task(retries=1)
    async def double(x: int) -> int:
        return x * 2

    container = TaskflowContainer(registry=providers.Object(registry))
    container.config.from_dict({"backend": {"kind": "memory"}})
    async with running(container):
        manager = await container.task_manager()
        handle = manager.add_task(double, 4)
        await manager.join()
        assert handle.status is TaskStatus.SUCCESS
        assert manager.registry is registry


async def test_failed_start_stops_what_started(
    container: TaskflowContainer,
    events: list[str],
    record_stops: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The manager fails to start: the pool and backend that did start are stopped again."""

    async def broken_startup(self: TaskManager) -> None:
        raise RuntimeError("manager cannot start")

    monkeypatch.setattr(TaskManager, "startup", broken_startup)
    container.config.from_dict({"max_sync_threads": 2})
    container.backend_factory.override(providers.Factory(RecordingBackend, events))
    with pytest.raises(RuntimeError, match="manager cannot start"):
        await start_resources(container)
    assert events == ["backend opened", "thread pool stopped", "backend closed"]
    resources = container.traverse(types=[providers.Resource])
    assert not any(r.initialized for r in resources)


async def test_backend_that_fails_to_open(container: TaskflowContainer, events: list[str]) -> None:
    """A backend that fails to open: its error is raised and nothing stays initialised."""
    container.backend_factory.override(providers.Factory(RecordingBackend, events, fail=True))
    with pytest.raises(BackendError, match="refused"):
        await start_resources(container)
    resources = container.traverse(types=[providers.Resource])
    assert not any(r.initialized for r in resources)


async def test_invalid_config_fails_before_anything_starts(
    container: TaskflowContainer, events: list[str]
) -> None:
    """A bad key in container.config: ConfigurationError, and no resource started."""
    container.config.from_dict({"max_sync_threads": "many"})
    container.backend_factory.override(providers.Factory(RecordingBackend, events))
    with pytest.raises(ConfigurationError, match="max_sync_threads"):
        await start_resources(container)
    assert events == []


async def test_unreachable_redis_names_url_without_password() -> None:
    """A Redis URL that does not answer: BackendError with the host, never the password."""
    container = TaskflowContainer()
    url = "redis://user:SECRET-PW@127.0.0.1:1/0"
    container.config.from_dict({"backend": {"kind": "redis", "redis": {"url": url}}})
    container.config.from_dict({"backend": {"redis": {"socket_timeout": 0.5}}})
    with pytest.raises(BackendError) as exc:
        await start_resources(container)
    assert "127.0.0.1:1" in str(exc.value)
    assert "SECRET-PW" not in str(exc.value)
    assert not container.backend.initialized


async def test_missing_backend_package_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kind: redis without the redis package: ConfigurationError naming the install command."""
    import fastapi_taskflow.backends as backends

    monkeypatch.delattr(backends, "redis", raising=False)
    monkeypatch.delitem(sys.modules, "fastapi_taskflow.backends.redis", raising=False)
    monkeypatch.setitem(sys.modules, "redis", None)
    container = TaskflowContainer()
    container.config.from_dict({"backend": {"kind": "redis"}})
    with pytest.raises(ConfigurationError, match="pip install redis"):
        await start_resources(container)


async def test_from_yaml_and_from_pydantic_both_work(tmp_path: Path) -> None:
    """config.from_yaml(path) and config.from_pydantic(settings) give the same settings."""
    path = tmp_path / "t.yaml"
    path.write_text("backend:\n  kind: memory\nmax_history: 7\n")
    by_yaml = TaskflowContainer()
    by_yaml.config.from_yaml(str(path))
    by_settings = TaskflowContainer()
    by_settings.config.from_pydantic(TaskflowSettings(path))
    assert by_yaml.settings() == by_settings.settings()
    assert by_yaml.settings().max_history == 7


async def test_loggers_from_settings() -> None:
    """loggers: entries become observers of the listed types."""
    container = TaskflowContainer()
    container.config.from_dict({"loggers": [{"type": "memory"}, {"type": "stdout"}]})
    observers = container.loggers()
    assert [type(o).__name__ for o in observers] == ["InMemoryLogger", "StdoutLogger"]


async def test_overrides_the_dependency_injector_way() -> None:
    """backend and loggers can be overridden, also as a context manager."""
    backend = MemoryBackend()
    events = InMemoryLogger()
    container = TaskflowContainer()
    container.loggers.override([events])
    with container.backend.override(providers.Object(backend)):
        async with running(container):
            manager = await container.task_manager()
            assert manager.backend is backend
            manager.add_task(_noop)
            await manager.join()
    assert [e.status for e in events.lifecycle_events][-1] is TaskStatus.SUCCESS


async def _noop() -> None:
    return None


class _Mailer:
    def __init__(self) -> None:
        self.sent: list[str] = []


class _AppContainer(containers.DeclarativeContainer):
    config = providers.Configuration()
    mailer = providers.Singleton(_Mailer)
    taskflow = providers.Container(TaskflowContainer, config=config.taskflow)


_tasks = TaskRegistry()


@_tasks.task()
@inject
async def _welcome(email: str, mailer: _Mailer = Provide[_AppContainer.mailer]) -> None:
    mailer.sent.append(email)


async def test_embedded_container_and_injected_task() -> None:
    """An app container embeds TaskflowContainer; a task gets its mailer at run time only."""
    app = _AppContainer()
    app.config.from_dict({"taskflow": {"backend": {"kind": "memory"}}})
    app.taskflow.registry.override(_tasks)
    app.wire(modules=[__name__])
    try:
        async with running(app):
            manager = await app.taskflow.task_manager()
            handle = manager.add_task(_welcome, "a@example.com")
            await manager.join()
            assert handle.status is TaskStatus.SUCCESS, handle.record.error
            assert app.mailer().sent == ["a@example.com"]
            assert handle.record.kwargs == {}
            assert handle.record.args == ("a@example.com",)
        assert not app.taskflow.task_manager.initialized
    finally:
        app.unwire()


def test_start_and_stop_handle_sync_only_containers() -> None:
    """start/stop_resources work when init_resources() would return None (nothing async)."""
    import asyncio

    stopped: list[bool] = []

    def resource() -> Iterator[str]:
        yield "ready"
        stopped.append(True)

    class Sync(containers.DeclarativeContainer):
        thing = providers.Resource(resource)

    sync = Sync()
    assert sync.init_resources() is None
    sync.shutdown_resources()

    async def cycle() -> Any:
        await start_resources(sync)
        value = sync.thing()
        await stop_resources(sync)
        return value

    assert asyncio.run(cycle()) == "ready"
    assert stopped == [True, True]
