"""Several instances on one backend (two managers, one store: memory, SQLite file, Redis):
the instances list, commands that reach the instance running a task, queue changes on all,
one-off schedules that lose nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest
from control_helpers import BackendFactory, Gate, SharedMemoryBackend, running, wait_until
from fastapi import FastAPI

from fastapi_taskflow import QueueConfig, TaskAdmin, TaskManager, TaskRegistry, TaskStatus
from fastapi_taskflow.backends.base import TaskBackend

# Quick heartbeats, so instances see one another at once; a lease of 40 heartbeats, so a loaded
# machine (parallel test workers) stalling a process for a second does not let it lapse: no test
# here waits for a lease to run out.
FAST = {"heartbeat_interval": 0.05, "lease_ttl": 2.0, "close_backend": False}


@asynccontextmanager
async def api(manager: TaskManager) -> AsyncIterator[httpx.AsyncClient]:
    """A started manager's task API (its lifespan is the caller's)."""
    app = FastAPI()
    TaskAdmin(app, manager, manage_lifecycle=False)
    transport = httpx.ASGITransport(app=app)
    # A script's proof of the same origin: the open admin refuses changes without it.
    headers = {"X-CSRF-Token": "1"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://t", headers=headers
    ) as client:
        yield client


async def test_instances_lists_each_live_one_and_drops_a_stopped_one(
    shared_backend: BackendFactory,
) -> None:
    """GET /tasks/instances on either instance lists both, with counts; a stopped one goes."""
    gate = Gate()
    async with running(snapshot_backend=shared_backend(), **FAST) as a, api(a) as client:
        async with running(snapshot_backend=shared_backend(), **FAST) as b:
            b.add_task(gate.work, "x")

            async def listed() -> list[dict[str, Any]]:
                return list((await client.get("/tasks/instances")).json())

            async def b_busy() -> bool:
                rows = {r["instance_id"]: r for r in await listed()}
                return rows.get(b.instance_id, {}).get("running") == 1

            await _eventually(b_busy)
            rows = await listed()
            assert {r["instance_id"] for r in rows} == {a.instance_id, b.instance_id}
            assert {"host", "pid", "version", "started_at", "heartbeat_at", "waiting"} <= set(
                rows[0]
            )
            gate.release_all()
        ids = [r["instance_id"] for r in (await client.get("/tasks/instances")).json()]
        assert ids == [a.instance_id]


async def test_without_a_backend_the_instance_list_is_this_instance() -> None:
    """No backend: GET /tasks/instances answers the one local instance."""
    async with running() as manager, api(manager) as client:
        rows = (await client.get("/tasks/instances")).json()
    assert [r["instance_id"] for r in rows] == [manager.instance_id]
    assert rows[0]["running"] == 0


async def test_cancel_on_one_instance_stops_a_task_running_on_another(
    shared_backend: BackendFactory,
) -> None:
    """POST /cancel on B for a task running on A cancels it on A and says it was sent there."""
    gate = Gate()
    async with (
        running(snapshot_backend=shared_backend(), **FAST) as a,
        running(snapshot_backend=shared_backend(), **FAST) as b,
        api(b) as client,
    ):
        await _eventually(_count(b, 2))
        handle = a.add_task(gate.work, "long")
        waiting = a.add_task(gate.work, "never", queue="default")
        await wait_until(lambda: gate.running == 1 or len(gate.started) == 2)
        answer = await client.post(f"/tasks/{handle.task_id}/cancel")
        assert answer.status_code == 200, answer.text
        assert (answer.json()["delivery"], answer.json()["instance_id"]) == ("owner", a.instance_id)
        assert (await handle.wait(timeout=5)).status is TaskStatus.CANCELLED
        gate.release_all()
        await waiting.wait(timeout=5)
        unknown = await client.post("/tasks/no-such-task/cancel")
        assert unknown.status_code == 404


async def test_cancel_of_a_pending_task_on_another_instance(shared_backend: BackendFactory) -> None:
    """A task waiting for a slot on A, cancelled through B, never runs."""
    gate = Gate()
    queues = {"one": QueueConfig(concurrency=1)}
    async with (
        running(snapshot_backend=shared_backend(), queues=queues, **FAST) as a,
        running(snapshot_backend=shared_backend(), **FAST) as b,
        api(b) as client,
    ):
        await _eventually(_count(b, 2))
        busy = a.add_task(gate.work, "busy", queue="one")
        queued = a.add_task(gate.work, "queued", queue="one")
        await wait_until(lambda: gate.running == 1)
        answer = await client.post(f"/tasks/{queued.task_id}/cancel")
        assert answer.json()["delivery"] == "owner"
        assert queued.status is TaskStatus.CANCELLED
        gate.release_all()
        await busy.wait(timeout=5)
    assert gate.started == ["busy"]


async def test_retry_on_another_instance_replaces_the_original_everywhere(
    shared_backend: BackendFactory,
) -> None:
    """B retries a failed task A ran: B reads A's record from the backend (the system of
    record) and retries it itself; A is told to drop the original from its memory."""
    registry = TaskRegistry()
    calls: list[int] = []

    @registry.task(name="cluster.flaky")
    async def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first run fails")

    async with (
        running(snapshot_backend=shared_backend(), registry=registry, **FAST) as a,
        running(snapshot_backend=shared_backend(), registry=registry, **FAST) as b,
        api(b) as client,
    ):
        await _eventually(_count(b, 2))
        failed = await a.add_task(flaky).wait(timeout=5)
        assert failed.status is TaskStatus.FAILED

        async def written() -> bool:  # A writes the finished row within a tick or two
            record = await b.get_record(failed.task_id)
            return record is not None and record.status is TaskStatus.FAILED

        await _eventually(written)
        answer = await client.post(f"/tasks/{failed.task_id}/retry")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["delivery"], body["instance_id"]) == ("here", b.instance_id)
        await b.join(timeout=5)
        assert b.store.get(body["task_id"]) is not None

        async def forgotten() -> bool:
            return a.store.get(failed.task_id) is None

        await _eventually(forgotten)
        assert await a.get_record(failed.task_id) is None
    assert len(calls) == 2


async def test_a_queue_change_reaches_every_instance_and_later_ones(
    shared_backend: BackendFactory,
) -> None:
    """PATCH /queues/{name} on B changes A's caps too, says so, and a later instance reads it."""
    queues = {"mail": QueueConfig(concurrency=1)}
    async with (
        running(snapshot_backend=shared_backend(), queues=queues, **FAST) as a,
        running(snapshot_backend=shared_backend(), queues=queues, **FAST) as b,
        api(b) as client,
    ):
        answer = await client.patch("/tasks/queues/mail", json={"concurrency": 3})
        assert answer.status_code == 200, answer.text
        assert (answer.json()["concurrency"], answer.json()["scope"]) == (3, "all instances")
        await wait_until(lambda: a.queue_stats()["mail"]["concurrency"] == 3)
    async with running(snapshot_backend=shared_backend(), queues=queues, **FAST) as later:
        assert later.queue_stats()["mail"]["concurrency"] == 3


