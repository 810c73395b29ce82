"""Several instances on one backend behave as one system: real uvicorn processes on one
redis-server, and ``uvicorn --workers 2`` on one SQLite file (``records_app.py``).

Any instance answers for a task whichever instance runs it (pending, running with progress,
finished), the metrics are the same everywhere and follow history deletes, a dashboard stream on
one instance shows another's changes, and after a SIGKILL the accepted tasks answer at once.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from processes import AppProcess, wait_for

pytestmark = pytest.mark.slow

# What the backend keeps for every instance; the rest of /tasks/metrics is per instance
# (buffered writes, claims, queue slots in use here).
SHARED_METRICS = (
    "total",
    "pending",
    "running",
    "success",
    "failed",
    "cancelled",
    "interrupted",
    "rejected",
    "avg_duration_seconds",
    "duration_p50",
    "duration_p95",
    "duration_p99",
)


def get(url: str, path: str) -> httpx.Response:
    """A request on a new connection (behind --workers, the kernel picks the worker)."""
    return httpx.get(f"{url}{path}", timeout=5, headers={"Connection": "close"})


def post(url: str, path: str) -> httpx.Response:
    # X-CSRF-Token: a script's proof of the same origin (the open admin refuses changes
    # without one); the app's own routes ignore it.
    headers = {"Connection": "close", "X-CSRF-Token": "1"}
    response = httpx.post(f"{url}{path}", timeout=5, headers=headers)
    assert response.status_code == 200, response.text
    return response


def shared(metrics: dict[str, Any]) -> dict[str, Any]:
    return {key: metrics[key] for key in SHARED_METRICS}


def task(url: str, task_id: str) -> dict[str, Any] | None:
    response = get(url, f"/tasks/{task_id}")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return dict(response.json())


class Stream:
    """An SSE stream read on a thread: every task row a delta (dashboard) or ``task`` event
    (``/{id}/events``) carried, with when."""

    def __init__(self, url: str, path: str = "/tasks/dashboard/stream") -> None:
        self.url = url
        self.path = path
        self.rows: list[tuple[float, dict[str, Any]]] = []
        self.instance: str | None = None
        self._ready = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> Stream:
        self._thread.start()
        assert self._ready.wait(10), "the stream did not open"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join(10)

    def _read(self) -> None:
        with (
            httpx.Client(timeout=httpx.Timeout(5, read=2)) as client,
            client.stream("GET", f"{self.url}{self.path}") as response,
        ):
            self.instance = response.headers.get("X-Instance")
            name = ""
            try:
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: "):
                        if name == "hello":
                            self._ready.set()
                        elif name == "task":
                            self._ready.set()
                            self.rows.append((time.monotonic(), json.loads(line[6:])))
                        elif name == "delta":
                            for row in json.loads(line[6:])["tasks"]:
                                self.rows.append((time.monotonic(), row))
                    if self._stop:
                        return
            except httpx.ReadTimeout:
                return

    def seen(self, task_id: str, status: str | None = None) -> bool:
        return any(
            row["task_id"] == task_id and (status is None or row["status"] == status)
            for _, row in self.rows
        )


def queue_counts(url: str) -> tuple[int, int, str]:
    """(running, pending, counts_scope) of queue ``solo`` in ``GET /tasks/queues``."""
    solo = get(url, "/tasks/queues").json()["solo"]
    return solo["counts"]["running"], solo["counts"]["pending"], solo["counts_scope"]


def solo_slots(url: str) -> tuple[int, int, str]:
    """(running, waiting, slots_scope) of queue ``solo`` on the instance at ``url``."""
    solo = get(url, "/tasks/queues").json()["solo"]
    return solo["running"], solo["waiting"], solo["slots_scope"]


@pytest.fixture
def gates(tmp_path: Path) -> Path:
    folder = tmp_path / "gates"
    folder.mkdir()
    return folder


def check_one_system(first: str, second: str, gates: Path, other: str | None = None) -> None:
    """Pending and running tasks of ``first`` show on ``second`` (and ``other``, when the
    answering process cannot be chosen), metrics and queue counts agree, the stream, deletes
    and the audit trail follow."""
    readers = [second] if other is None else [second, other]
    assert get(first, "/tasks/audit").json() == []  # read once before the other acts
    running_id = post(first, "/hold/a").json()["task_id"]
    pending_id = post(first, "/hold/b").json()["task_id"]
    # The response came after the journal commit, which now also wrote the PENDING row.
    for reader in readers:
        seen = task(reader, pending_id)
        assert seen is not None, "an accepted task is missing on another instance"
        assert seen["status"] == "pending"
    wait_for(
        lambda: all(
            (t := task(r, running_id)) is not None
            and t["status"] == "running"
            and t["progress"] == 0.5
            and t["progress_message"] == "halfway"
            for r in readers
        ),
        5,
        "the running task with its progress on the other instance",
    )
    wait_for(
        lambda: all(queue_counts(r) == (1, 1, "all instances") for r in (first, *readers)),
        5,
        "every instance's /tasks/queues counting both tasks",
    )
    if other is None:
        # The slots are each instance's own: both tasks sit on the first one.
        assert solo_slots(first) == (1, 1, "this instance")
        assert solo_slots(second) == (0, 0, "this instance")
    listed = get(second, "/tasks?status=pending").json()
    assert pending_id in [t["task_id"] for t in listed]
    searched = get(second, f"/tasks?q={running_id[:8]}").json()
    assert [t["task_id"] for t in searched] == [running_id]

    with Stream(second) as stream, Stream(second, f"/tasks/{pending_id}/events") as one:
        assert one.seen(pending_id, "pending")
        (gates / "a").touch()
        wait_for(lambda: stream.seen(running_id, "success"), 5, "the other's change on SSE")
        (gates / "b").touch()
        wait_for(lambda: stream.seen(pending_id, "success"), 5, "the pending one finishing")
        wait_for(lambda: one.seen(pending_id, "success"), 5, "its own event stream follows")

    def agree() -> bool:
        numbers = [shared(get(url, "/tasks/metrics").json()) for url in (first, *readers)]
        return all(n == numbers[0] for n in numbers) and numbers[0]["success"] == 2

    wait_for(agree, 5, "the same metrics on every instance")
    metrics = get(first, "/tasks/metrics").json()
    assert metrics["duration_p50"] is not None
    prometheus = [get(url, "/tasks/metrics/prometheus") for url in (first, second)]
    assert [p.status_code for p in prometheus] == [200, 200]
    lines = [
        sorted(
            x
            for x in p.text.splitlines()
            if x.startswith(("taskflow_tasks{", "taskflow_queue_tasks{"))
        )
        for p in prometheus
    ]
    assert lines[0] == lines[1]
    assert 'taskflow_tasks{status="success"} 2.0' in lines[0]
    assert 'taskflow_queue_tasks{queue="solo",status="success"} 2.0' in lines[0]
    assert metrics["queues"]["solo"]["counts_scope"] == "all instances"
    deleted = httpx.delete(
        f"{second}/tasks/history?all=true", timeout=5, headers={"X-CSRF-Token": "1"}
    )
    assert deleted.status_code == 200, deleted.text
    audit = get(first, "/tasks/audit").json()
    assert [e["action"] for e in audit] == ["delete_history"], "the other's action is missing"
    after = get(first, "/tasks/metrics").json()
    assert (after["success"], after["total"], after["duration_p50"]) == (0, 0, None)
    assert task(first, running_id) is None


@pytest.fixture
def server_spec(request: pytest.FixtureRequest) -> str:
    """A backend spec (app_backends.py) on a real server, with a key or table prefix of its own."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return f"redis:{url}|{request.getfixturevalue('redis_prefix')}"
    prefix = request.getfixturevalue("table_prefix")
    if request.param == "postgres":
        return f"postgres:{request.getfixturevalue('postgres_server').url}|{prefix}"
    return f"mysql:{request.getfixturevalue('mariadb_server').url_for('taskflow')}|{prefix}"


