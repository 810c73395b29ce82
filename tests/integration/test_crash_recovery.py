"""Crash and outage tests with real processes: uvicorn apps killed with SIGKILL on SQLite,
Redis, PostgreSQL and MariaDB, redis-server stopped under load. The app is ``durable_app.py``;
each task notes its start and end in a side file, so the test can tell which tasks ran twice
and why."""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from app_backends import counting_successes
from processes import AppProcess, wait_for

from servers import MYSQL, POSTGRES, REDIS, RedisServer, find_redis_server

CONCURRENCY = 4
TASKS = 200

pytestmark = pytest.mark.slow


@dataclass
class SideFile:
    """Start/end notes of every task run: ``S <n> <pid>`` and ``E <n> <pid>``."""

    path: Path

    def lines(self) -> list[tuple[str, int, int]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            kind, n, pid = line.split()
            out.append((kind, int(n), int(pid)))
        return out

    def count(self, kind: str) -> int:
        return sum(1 for k, _, _ in self.lines() if k == kind)

    def reruns(self, killed_pid: int, survivor_pid: int) -> tuple[set[int], set[int], set[int]]:
        """(ran in both, mid-run at the kill, finished but not yet settled at the kill)."""
        lines = self.lines()
        starts = Counter((n, pid) for kind, n, pid in lines if kind == "S")
        assert max(starts.values()) == 1, "a task started twice in one process"
        killed = {n for (n, pid) in starts if pid == killed_pid}
        survivor = {n for (n, pid) in starts if pid == survivor_pid}
        ended = {n for kind, n, pid in lines if kind == "E" and pid == killed_pid}
        both = killed & survivor
        return both, both - ended, both & ended


def enqueue(app: AppProcess, numbers: range) -> None:
    with httpx.Client(base_url=app.url, timeout=10) as client:
        for n in numbers:
            response = client.post(f"/enqueue/{n}")
            assert response.status_code == 200, response.text


def assert_bounded_reruns(side: SideFile, killed: int, survivor: int) -> None:
    both, mid_run, settling = side.reruns(killed, survivor)
    print(
        f"\nran again after the kill: {len(both)} (mid-run: {len(mid_run)}, "
        f"finished but not yet settled: {len(settling)})"
    )
    assert len(mid_run) <= CONCURRENCY
    assert len(settling) <= CONCURRENCY
    assert len(both) - len(settling) <= CONCURRENCY
    assert {n for kind, n, _ in side.lines() if kind == "E"} == set(range(TASKS))


@pytest.fixture
def side(tmp_path: Path) -> SideFile:
    return SideFile(tmp_path / "runs.txt")


@pytest.fixture
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The backend the apps share (app_backends.py), on a real file or server."""
    kind = request.param
    if kind == "sqlite":
        return f"sqlite:{tmp_path / 'tasks.db'}"
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        return f"redis:{url}|{request.getfixturevalue('redis_prefix')}"
    prefix = request.getfixturevalue("table_prefix")
    if kind == "postgres":
        return f"postgres:{request.getfixturevalue('postgres_server').url}|{prefix}"
    return f"mysql:{request.getfixturevalue('mariadb_server').url_for('taskflow')}|{prefix}"


SQLITE = "sqlite"


@pytest.mark.parametrize("spec", [SQLITE, POSTGRES, MYSQL], indirect=True)
def test_sigkill_mid_way_then_restart_finishes_every_task(spec: str, side: SideFile) -> None:
    """200 persisted tasks, SIGKILL mid-way, restart: all 200 SUCCESS; only the tasks in
    flight at the kill ran twice."""
    env = {"TF_BACKEND": spec, "TF_SIDE": str(side.path), "TF_CONCURRENCY": str(CONCURRENCY)}
    first = AppProcess(env).start()
    try:
        enqueue(first, range(TASKS))
        wait_for(lambda: side.count("E") >= TASKS // 3, 30, "a third of the tasks done")
        first.kill()
        assert side.count("E") < TASKS
        second = AppProcess(env).start()
        try:
            with counting_successes(spec) as successes:
                took = wait_for(lambda: successes() == TASKS, 60, "all tasks SUCCESS")
            print(f"\nrestart to all {TASKS} SUCCESS: {took:.2f} s")
        finally:
            second.stop()
    finally:
        first.stop()
    assert_bounded_reruns(side, first.pid, second.pid)


@pytest.mark.parametrize("spec", [REDIS, POSTGRES, MYSQL], indirect=True)
def test_two_instances_the_survivor_finishes_the_dead_ones_tasks(spec: str, side: SideFile) -> None:
    """Two instances on one shared backend: kill one mid-way; the other claims its tasks once
    the lease expires (0.5 s heartbeat, 2 s lease) and all 200 reach SUCCESS."""
    env = {
        "TF_BACKEND": spec,
        "TF_SIDE": str(side.path),
        "TF_CONCURRENCY": str(CONCURRENCY),
        "TF_HEARTBEAT": "0.5",
        "TF_LEASE": "2.0",
    }
    doomed, survivor = AppProcess(env).start(), AppProcess(env).start()
    try:
        enqueue(doomed, range(0, TASKS, 2))
        enqueue(survivor, range(1, TASKS, 2))
        wait_for(lambda: side.count("E") >= TASKS // 4, 30, "a quarter of the tasks done")
        doomed.kill()
        with counting_successes(spec) as successes:
            took = wait_for(lambda: successes() == TASKS, 60, "all tasks SUCCESS")
        print(f"\nkill to all {TASKS} SUCCESS on the survivor: {took:.2f} s")
    finally:
        doomed.stop()
        survivor.stop()
    assert_bounded_reruns(side, doomed.pid, survivor.pid)


class PersistentRedis(RedisServer):
    """A redis-server with an append-only file, so its data outlives a stop and start."""

    def __init__(self, binary: str, directory: Path) -> None:
        super().__init__(binary)
        self.directory = directory

    def options(self) -> list[str]:
        return [
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            str(self.directory),
        ]


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[PersistentRedis]:
    binary = find_redis_server()
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("redis-server not installed, and CI must run the Redis tests")
        pytest.skip("redis-server not installed")
    server = PersistentRedis(binary, tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.mark.redis
def test_redis_outage_under_load_loses_nothing_and_serves_every_request(
    persistent_redis: PersistentRedis, side: SideFile
) -> None:
    """redis-server stopped for a few seconds while requests keep coming: every response is
    200, tasks go on, and when Redis is back every record reaches it."""
    prefix = f"outage-{uuid.uuid4().hex[:8]}"
    env = {
        "TF_BACKEND": f"redis:{persistent_redis.url}|{prefix}",
        "TF_SIDE": str(side.path),
        "TF_CONCURRENCY": "8",
        "TF_TASK_SECONDS": "0.02",
    }
    app = AppProcess(env).start()
    statuses: Counter[int] = Counter()
    total = 150
    try:
        with httpx.Client(base_url=app.url, timeout=10) as client:
            for n in range(total):
                if n == 40:
                    persistent_redis.stop()
                if n == 110:
                    persistent_redis.start()
                statuses[client.post(f"/enqueue/{n}").status_code] += 1
                time.sleep(0.02)  # pacing the load, not waiting for anything
            wait_for(lambda: side.count("E") >= total, 30, "every task ran")
            with counting_successes(f"redis:{persistent_redis.url}|{prefix}") as successes:
                took = wait_for(lambda: successes() == total, 30, "every record in Redis")
            # The journal removals that follow the records may drain a moment later.
            wait_for(
                lambda: client.get("/stats").json()["buffered_writes"] == 0,
                30,
                "the write buffer drained",
            )
            stats = client.get("/stats").json()
        print(
            f"\nbuffer drained {took:.2f} s after the last task; "
            f"write failures {stats['backend_write_failures']}"
        )
    finally:
        app.stop()
    assert statuses == Counter({200: total})
    assert stats["buffered_writes"] == 0
    assert stats["backend_write_failures"] > 0