async def test_without_a_backend_a_queue_change_says_it_is_this_instance() -> None:
    """No backend: the PATCH answer's scope is this instance."""
    async with running() as manager, api(manager) as client:
        answer = await client.patch("/tasks/queues/default", json={"concurrency": 2})
    assert answer.json()["scope"] == "this instance"


async def test_concurrent_schedule_once_on_two_instances_loses_nothing(
    shared_backend: BackendFactory,
) -> None:
    """Ten concurrent schedule_once calls on each of two instances: twenty saved, twenty after
    a restart, and each fires once."""
    registry = TaskRegistry()
    fired: list[int] = []

    @registry.task(name="cluster.remind")
    async def remind(n: int) -> None:
        fired.append(n)

    options = {"registry": registry, **FAST}
    async with (
        running(snapshot_backend=shared_backend(), **options) as a,
        running(snapshot_backend=shared_backend(), **options) as b,
    ):
        await asyncio.gather(
            *(
                (a if n % 2 else b).schedule_once(remind, n, run_at=timedelta(hours=1))
                for n in range(20)
            )
        )
        assert len(await a.list_scheduled()) == 20
    later = TaskManager(snapshot_backend=shared_backend(), **options)
    later.scheduler.clock = lambda: __import__("time").time() + 7200  # they are due
    await later.startup()
    try:
        await wait_until(lambda: len(fired) == 20)
        await later.join(timeout=5)
        assert await later.list_scheduled() == []
    finally:
        await later.shutdown()
    assert sorted(fired) == list(range(20))