@pytest.mark.parametrize(
    "server_spec",
    [
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ],
    indirect=True,
)
def test_two_processes_on_a_server_are_one_system(server_spec: str, gates: Path) -> None:
    """Redis, PostgreSQL or MariaDB, two uvicorn processes: each task, its progress, the
    metrics, the live stream and history deletes look the same from either process."""
    env = {"TF_BACKEND": server_spec, "TF_GATES": str(gates)}
    first = AppProcess(env, "records_app:app").start()
    try:
        second = AppProcess(env, "records_app:app").start()
        try:
            check_one_system(first.url, second.url, gates)
        finally:
            second.stop()
    finally:
        first.stop()


def on_other_worker(url: str, instance: str, path: str) -> httpx.Response:
    """GET ``path`` until a worker other than ``instance`` answers it."""
    for _ in range(200):
        response = get(url, path)
        if response.headers["X-Instance"] != instance:
            return response
    raise AssertionError("the other worker never answered")


def test_two_workers_on_one_sqlite_file_are_one_system(tmp_path: Path, gates: Path) -> None:
    """SQLite, ``uvicorn --workers 2``: a task added on one worker shows on the other (pending,
    then running with progress); the metrics agree; the stream on one shows the other's."""
    env = {"TF_BACKEND": f"sqlite:{tmp_path / 'tasks.db'}", "TF_GATES": str(gates)}
    app = AppProcess(env, "records_app:app", workers=2).start()
    try:
        url = app.url
        wait_for(
            lambda: len({get(url, "/health").headers["X-Instance"] for _ in range(20)}) == 2,
            30,
            "both workers serving",
        )
        added = post(url, "/hold/a")
        creator, running_id = added.headers["X-Instance"], added.json()["task_id"]
        pending_id = post(url, "/hold/b").json()["task_id"]
        seen = on_other_worker(url, creator, f"/tasks/{running_id}")
        assert seen.status_code == 200
        assert seen.json()["status"] in ("pending", "running")
        wait_for(
            lambda: (
                (r := on_other_worker(url, creator, f"/tasks/{running_id}")).json()["status"]
                == "running"
                and r.json()["progress"] == 0.5
            ),
            5,
            "the running task with its progress on the other worker",
        )
        assert on_other_worker(url, creator, f"/tasks/{pending_id}").status_code == 200
        # Both workers count both tasks, whichever took them: the counts are the backend's.
        answers: dict[str, Any] = {}
        for _ in range(200):  # the kernel picks the worker; ask until both have answered
            response = get(url, "/tasks/queues")
            answers[response.headers["X-Instance"]] = response.json()["solo"]
            if len(answers) == 2:
                break
        assert len(answers) == 2, "the other worker never answered"
        for solo in answers.values():
            assert solo["counts"]["running"] + solo["counts"]["pending"] == 2
            assert (solo["counts_scope"], solo["slots_scope"]) == ("all instances", "this instance")
        with Stream(url) as stream:
            assert stream.instance is not None
            # A task the other worker adds shows on this worker's stream.
            quick_tasks = 0
            for n in range(200):
                made = post(url, f"/quick/{n}")
                quick_tasks += 1
                if made.headers["X-Instance"] != stream.instance:
                    break
            else:
                raise AssertionError("the other worker never took a request")
            quick_id = made.json()["task_id"]
            wait_for(lambda: stream.seen(quick_id, "success"), 5, "the other worker's change")
        (gates / "a").touch()
        (gates / "b").touch()

        def agree() -> bool:
            numbers = {
                r.headers["X-Instance"]: shared(r.json())
                for r in (get(url, "/tasks/metrics") for _ in range(30))
            }
            values = list(numbers.values())
            return (
                len(values) == 2
                and values[0] == values[1]
                and values[0]["success"] == 2 + quick_tasks
            )

        wait_for(agree, 10, "the same metrics on both workers")
    finally:
        app.stop()


