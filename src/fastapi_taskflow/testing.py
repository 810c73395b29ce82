"""The pytest plugin (entry point ``pytest11``): fixtures for testing apps that use taskflow.

Fixtures (all prefixed ``taskflow_`` so they never clash with a project's own):

* ``taskflow_registry``: the ``TaskRegistry`` the bare container runs; override it to return yours.
* ``taskflow_events``: an ``InMemoryLogger`` that captures every log line and status change.
* ``taskflow_app_container``: your app's own container, or None (the default) for a bare
  ``TaskflowContainer``. Name its factory in the ``taskflow_container`` ini option, or
  override the fixture.
* ``taskflow_container``: that container (or the bare one) on the memory backend, observed by
  ``taskflow_events``, not started.
* ``taskflow_manager``: its started ``TaskManager`` (stopped after the test).
* ``taskflow_app``: your app (the ``taskflow_app`` ini option), or a bare FastAPI app with the
  container installed; override it to return yours.
* ``taskflow_client``: an ``httpx.AsyncClient`` on ``taskflow_app`` whose lifespan runs.
* ``taskflow_drain_timeout``: how long teardown waits for tasks still running (1 s); what is left
  then is cancelled and named in a :class:`TaskflowTeardownWarning`.

The async fixtures need pytest-asyncio. This module is imported in every pytest run of a project
that installs fastapi-taskflow, so it imports the library only inside the fixtures.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import httpx
    from fastapi import FastAPI

    from .di.containers import TaskflowContainer
    from .loggers import InMemoryLogger
    from .manager import TaskManager
    from .registry import TaskRegistry

#: The configuration of the bare ``taskflow_container``: memory backend, nothing kept between
#: tests, a short drain.
TEST_CONFIG: dict[str, Any] = {
    "backend": {"kind": "memory"},
    "requeue_pending": False,
    "drain_timeout": 1.0,
    "admin": {"enabled": False},
}

CONTAINER_INI = "taskflow_container"
APP_INI = "taskflow_app"


class TaskflowTeardownWarning(UserWarning):
    """Raised (as a warning) when a fixture's teardown cancelled tasks a test left running."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        CONTAINER_INI,
        "module:callable that builds your app's container (one that embeds a "
        "TaskflowContainer); the fixtures run it on the memory backend",
        default="",
    )
    parser.addini(
        APP_INI,
        "module:callable that builds your app from the container (taskflow_app fixture)",
        default="",
    )


def load_factory(spec: str, option: str) -> Callable[..., Any]:
    """``"package.module:callable"`` -> the callable; a clear usage error otherwise."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise pytest.UsageError(f"{option} = {spec!r}: write it as package.module:callable")
    try:
        factory: Callable[..., Any] = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise pytest.UsageError(f"{option} = {spec!r}: {exc}") from None
    return factory


@pytest.fixture
def taskflow_registry() -> TaskRegistry:
    """An empty registry; override this fixture to return your app's registry."""
    from .registry import TaskRegistry

    return TaskRegistry()


@pytest.fixture
def taskflow_events() -> InMemoryLogger:
    """An observer that keeps every event: ``.log_events`` and ``.lifecycle_events``."""
    from .loggers import InMemoryLogger

    return InMemoryLogger(min_level="debug", log_lifecycle=True)


@pytest.fixture
def taskflow_app_container(pytestconfig: pytest.Config) -> Iterator[Any]:
    """Your app's container, built by the ``taskflow_container`` ini option's factory (and
    unwired after the test); None without it. Override to return your own."""
    spec = str(pytestconfig.getini(CONTAINER_INI))
    if not spec:
        yield None
        return
    container = load_factory(spec, CONTAINER_INI)()
    yield container
    container.unwire()


@pytest.fixture
def taskflow_container(
    taskflow_app_container: Any,
    taskflow_registry: TaskRegistry,
    taskflow_events: InMemoryLogger,
) -> Iterator[Any]:
    """The container the other fixtures use, on the memory backend, observed by
    ``taskflow_events``. Your app's container when ``taskflow_app_container`` gives one (its
    registry, queues and other settings stay yours); else a bare ``TaskflowContainer`` running
    ``taskflow_registry``."""
    from dependency_injector import providers

    from .backends.factory import build_backend
    from .di.containers import TaskflowContainer
    from .di.fastapi import find_taskflow

    if taskflow_app_container is None:
        container: Any = TaskflowContainer()
        container.config.from_dict(TEST_CONFIG)
        container.registry.override(taskflow_registry)
        taskflow = container
    else:
        container = taskflow_app_container
        taskflow = find_taskflow(container)
    memory = providers.Factory(build_backend, "memory")
    with taskflow.backend_factory.override(memory), taskflow.loggers.override([taskflow_events]):
        yield container
    if taskflow_app_container is None:
        container.reset_override()


@pytest.fixture
def taskflow_app(pytestconfig: pytest.Config, taskflow_container: Any) -> FastAPI:
    """Your app built by the ``taskflow_app`` ini option's factory from ``taskflow_container``,
    else a bare app with the container installed; override to return your own app."""
    spec = str(pytestconfig.getini(APP_INI))
    if spec:
        app: FastAPI = load_factory(spec, APP_INI)(taskflow_container)
        return app
    from fastapi import FastAPI

    from .di.fastapi import install

    app = FastAPI()
    install(app, taskflow_container)
    return app


@pytest.fixture
def taskflow_drain_timeout() -> float:
    """Seconds teardown waits for tasks still running before it cancels them."""
    return 1.0


async def settle(manager: TaskManager, timeout: float) -> None:
    """Wait up to ``timeout`` for the manager to be idle; cancel what is left and say so."""
    try:
        await manager.join(timeout=timeout)
        return
    except TimeoutError:
        pass
    left = [r for r in manager.store.newest_first() if not r.status.finished]
    for record in left:
        manager.cancel(record.task_id)
    named = ", ".join(f"{r.func_name} [{r.task_id}] ({r.status.value})" for r in left)
    warnings.warn(
        f"taskflow fixtures cancelled {len(left)} task(s) still pending or running "
        f"{timeout:g} s after the test: {named}",
        TaskflowTeardownWarning,
        stacklevel=1,
    )
    # Cancelled coroutines stop at once; what still runs (a sync task in a thread) is left to
    # the manager's own drain at shutdown.
    with contextlib.suppress(TimeoutError):
        await manager.join(timeout=timeout)


try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the sync fixtures above still work
    pass
else:

    @pytest_asyncio.fixture
    async def taskflow_manager(
        taskflow_container: TaskflowContainer, taskflow_drain_timeout: float
    ) -> AsyncIterator[TaskManager]:
        """The container's started manager; stopped after the test, what is left cancelled."""
        from .di.containers import running
        from .di.fastapi import find_taskflow, resolve

        async with running(taskflow_container):
            manager: TaskManager = await resolve(find_taskflow(taskflow_container).task_manager)
            yield manager
            await settle(manager, taskflow_drain_timeout)

    @pytest_asyncio.fixture
    async def taskflow_client(
        taskflow_app: FastAPI, taskflow_drain_timeout: float
    ) -> AsyncIterator[httpx.AsyncClient]:
        """An ``httpx.AsyncClient`` on ``taskflow_app``, inside the app's lifespan."""
        import httpx

        from .di.fastapi import STATE_KEY, resolve_now

        async with taskflow_app.router.lifespan_context(taskflow_app):
            transport = httpx.ASGITransport(app=taskflow_app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                yield client
            container = getattr(taskflow_app.state, STATE_KEY, None)
            if container is not None:
                await settle(resolve_now(container.task_manager), taskflow_drain_timeout)
