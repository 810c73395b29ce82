"""The app that ``make run`` serves (examples/app.py) works end to end, worker process included."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from asgi_lifespan import LifespanManager

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """examples.app imported fresh, writing under tmp_path, with a mail server that never fails."""
    monkeypatch.setenv("TASKFLOW_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("EXAMPLE_SMTP_FAILURE_RATE", "0")
    monkeypatch.syspath_prepend(str(REPO))
    for name in ("examples.app", "examples"):
        sys.modules.pop(name, None)
    try:
        yield importlib.import_module("examples.app")
    finally:
        for name in ("examples.app", "examples"):
            sys.modules.pop(name, None)


@pytest.mark.slow
async def test_example_app_runs_its_three_tasks_and_serves_the_dashboard(
    example: ModuleType, tmp_path: Path
) -> None:
    """Sign-up email, process report and contact import all succeed; index and dashboard answer."""
    app, task_manager = example.app, example.task_manager
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            index = await client.get("/")
            ids = [
                (await client.post("/signup", params={"email": "ada@example.com"})).json(),
                (await client.post("/reports", params={"size": 50_000})).json(),
                (await client.post("/imports", params={"rows": 60})).json(),
            ]
            await task_manager.join(timeout=60)
            tasks = [(await client.get(f"/tasks/{item['task_id']}")).json() for item in ids]
            dashboard = await client.get("/tasks/dashboard")
    assert index.status_code == 200
    assert "/tasks/dashboard" in index.text
    assert [task["status"] for task in tasks] == ["success", "success", "success"]
    assert [task["executor"] for task in tasks] == ["async", "process", "async"]
    assert tasks[2]["progress"] == 1.0
    assert dashboard.status_code == 200
    assert (tmp_path / "tasks.db").is_file()
    lines = [json.loads(line) for line in (tmp_path / "tasks.log").read_text().splitlines()]
    assert any(line.get("message") == "report ready" for line in lines)