def test_after_sigkill_accepted_tasks_answer_at_once_as_pending(
    tmp_path: Path, gates: Path
) -> None:
    """SQLite: tasks accepted before a SIGKILL answer PENDING right after the restart, long
    before the dead instance's lease (30 s) expires and its journal is claimed."""
    env = {
        "TF_BACKEND": f"sqlite:{tmp_path / 'tasks.db'}",
        "TF_GATES": str(gates),
        "TF_LEASE": "30",
    }
    first = AppProcess(env, "records_app:app").start()
    try:
        post(first.url, "/hold/a")
        waiting = [post(first.url, f"/hold/w{i}").json()["task_id"] for i in range(3)]
        first.kill()
        second = AppProcess(env, "records_app:app").start()
        try:
            for task_id in waiting:
                seen = task(second.url, task_id)
                assert seen is not None, "an accepted task answered 404 after the restart"
                assert seen["status"] == "pending"
            assert get(second.url, "/tasks/metrics").json()["claimed_tasks"] == 0
            listed = {t["task_id"] for t in get(second.url, "/tasks?status=pending").json()}
            assert set(waiting) <= listed
        finally:
            second.stop()
    finally:
        first.stop()


@pytest.fixture(autouse=True)
def _no_leftover_gates(gates: Path) -> Iterator[None]:
    yield
    for key in ("a", "b", *(f"w{i}" for i in range(3))):
        (gates / key).touch()