async def test_a_run_scheduled_by_a_gone_instance_fires_on_another(
    shared_backend: BackendFactory,
) -> None:
    """A one-off saved by an instance that stopped fires on a live one (its sweep finds it)."""
    registry = TaskRegistry()
    done = asyncio.Event()

    @registry.task(name="cluster.ping")
    async def ping() -> None:
        done.set()

    options = {"registry": registry, **FAST}
    async with running(snapshot_backend=shared_backend(), **options) as survivor:
        async with running(snapshot_backend=shared_backend(), **options) as gone:
            await gone.schedule_once(ping, run_at=timedelta(seconds=0.3))
        await asyncio.wait_for(done.wait(), 5)
        await survivor.join(timeout=5)


async def test_one_off_runs_of_the_old_meta_document_are_migrated(
    shared_backend: BackendFactory,
) -> None:
    """Runs an older version kept in backend meta become rows at the first start, and fire."""
    registry = TaskRegistry()
    got: list[int] = []

    @registry.task(name="cluster.old")
    async def old(n: int) -> None:
        got.append(n)

    backend = shared_backend()
    await backend.open()
    payload = __import__("base64").b64encode(b'{"a":[7],"k":{}}').decode()
    document = {
        "func_name": "cluster.old",
        "payload": payload,
        "encrypted": False,
        "run_at": 0.0,
        "tags": {},
    }
    await backend.set_meta("schedule:once", json.dumps({"legacy": document}))
    async with running(snapshot_backend=backend, registry=registry, **FAST) as manager:
        await wait_until(lambda: got == [7])
        await manager.join(timeout=5)
    assert await backend.get_meta("schedule:once") == "{}"
    assert await backend.list_scheduled() == []


def _count(manager: TaskManager, n: int) -> Any:
    async def check() -> bool:
        return len(await manager.instances()) == n

    return check


async def _eventually(check: Any, within: float = 15.0) -> None:
    """Return once ``check()`` holds; the bound is generous for a loaded CI machine."""
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "not reached in time"
        await asyncio.sleep(0.02)


async def test_a_queue_change_for_a_queue_another_app_lacks_is_ignored_there(
    shared_backend: BackendFactory,
) -> None:
    """B changes its queue "mail"; A, which has no such queue, goes on unchanged."""
    queues = {"mail": QueueConfig(concurrency=1)}
    async with (
        running(snapshot_backend=shared_backend(), **FAST) as a,
        running(snapshot_backend=shared_backend(), queues=queues, **FAST) as b,
        api(b) as client,
    ):
        answer = await client.patch("/tasks/queues/mail", json={"concurrency": 4})
        assert answer.status_code == 200
        await asyncio.sleep(0.3)  # the command reached A (0.1 s polls at most) and was skipped
        assert set(a.queue_stats()) == {"default"}


async def test_cancel_of_a_task_no_live_instance_holds_is_a_409(
    shared_backend: BackendFactory,
) -> None:
    """A PENDING record in the backend that no instance runs: the cancel says so (409)."""
    from fastapi_taskflow.models import TaskRecord, utcnow

    backend = shared_backend()
    async with running(snapshot_backend=backend, **FAST) as manager, api(manager) as client:
        await backend.save_records(
            [TaskRecord(task_id="orphan", func_name="x", created_at=utcnow())]
        )
        answer = await client.post("/tasks/orphan/cancel")
    assert answer.status_code == 409
    assert "no live instance" in answer.json()["detail"]


