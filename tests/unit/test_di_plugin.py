"""The pytest plugin, run as a user's project runs it: with the app's own container (two ini
lines, or one fixture), and a teardown that does not wait silently for tasks left running."""

from __future__ import annotations

from pathlib import Path

import pytest

# Imported here so they stay loaded across the in-process runs below: pytester drops modules
# first imported inside a run, and dependency-injector keeps its own reference to
# pydantic-settings.
import fastapi_taskflow.di  # noqa: F401

pytest_plugins = ("pytester",)

REPO = Path(__file__).resolve().parents[2]

INI = f"""
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
pythonpath = {REPO}
"""

APP_INI = (
    INI
    + """
taskflow_container = examples.di_app.containers:build_container
taskflow_app = examples.di_app.app:create_app
"""
)

SIGNUP_TEST = """
from examples.workloads import Mailer
from fastapi_taskflow import MemoryBackend


async def test_signup(taskflow_client, taskflow_container, taskflow_events, mocker):
    spy = mocker.spy(Mailer, "send")
    response = await taskflow_client.post("/signup", params={"email": "ada@example.com"})
    manager = await taskflow_container.taskflow.task_manager()
    await manager.join()
    task_id = response.json()["task_id"]
    statuses = [e.status.value for e in taskflow_events.lifecycle_events if e.task_id == task_id]
    assert statuses == ["running", "success"]
    assert taskflow_container.mailer().outbox == [("ada@example.com", "Welcome aboard!")]
    spy.assert_awaited_once()
    assert isinstance(manager.backend, MemoryBackend)
    assert manager.queue_stats()["default"]["concurrency"] == 20  # config/taskflow.yaml's
"""


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The example app's variables: files under tmp_path, a mail server that never fails."""
    monkeypatch.setenv("TASKFLOW_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("EXAMPLE_SMTP_FAILURE_RATE", "0")
    monkeypatch.delenv("TASKFLOW_CONFIG", raising=False)
    return tmp_path / "var"


def test_app_container_from_two_ini_lines(pytester: pytest.Pytester, app_env: Path) -> None:
    """The ini options name the app's container and app: its tasks, services and queues run,
    on the memory backend (no SQLite file written)."""
    pytester.makeini(APP_INI)
    pytester.makepyfile(test_app=SIGNUP_TEST)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert not (app_env / "taskflow.db").exists()


def test_app_container_from_one_fixture(pytester: pytest.Pytester, app_env: Path) -> None:
    """Overriding taskflow_app_container (and taskflow_app) does the same without ini lines."""
    pytester.makeini(INI)
    pytester.makeconftest(
        """
import pytest
from examples.di_app.app import create_app
from examples.di_app.containers import build_container


@pytest.fixture
def taskflow_app_container():
    container = build_container()
    yield container
    container.unwire()


@pytest.fixture
def taskflow_app(taskflow_container):
    return create_app(taskflow_container)
"""
    )
    pytester.makepyfile(test_app=SIGNUP_TEST)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_bad_ini_factory_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """A factory that cannot be imported is named, not a bare traceback."""
    pytester.makeini(INI + "taskflow_container = no_such_module.build\n")
    pytester.makepyfile(test_x="def test_x(taskflow_container):\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*taskflow_container = 'no_such_module.build'*"])


LEFT_RUNNING = """
import asyncio

import pytest

from fastapi_taskflow import TaskRegistry

tasks = TaskRegistry()


@tasks.task()
async def forever() -> None:
    await asyncio.sleep(3600)


@pytest.fixture
def taskflow_registry():
    return tasks


async def test_leaves_a_task_running(taskflow_manager):
    taskflow_manager.add_task(forever)
    await asyncio.sleep(0)
"""


def shown(action: str) -> str:
    """An ini line that turns the teardown warning into ``action`` (default: shown; error)."""
    return f"filterwarnings =\n    {action}::fastapi_taskflow.testing.TaskflowTeardownWarning\n"


def test_teardown_cancels_what_is_left_and_says_so(pytester: pytest.Pytester) -> None:
    """A task left running is cancelled after the short drain, named in a warning."""
    pytester.makeini(INI + shown("default"))
    pytester.makepyfile(test_left=LEFT_RUNNING)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*TaskflowTeardownWarning: taskflow fixtures cancelled 1 task(s) still pending or "
            "running 1 s after the test: test_left:forever * (running)"
        ]
    )


def test_strict_projects_get_a_teardown_error(pytester: pytest.Pytester) -> None:
    """Under filterwarnings = error the same warning fails the test at teardown."""
    pytester.makeini(INI + shown("error"))
    pytester.makepyfile(test_left=LEFT_RUNNING)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*TaskflowTeardownWarning: taskflow fixtures cancelled 1 task*"])


def test_client_teardown_cancels_the_apps_long_task(
    pytester: pytest.Pytester, app_env: Path
) -> None:
    """The same through taskflow_client on the app: a long import is cancelled, not awaited."""
    pytester.makeini(APP_INI + shown("default"))
    pytester.makepyfile(
        test_long="""
async def test_long_import(taskflow_client):
    response = await taskflow_client.post("/imports", params={"rows": 100_000})
    assert response.status_code == 202
"""
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*cancelled 1 task(s)*examples.workloads:import_contacts*"])
