"""Both example apps work end to end, worker process included: the DI app ``make run`` serves
(examples/di_app, config/taskflow.yaml) and the plain one (examples/app.py, ``APP=plain``)."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from fastapi_taskflow import TaskManager
from fastapi_taskflow.di.fastapi import resolve_now

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Example:
    """One example app, and how to reach the manager it runs."""

    app: FastAPI
    manager: Callable[[], TaskManager]
    database: Path
    log_file: Path


def fresh(module: str) -> object:
    """``module`` imported anew (the plain app builds its manager at import time)."""
    for name in [n for n in sys.modules if n == "examples" or n.startswith("examples.")]:
        sys.modules.pop(name)
    return importlib.import_module(module)


@pytest.fixture(params=["di", "plain"])
def example(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Example]:
    """An example app writing under tmp_path, with a mail server that never fails."""
    monkeypatch.setenv("TASKFLOW_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("EXAMPLE_SMTP_FAILURE_RATE", "0")
    monkeypatch.delenv("TASKFLOW_CONFIG", raising=False)
    monkeypatch.syspath_prepend(str(REPO))
    try:
        if request.param == "plain":
            plain = fresh("examples.app")
            yield Example(
                plain.app,  # type: ignore[attr-defined]
                lambda: plain.task_manager,  # type: ignore[attr-defined]
                tmp_path / "tasks.db",
                tmp_path / "tasks.log",
            )
        else:
            di = fresh("examples.di_app.app")
            app = di.create_app()  # type: ignore[attr-defined]
            container = app.state.container
            yield Example(
                app,
                lambda: resolve_now(container.taskflow.task_manager),
                tmp_path / "taskflow.db",
                tmp_path / "tasks.log",
            )
            container.unwire()
    finally:
        fresh("examples")


@pytest.mark.slow
async def test_example_app_runs_its_three_tasks_and_serves_the_dashboard(
    example: Example,
) -> None:
    """Sign-up email, process report and contact import all succeed; index and dashboard answer."""
    async with LifespanManager(example.app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            index = await client.get("/")
            ids = [
                (await client.post("/signup", params={"email": "ada@example.com"})).json(),
                (await client.post("/reports", params={"size": 50_000})).json(),
                (await client.post("/imports", params={"rows": 60})).json(),
            ]
            await example.manager().join(timeout=60)
            tasks = [(await client.get(item["status_url"])).json() for item in ids]
            dashboard = await client.get("/tasks/dashboard")
    assert index.status_code == 200
    assert "/tasks/dashboard" in index.text
    assert [task["status"] for task in tasks] == ["success", "success", "success"]
    assert [task["executor"] for task in tasks] == ["async", "process", "async"]
    names = [task["func_name"].rpartition(":")[2] for task in tasks]
    assert names == ["send_welcome_email", "build_report", "import_contacts"]
    assert tasks[2]["progress"] == 1.0
    assert dashboard.status_code == 200
    assert example.database.is_file()
    lines = [json.loads(line) for line in example.log_file.read_text().splitlines()]
    assert any(line.get("message") == "report ready" for line in lines)