async def test_sqlite_commands_older_than_a_minute_are_pruned(tmp_path: Any) -> None:
    """Each send deletes SQLite command rows older than a minute."""
    import sqlite3

    from fastapi_taskflow.backends.base import Command
    from fastapi_taskflow.backends.sqlite import SqliteBackend

    backend = SqliteBackend(tmp_path / "c.sqlite3")
    await backend.open()
    try:
        with sqlite3.connect(backend.path) as db:
            db.execute("INSERT INTO tf_commands (sent_at, data) VALUES (0, '{}')")
        db.close()
        await backend.send_command(Command("queue", "x"))
        with sqlite3.connect(backend.path) as db:
            assert db.execute("SELECT COUNT(*) FROM tf_commands").fetchone() == (1,)
        db.close()
    finally:
        await backend.close()


@pytest.mark.redis
async def test_redis_commands_older_than_a_minute_are_trimmed(
    redis_url: str, redis_prefix: str
) -> None:
    """Each send trims Redis stream entries older than a minute."""
    import redis.asyncio as aioredis

    from fastapi_taskflow.backends.base import Command
    from fastapi_taskflow.backends.redis import RedisBackend

    backend = RedisBackend(redis_url, prefix=redis_prefix)
    await backend.open()
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.xadd(backend.key("commands"), {"d": "{}"}, id="1-0")
        await backend.send_command(Command("queue", "x"))
        assert await client.xlen(backend.key("commands")) == 1
    finally:
        await client.aclose()
        await backend.close()


class BackendBeforeClusters(SharedMemoryBackend):
    """A backend written before the several-instance primitives: the base's versions only."""

    _put_instance = TaskBackend._put_instance
    _list_instances = TaskBackend._list_instances
    _remove_instance = TaskBackend._remove_instance
    _send_command = TaskBackend._send_command
    _command_position = TaskBackend._command_position
    _read_commands = TaskBackend._read_commands
    _put_schedule = TaskBackend._put_schedule
    _take_schedule = TaskBackend._take_schedule
    _list_schedules = TaskBackend._list_schedules


async def test_a_backend_without_the_new_primitives_still_runs_tasks() -> None:
    """Startup works, tasks run; /tasks/instances answers 501 naming what is missing."""
    async with running(snapshot_backend=BackendBeforeClusters(), **FAST) as manager:
        ran: list[int] = []

        async def job() -> None:
            ran.append(1)

        assert (await manager.add_task(job).wait(timeout=5)).status is TaskStatus.SUCCESS
        async with api(manager) as client:
            answer = await client.get("/tasks/instances")
        assert answer.status_code == 501
        assert "instance announcements" in answer.json()["detail"]
    assert ran == [1]


async def test_a_lone_instance_sends_no_command_per_retry() -> None:
    """Alone on its backend, an instance's retries write nothing to the command channel."""
    backend = SharedMemoryBackend()
    registry = TaskRegistry()
    calls: list[int] = []

    @registry.task(name="cluster.lone")
    async def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first run fails")

    async with running(snapshot_backend=backend, registry=registry, **FAST) as manager:
        failed = await manager.add_task(flaky).wait(timeout=5)
        before = await backend.command_position()
        retried = await manager.retry(failed.task_id)
        assert (await retried.wait(timeout=5)).status is TaskStatus.SUCCESS
        assert await backend.command_position() == before


async def test_a_retry_where_the_record_is_readable_drops_the_original_elsewhere(
    shared_backend: BackendFactory,
) -> None:
    """B retries a task A ran (its record is in the backend): A forgets the original."""
    registry = TaskRegistry()
    calls: list[int] = []

    @registry.task(name="cluster.saved", persist=True)
    async def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first run fails")

    async with (
        running(snapshot_backend=shared_backend(), registry=registry, **FAST) as a,
        running(snapshot_backend=shared_backend(), registry=registry, **FAST) as b,
    ):
        assert b.cluster is not None
        await wait_until(lambda: a.instance_id in b.cluster.others)  # type: ignore[union-attr]
        failed = await a.add_task(flaky).wait(timeout=5)

        async def saved() -> bool:
            return await b.get_record(failed.task_id) is not None

        await _eventually(saved)
        retried = await b.retry(failed.task_id)
        assert (await retried.wait(timeout=5)).status is TaskStatus.SUCCESS
        await wait_until(lambda: a.store.get(failed.task_id) is None)
