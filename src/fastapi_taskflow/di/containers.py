"""TaskflowContainer: the declarative container that builds and runs a ``TaskManager``.

Three traps of dependency-injector shape this module:

* A ``Selector`` over ``Resource`` providers initialises *every* branch. So ``backend`` is one
  ``Resource`` over a ``Selector`` of plain factories: only the configured backend is built and
  opened.
* ``shutdown_resources()`` orders shutdown only along direct Resource-to-Resource injections.
  So ``task_manager`` receives ``backend`` and both pools directly, and each pool receives
  ``backend`` (``_stop_before``): shutdown runs manager, then pools, then backend.
* ``init_resources()`` returns None when no resource is async, and a failed ``gather`` leaves
  the other resources running. :func:`start_resources` and :func:`stop_resources` handle both:
  on a failed start, whatever did start is stopped again.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from dependency_injector import containers, providers

from ..backends.factory import BackendKind, build_backend
from ..crypto import ArgumentCipher
from ..executors.threads import make_thread_pool
from ..loggers.base import TaskObserver
from ..registry import TaskRegistry
from ..store import TaskStore
from .settings import (
    EncryptionSettings,
    FileLoggerSettings,
    LoggerSettings,
    MemoryLoggerSettings,
    MySQLSettings,
    PostgresSettings,
    TaskflowSettings,
)

if TYPE_CHECKING:
    from ..backends.base import TaskBackend
    from ..executors.process import ProcessPool
    from ..manager import TaskManager

logger = logging.getLogger("fastapi_taskflow.di")

# ---- builders (plain functions: each one is easy to call, test and replace) ----------------


def make_sql_backend(kind: BackendKind, server: PostgresSettings | MySQLSettings) -> TaskBackend:
    """The PostgreSQL or MySQL backend ``backend.<kind>`` describes (not opened)."""
    return build_backend(kind, url=str(server.url), **server.options())


async def open_backend(
    settings: TaskflowSettings, backend: TaskBackend
) -> AsyncIterator[TaskBackend]:
    """The backend's lifetime: opened at startup, closed after everything that uses it.

    ``settings`` comes first so the configuration is validated before any backend is built,
    even when ``backend_factory`` is overridden.
    """
    await backend.open()  # BackendError names the server, never a password
    logger.debug("backend %s opened", backend.describe())
    try:
        yield backend
    finally:
        await backend.close()
        logger.debug("backend %s closed", backend.describe())


async def thread_pool_resource(
    max_workers: int | None, _stop_before: object = None
) -> AsyncIterator[ThreadPoolExecutor | None]:
    """An own pool for sync tasks when ``max_sync_threads`` is set; else None (to_thread)."""
    if max_workers is None:
        yield None
        return
    pool = make_thread_pool(max_workers)
    try:
        yield pool
    finally:
        await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)


async def process_pool_resource(
    max_workers: int | None, shutdown_timeout: float, _stop_before: object = None
) -> AsyncIterator[ProcessPool | None]:
    """A worker pool when ``max_process_workers`` is set; else None (the manager makes one
    on first use of a process task and closes it itself)."""
    if max_workers is None:
        yield None
        return
    from ..executors.process import ProcessPool  # needs the 'process' extra (cloudpickle)

    pool = ProcessPool(max_workers=max_workers, shutdown_timeout=shutdown_timeout)
    try:
        yield pool
    finally:
        await pool.close()


def build_observers(entries: list[LoggerSettings]) -> list[TaskObserver]:
    """The observers listed under ``loggers:``."""
    from ..loggers import FileLogger, InMemoryLogger, StdoutLogger

    observers: list[TaskObserver] = []
    for entry in entries:
        options = entry.model_dump(exclude={"type"})
        if isinstance(entry, FileLoggerSettings):
            observers.append(FileLogger(**options))
        elif isinstance(entry, MemoryLoggerSettings):
            observers.append(InMemoryLogger(**options))
        else:
            observers.append(StdoutLogger(**options))
    return observers


def build_cipher(encryption: EncryptionSettings) -> ArgumentCipher | None:
    """The argument cipher for ``encryption.keys`` (first encrypts), or None without keys."""
    keys = [key.get_secret_value() for key in encryption.keys]
    return ArgumentCipher(keys) if keys else None


def make_task_manager(settings: TaskflowSettings, **parts: Any) -> TaskManager:
    """The ``TaskManager`` ``settings`` describe, given its ``parts`` (backend, store, pools...)."""
    from ..manager import TaskManager

    return TaskManager(
        settings=settings.manager_settings(),
        redact=settings.redact,
        encrypt_errors=settings.encrypt_errors,
        tracing=settings.tracing,
        **parts,
    )


async def run_task_manager(
    settings: TaskflowSettings,
    *,
    registry: TaskRegistry | None,
    backend: TaskBackend,
    store: TaskStore,
    loggers: list[TaskObserver],
    cipher: ArgumentCipher | None,
    thread_pool: ThreadPoolExecutor | None,
    process_pool: ProcessPool | None,
) -> AsyncIterator[TaskManager]:
    """The manager's lifetime: started after its parts, stopped (drained) before them."""
    manager = make_task_manager(
        settings,
        snapshot_backend=backend,
        registry=registry,
        store=store,
        loggers=list(loggers),
        cipher=cipher,
        thread_pool=thread_pool,
        process_pool=process_pool,
        close_backend=False,
    )
    await manager.startup()
    try:
        yield manager
    finally:
        await manager.shutdown()


