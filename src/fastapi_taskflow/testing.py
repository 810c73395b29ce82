"""The pytest plugin (entry point ``pytest11``): fixtures for testing apps that use taskflow.

Fixtures (all prefixed ``taskflow_`` so they never clash with a project's own):

* ``taskflow_registry``: the ``TaskRegistry`` the container runs; override it to return yours.
* ``taskflow_events``: an ``InMemoryLogger`` that captures every log line and status change.
* ``taskflow_container``: a ``TaskflowContainer`` on the memory backend, not started.
* ``taskflow_manager``: its started ``TaskManager`` (stopped after the test).
* ``taskflow_app``: a bare FastAPI app with the container installed; override it to return yours.
* ``taskflow_client``: an ``httpx.AsyncClient`` on ``taskflow_app`` whose lifespan runs.

The async fixtures need pytest-asyncio. This module is imported in every pytest run of a project
that installs fastapi-taskflow, so it imports the library only inside the fixtures.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import httpx
    from fastapi import FastAPI

    from .di.containers import TaskflowContainer
    from .loggers import InMemoryLogger
    from .manager import TaskManager
    from .registry import TaskRegistry

#: The configuration of ``taskflow_container``: memory backend, nothing kept between tests.
TEST_CONFIG: dict[str, Any] = {
    "backend": {"kind": "memory"},
    "requeue_pending": False,
    "admin": {"enabled": False},
}


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
def taskflow_container(
    taskflow_registry: TaskRegistry, taskflow_events: InMemoryLogger
) -> Iterator[TaskflowContainer]:
    """A container on the memory backend whose observers are ``taskflow_events``."""
    from .di.containers import TaskflowContainer

    container = TaskflowContainer()
    container.config.from_dict(TEST_CONFIG)
    container.registry.override(taskflow_registry)
    container.loggers.override([taskflow_events])
    yield container
    container.reset_override()


@pytest.fixture
def taskflow_app(taskflow_container: TaskflowContainer) -> FastAPI:
    """A bare app with the container installed; override to return your own app."""
    from fastapi import FastAPI

    from .di.fastapi import install

    app = FastAPI()
    install(app, taskflow_container)
    return app


try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the sync fixtures above still work
    pass
else:

    @pytest_asyncio.fixture
    async def taskflow_manager(
        taskflow_container: TaskflowContainer,
    ) -> AsyncIterator[TaskManager]:
        """The container's started manager; stopped (tasks drained) after the test."""
        from .di.containers import running
        from .di.fastapi import resolve

        async with running(taskflow_container):
            manager: TaskManager = await resolve(taskflow_container.task_manager)
            yield manager

    @pytest_asyncio.fixture
    async def taskflow_client(taskflow_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
        """An ``httpx.AsyncClient`` on ``taskflow_app``, inside the app's lifespan."""
        import httpx

        async with taskflow_app.router.lifespan_context(taskflow_app):
            transport = httpx.ASGITransport(app=taskflow_app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                yield client
