"""The DI example (examples/di_app, what ``make run`` serves): routes enqueue tasks that use an
injected mailer; tests override providers; a bad setting stops the server with one short message."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dependency_injector import providers

from fastapi_taskflow import MemoryBackend

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from examples.di_app.app import create_app  # noqa: E402
from examples.di_app.containers import AppContainer, build_container  # noqa: E402
from examples.di_app.tasks import send_welcome_email  # noqa: E402
from examples.workloads import Mailer  # noqa: E402


@pytest.fixture
def container(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AppContainer]:
    """The example's container on config/taskflow.yaml, its files in tmp_path, a mail server
    that never fails."""
    monkeypatch.setenv("TASKFLOW_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("EXAMPLE_SMTP_FAILURE_RATE", "0")
    monkeypatch.delenv("TASKFLOW_CONFIG", raising=False)
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
    response = await client.post("/signup", params={"email": "ada@example.com"})
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
                task_id = (await client.post("/signup", params={"email": "b@x.io"})).json()
                await finish(container)
                record = (await client.get(f"/signups/{task_id['task_id']}")).json()
    mailer.send.assert_awaited_once_with("b@x.io", "Welcome aboard!")
    assert record["status"] == "success"


async def test_failing_mailer_is_retried(container: AppContainer, mocker: Any) -> None:
    """A mailer that fails once: the task retries and then succeeds."""
    mailer = mocker.AsyncMock(spec=Mailer)
    mailer.send.side_effect = [ConnectionError("smtp down"), None]
    with container.mailer.override(mailer):
        app = create_app(container)
        async with app.router.lifespan_context(app):
            manager = await container.taskflow.task_manager()
            handle = manager.add_task(send_welcome_email, "c@x.io")
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

    started, gate = asyncio.Event(), asyncio.Event()

    async def block() -> None:
        started.set()
        await gate.wait()

    container.config.taskflow.from_dict({"max_concurrent_tasks": 1, "drain_timeout": 0.05})
    async with _started(container) as manager:
        manager.add_task(block)
        await started.wait()  # the one slot is taken: the welcome mail waits in the queue
        pending = manager.add_task(send_welcome_email, "later@x.io")
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


def test_bad_setting_stops_uvicorn_with_one_short_message(tmp_path: Path) -> None:
    """Under uvicorn's factory, a bad setting exits 1 with the message alone, no traceback."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKFLOW_")}
    variable = "TASKFLOW_MAX_HISTORY"
    env.update({variable: "lots", "TASKFLOW_VAR_DIR": str(tmp_path)})
    command = [sys.executable, "-m", "uvicorn", "examples.di_app.app:create_app", "--factory"]
    result = subprocess.run(
        [*command, "--port", "0"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    first, problem = result.stderr.splitlines()  # the whole output: two lines
    assert first == "invalid taskflow configuration (1 problem):"
    assert "max_history: Input should be a valid integer" in problem
    assert problem.endswith(f"[from environment variable {variable}]")