# ---- the container ---------------------------------------------------------------------------


class TaskflowContainer(containers.DeclarativeContainer):
    """Builds the ``TaskManager`` and its parts from ``config``; see docs/dependency-injection.md.

    Load configuration with ``config.from_pydantic(load_settings())``, ``config.from_yaml(path)``
    or ``config.from_dict(...)``: it is validated by :class:`TaskflowSettings` either way,
    before any resource starts.
    """

    config = providers.Configuration()
    settings = providers.Callable(TaskflowSettings.from_mapping, config)

    registry: providers.Provider[TaskRegistry] = providers.Singleton(TaskRegistry)

    backend_factory = providers.Selector(
        settings.provided.backend.kind,
        memory=providers.Factory(build_backend, "memory"),
        sqlite=providers.Factory(
            build_backend,
            "sqlite",
            path=settings.provided.backend.sqlite.path,
            integrity_check=settings.provided.backend.sqlite.integrity_check,
        ),
        redis=providers.Factory(
            build_backend,
            "redis",
            url=settings.provided.backend.redis.url,
            prefix=settings.provided.backend.redis.prefix,
            socket_timeout=settings.provided.backend.redis.socket_timeout,
        ),
        postgres=providers.Factory(
            make_sql_backend, "postgres", settings.provided.backend.postgres
        ),
        mysql=providers.Factory(make_sql_backend, "mysql", settings.provided.backend.mysql),
    )
    backend = providers.Resource(open_backend, settings, backend_factory)

    store = providers.Singleton(TaskStore, max_history=settings.provided.max_history)
    loggers = providers.Callable(build_observers, settings.provided.loggers)
    encryptor = providers.Singleton(build_cipher, settings.provided.encryption)

    thread_pool = providers.Resource(
        thread_pool_resource, settings.provided.max_sync_threads, _stop_before=backend
    )
    process_pool = providers.Resource(
        process_pool_resource,
        settings.provided.max_process_workers,
        settings.provided.process_shutdown_timeout,
        _stop_before=backend,
    )

    task_manager = providers.Resource(
        run_task_manager,
        settings,
        registry=registry,
        backend=backend,
        store=store,
        loggers=loggers,
        cipher=encryptor,
        thread_pool=thread_pool,
        process_pool=process_pool,
    )


# ---- starting and stopping -------------------------------------------------------------------


async def start_resources(container: containers.Container) -> None:
    """``init_resources()`` that never leaves a half-started container.

    Every resource is awaited (even after one fails); then, if any failed, the ones that
    started are stopped again and the first error is raised.
    """
    pending: list[asyncio.Future[Any]] = []
    error: BaseException | None = None
    try:
        for provider in container.traverse(types=[providers.BaseResource]):
            result = provider.init()
            if inspect.isawaitable(result):
                pending.append(asyncio.ensure_future(result))
    except Exception as exc:  # a sync failure (bad config): stop looking, clean up below
        error = exc
    results = await asyncio.gather(*pending, return_exceptions=True)
    error = error or next((r for r in results if isinstance(r, BaseException)), None)
    if error is not None:
        await stop_resources(container)
        raise error


async def stop_resources(container: containers.Container) -> None:
    """``shutdown_resources()`` in dependency order that goes on after a failing shutdown.

    Each failure is logged; the first is raised once every resource is down.
    """
    errors: list[Exception] = []
    resources = list(container.traverse(types=[providers.BaseResource]))
    for _ in range(len(resources) + 1):
        if not any(r.initialized for r in resources):
            break
        try:
            result = container.shutdown_resources()
            if result is not None:
                await result
        except Exception as exc:  # one failure must not keep the others open
            logger.error("a taskflow resource failed to shut down", exc_info=True)
            errors.append(exc)
    if errors:
        raise errors[0]


@asynccontextmanager
async def running(container: containers.Container) -> AsyncIterator[containers.Container]:
    """``async with running(container):`` starts the resources and stops them on exit."""
    await start_resources(container)
    try:
        yield container
    finally:
        await stop_resources(container)
