"""The di_app example: a route enqueues a task that uses an injected mailer; overrides in tests."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dependency_injector import providers

from fastapi_taskflow import MemoryBackend

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

from di_app.app import create_app  # noqa: E402
from di_app.containers import AppContainer, build_container  # noqa: E402
from di_app.services import Mailer  # noqa: E402


@pytest.fixture
def container(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AppContainer]:
    """The example's container, with its SQLite file in tmp_path."""
    monkeypatch.setenv("DI_APP_DB", str(tmp_path / "app.db"))
    container = build_container()
    yield container
    container.unwire()


@pytest.fixture
async def client(container: AppContainer) -> AsyncIterator[httpx.AsyncClient]:
    """A client on the example app, inside its lifespan."""
    app = create_app(container)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def finish(container: AppContainer) -> None:
    await (await container.taskflow.task_manager()).join()


async def test_signup_sends_the_welcome_mail(
    container: AppContainer, client: httpx.AsyncClient
) -> None:
    """The real app end to end: 202, the task succeeds, the mailer got the mail."""
    response = await client.post("/signups", json={"email": "ada@example.com"})
    assert response.status_code == 202
    await finish(container)
    status = await client.get(f"/signups/{response.json()['task_id']}")
    assert status.json()["status"] == "success"
    assert container.mailer().outbox == [("ada@example.com", "Welcome aboard!")]
    assert (await client.get("/mailer")).json() == {"sender": "noreply@example.com", "sent": 1}


async def test_override_the_mailer_and_the_backend(container: AppContainer, mocker: Any) -> None:
    """Three lines swap the mailer for a mock and the backend for memory."""
    mailer = mocker.AsyncMock(spec=Mailer)
    with (
        container.mailer.override(mailer),
        container.taskflow.backend.override(providers.Object(MemoryBackend())),
    ):
        app = create_app(container)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                task_id = (await client.post("/signups", json={"email": "b@x.io"})).json()
                await finish(container)
                record = (await client.get(f"/signups/{task_id['task_id']}")).json()
    mailer.send.assert_awaited_once_with("b@x.io", "Welcome aboard!")
    assert record["status"] == "success"


async def test_failing_mailer_is_retried(container: AppContainer, mocker: Any) -> None:
    """A mailer that fails once: the task retries (retries=2) and then succeeds."""
    mailer = mocker.AsyncMock(spec=Mailer)
    mailer.send.side_effect = [ConnectionError("smtp down"), None]
    with container.mailer.override(mailer):
        app = create_app(container)
        async with app.router.lifespan_context(app):
            manager = await container.taskflow.task_manager()
            from di_app.tasks import send_welcome

            handle = manager.add_task(send_welcome, "c@x.io")
            await manager.join()
    assert handle.status.value == "success"
    assert handle.record.retries_used == 1
    assert handle.record.kwargs == {}


async def test_unknown_signup_task_is_404(client: httpx.AsyncClient) -> None:
    """Following an unknown task id answers a JSON 404."""
    response = await client.get("/signups/does-not-exist")
    assert response.status_code == 404
    assert response.json()["detail"]["error"] == "task_not_found"


async def test_injected_task_survives_a_restart(container: AppContainer, mocker: Any) -> None:
    """A welcome mail still pending at shutdown runs after a restart, with the new mailer."""
    import asyncio

    from di_app.tasks import send_welcome

    started, gate = asyncio.Event(), asyncio.Event()

    async def block() -> None:
        started.set()
        await gate.wait()

    container.config.taskflow.from_dict({"max_concurrent_tasks": 1, "drain_timeout": 0.05})
    async with _started(container) as manager:
        manager.add_task(block)
        await started.wait()  # the one slot is taken: the welcome mail waits in the queue
        pending = manager.add_task(send_welcome, "later@x.io")
    restarted = build_container()
    mailer = mocker.AsyncMock(spec=Mailer)
    try:
        with restarted.mailer.override(mailer):
            async with _started(restarted) as manager:
                await manager.join()
                record = (await manager.get_task(pending.task_id)).record  # type: ignore[union-attr]
    finally:
        restarted.unwire()
    assert record.status.value == "success"
    mailer.send.assert_awaited_once_with("later@x.io", "Welcome aboard!")


def _started(container: AppContainer) -> Any:
    from contextlib import asynccontextmanager

    from fastapi_taskflow.di import running

    @asynccontextmanager
    async def run() -> AsyncIterator[Any]:
        async with running(container):
            yield await container.taskflow.task_manager()

    return run()
