"""Several instances as several processes: two uvicorn servers on one redis-server, and two on
one SQLite file, running ``cluster_app.py``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from processes import AppProcess

from servers import RedisServer

pytestmark = pytest.mark.slow


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout} s")
        time.sleep(0.05)
    return result


class Instance(AppProcess):
    """One uvicorn process serving cluster_app.py, with the instance id it reports."""

    def __init__(self, env: dict[str, str], workers: int = 1) -> None:
        super().__init__(env, app="cluster_app:app", workers=workers)
        self.instance_id = ""

    def start(self) -> Instance:
        super().start()
        self.instance_id = wait_for(self._health, 30, "the app answers /health")
        return self

    def _health(self) -> str | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the app exited with {self.process.returncode}")
        try:
            return str(httpx.get(f"{self.url}/health", timeout=1).json()["instance"])
        except httpx.HTTPError:
            return None

    def get(self, path: str) -> Any:
        return httpx.get(self.url + path, timeout=10).json()

    def post(self, path: str) -> httpx.Response:
        # The X-CSRF-Token header is a script's proof of the same origin (the open admin
        # refuses changes without one); the app's own routes ignore it.
        return httpx.post(self.url + path, timeout=10, headers={"X-CSRF-Token": "1"})


@pytest.fixture(scope="module", params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def backend_env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Environment for cluster_app: one SQLite file, or one prefix on the session's Redis."""
    where = tmp_path_factory.mktemp(request.param)
    side = str(where / "side.txt")
    if request.param == "sqlite":
        return {"TF_BACKEND": f"sqlite:{where / 'cluster.sqlite3'}", "TF_SIDE": side}
    server: RedisServer = request.getfixturevalue("redis_server")
    server.start()
    prefix = f"tfcluster-{uuid.uuid4().hex[:8]}"
    return {"TF_BACKEND": f"redis:{server.url}|{prefix}", "TF_SIDE": side}


@pytest.fixture(scope="module")
def pair(backend_env: dict[str, str]) -> Iterator[tuple[Instance, Instance]]:
    """Two running instances of the app on one backend, for the module (the last test kills
    the first one)."""
    a, b = Instance(backend_env), Instance(backend_env)
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


def test_cancel_on_b_stops_a_task_running_on_a(
    pair: tuple[Instance, Instance], backend_env: dict[str, str]
) -> None:
    """POST /tasks/{id}/cancel on B cancels A's running task and says it was sent to A."""
    a, b = pair
    wait_for(lambda: len(b.get("/tasks/instances")) == 2, 10, "both instances listed")
    task_id = a.post("/hold").json()["task_id"]
    side = Path(backend_env["TF_SIDE"])
    wait_for(lambda: side.exists() and "S" in side.read_text().split(), 10, "task started on A")
    answer = b.post(f"/tasks/{task_id}/cancel")
    assert answer.status_code == 200, answer.text
    assert (answer.json()["delivery"], answer.json()["instance_id"]) == ("owner", a.instance_id)
    wait_for(lambda: a.get(f"/tasks/{task_id}")["status"] == "cancelled", 5, "cancelled on A")


def test_schedules_from_two_instances_lose_nothing(pair: tuple[Instance, Instance]) -> None:
    """Ten concurrent schedule_once calls on each instance: twenty runs, listed on either."""
    a, b = pair
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda n: (a if n % 2 else b).post(f"/schedule/{n}"), range(20)))
    assert all(r.status_code == 200 for r in answers)
    assert len(a.get("/scheduled")) == 20
    assert len(b.get("/scheduled")) == 20


def test_the_retry_budget_holds_across_restarts(
    backend_env: dict[str, str], tmp_path: Path
) -> None:
    """retries=2; the second attempt is stopped by a restart and resumes with its count: four
    attempts (retries + 1, plus the interrupted one), then FAILED; a count from 0 made five."""
    # A backend of its own: the pair's instances would claim the entry this one releases.
    backend_env = {
        "TF_BACKEND": backend_env["TF_BACKEND"] + "-solo",
        "TF_SIDE": str(tmp_path / "solo.txt"),
    }
    side = Path(backend_env["TF_SIDE"])
    attempts = lambda: side.read_text().split().count("A") if side.exists() else 0  # noqa: E731
    instance = Instance(backend_env).start()
    try:
        task_id = instance.post("/flaky").json()["task_id"]
        wait_for(lambda: attempts() == 2, 10, "the hanging second attempt")
        instance.stop()  # a clean shutdown keeps the task for the next start
        instance = Instance(backend_env).start()
        wait_for(lambda: instance.get(f"/tasks/{task_id}").get("status") == "failed", 10, "FAILED")
        assert instance.get(f"/tasks/{task_id}")["retries_used"] == 2
        assert attempts() == 4
    finally:
        instance.stop()


def test_instances_lists_both_and_a_killed_one_disappears(pair: tuple[Instance, Instance]) -> None:
    """Each instance lists both (id, pid); after a SIGKILL the dead one goes within lease_ttl."""
    a, b = pair

    def both() -> list[dict[str, Any]] | None:
        rows = b.get("/tasks/instances")
        return rows if {r["instance_id"] for r in rows} == {a.instance_id, b.instance_id} else None

    rows = wait_for(both, 10, "both instances listed")
    assert {r["pid"] for r in rows} == {a.process.pid, b.process.pid}  # type: ignore[union-attr]
    a.kill()
    killed = time.monotonic()
    wait_for(
        lambda: [r["instance_id"] for r in b.get("/tasks/instances")] == [b.instance_id],
        5,
        "the killed instance gone",
    )
    assert time.monotonic() - killed < 1.5 + 1.0  # lease_ttl, plus the poll's slack


def test_uvicorn_workers_on_one_sqlite_file_act_as_one_system(tmp_path: Path) -> None:
    """`uvicorn --workers 2` on one SQLite file: either worker lists both; a cancel sent to
    whichever worker the connection reaches stops the task wherever it runs."""
    env = {"TF_BACKEND": f"sqlite:{tmp_path / 'workers.sqlite3'}", "TF_SIDE": str(tmp_path / "s")}
    workers = Instance(env, workers=2).start()
    try:

        def both() -> list[dict[str, Any]] | None:
            rows = workers.get("/tasks/instances")
            return rows if len(rows) == 2 else None

        rows = wait_for(both, 20, "both workers listed")
        assert len({r["pid"] for r in rows}) == 2
        task_id = workers.post("/hold").json()["task_id"]
        side = Path(env["TF_SIDE"])
        wait_for(lambda: side.exists() and "S" in side.read_text().split(), 10, "task started")
        answer = workers.post(f"/tasks/{task_id}/cancel")  # new connection: either worker
        assert answer.status_code == 200, answer.text
        assert answer.json()["delivery"] in ("here", "owner")
        wait_for(
            lambda: workers.get(f"/tasks/{task_id}").get("status") == "cancelled",
            5,
            "cancelled, as seen through either worker",
        )
    finally:
        workers.stop()
