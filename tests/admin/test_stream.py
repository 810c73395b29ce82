"""Live updates: deltas coalesced per tick, per-task event streams, no cost without clients."""

from __future__ import annotations

import asyncio

import admin_jobs as jobs
import pytest

from fastapi_taskflow.admin.sse import _Client


async def test_dashboard_stream_sends_hello_then_new_tasks(env, open_sse):
    """The stream greets with metrics, then sends a new task as a row delta."""
    async with open_sse(env.asgi, "/tasks/dashboard/stream") as (status, stream):
        assert status == 200
        name, hello = await stream.next()
        assert name == "hello"
        assert "total" in hello["metrics"]
        task_id = env.add(jobs.log_and_fail, "secret log line")
        data = await stream.until(
            lambda n, d: (
                n == "delta"
                and any(t["task_id"] == task_id and t["status"] == "failed" for t in d["tasks"])
            )
        )
        row = next(t for t in data["tasks"] if t["task_id"] == task_id)
        assert "logs" not in row
        assert "args" not in row
        assert "stacktrace" not in row


async def test_changes_are_coalesced_per_tick(env, open_sse):
    """A burst of tasks arrives in a few deltas, each task once per delta, not one per change."""
    env.admin.hub.tick = 0.05
    async with open_sse(env.asgi, "/tasks/dashboard/stream") as (_, stream):
        await stream.next()
        ids = {env.add(jobs.succeed, i) for i in range(100)}
        await env.manager.join(timeout=5)
        seen: set[str] = set()
        deltas = 0
        while seen != ids:
            name, data = await stream.next()
            if name == "delta":
                deltas += 1
                tasks = [t["task_id"] for t in data["tasks"]]
                assert len(tasks) == len(set(tasks))
                seen |= {
                    t
                    for t, s in ((t["task_id"], t["status"]) for t in data["tasks"])
                    if s == "success"
                }
        assert deltas < 100


async def test_listener_is_idle_without_clients(env):
    """With nobody connected, changes are not even collected."""
    env.add(jobs.succeed)
    await env.manager.join(timeout=5)
    assert env.admin.hub._changed == set()
    assert env.admin.hub.client_count == 0


async def test_unknown_task_events_is_404(env, open_sse):
    """/{id}/events for an unknown task is a JSON 404."""
    async with open_sse(env.asgi, "/tasks/nope/events") as (status, stream):
        assert status == 404
        assert await stream.next() is None


async def test_task_events_follow_progress_to_the_end(env, open_sse):
    """/{id}/events reports status and progress, then ends when the task finishes."""
    gate = asyncio.Event()
    task_id = env.add(jobs.stepped, gate)
    async with open_sse(env.asgi, f"/tasks/{task_id}/events") as (status, stream):
        assert status == 200
        first = await stream.until(lambda n, d: n == "task")
        assert first["task_id"] == task_id
        assert "error" not in first
        assert "logs" not in first
        await stream.until(lambda n, d: d["progress"] is not None and d["status"] == "running")
        gate.set()
        final = await stream.until(lambda n, d: d["finished"])
        assert final["status"] == "success"
        assert final["progress"] == 1.0
        assert await stream.next() is None


async def test_finished_task_events_send_once(env, open_sse):
    """A finished task's event stream sends its final state and closes."""
    task_id = env.add(jobs.succeed)
    await env.manager.join(timeout=5)
    async with open_sse(env.asgi, f"/tasks/{task_id}/events") as (_, stream):
        name, data = await stream.next()
        assert (name, data["status"]) == ("task", "success")
        assert await stream.next() is None


async def test_shutdown_closes_streams(env, open_sse):
    """Closing the admin's streams ends open SSE responses."""
    async with open_sse(env.asgi, "/tasks/dashboard/stream") as (_, stream):
        await stream.next()
        await env.admin.close_streams()
        assert await stream.next() is None


def test_slow_client_gets_a_reset():
    """A client whose queue is full is told to reload instead of growing a backlog."""
    client = _Client(None, size=2)
    for _ in range(5):
        client.offer(b"event: delta\ndata: {}\n\n")
    assert client.queue.qsize() == 1
    assert client.queue.get_nowait().startswith(b"event: reset")


async def test_overflow_flag_for_huge_ticks(env, open_sse):
    """A burst of more changes than a tick carries sends overflow (no rows): the page reloads."""
    async with open_sse(env.asgi, "/tasks/dashboard/stream") as (_, stream):
        await stream.next()
        for i in range(250):
            env.add(jobs.succeed, i)
        data = await stream.until(lambda n, d: n == "delta" and d["overflow"])
        assert data["tasks"] == []
        await env.manager.join(timeout=5)


class _FakeUvicorn:
    """Stands in for uvicorn's Server: its ``handle_exit`` is the SIGINT handler."""

    def __init__(self) -> None:
        self.should_exit = False

    def handle_exit(self, sig: int, frame: object) -> None:
        self.should_exit = True


async def test_streams_end_when_the_server_is_stopping():
    """Once uvicorn is told to stop, open dashboard streams end, so shutdown is not held."""
    import signal

    from fastapi_taskflow import TaskManager
    from fastapi_taskflow.admin.sse import StreamHub

    manager = TaskManager()
    hub = StreamHub(lambda: manager, tick=0.01, heartbeat=5.0)
    server = _FakeUvicorn()
    previous = signal.signal(signal.SIGINT, server.handle_exit)
    try:
        body = hub.stream(hub.subscribe(), [])
        assert await anext(body) == b"retry: 3000\n\n"
        server.should_exit = True
        rest = [chunk async for chunk in body]  # ends by itself: nothing more is sent
        assert rest == []
        assert hub.client_count == 0
    finally:
        signal.signal(signal.SIGINT, previous)
        await hub.close()


async def test_the_ticker_ends_a_stream_whose_session_lapsed():
    """Every session_recheck seconds the ticker asks whether each stream's session is live,
    and closes the stream once it is not."""
    from fastapi_taskflow import TaskManager
    from fastapi_taskflow.admin.sessions import Identity
    from fastapi_taskflow.admin.sse import StreamHub

    live = asyncio.Event()
    live.set()
    asked: list[str] = []

    async def session_valid(identity: Identity) -> bool:
        asked.append(identity.user)
        return live.is_set()

    manager = TaskManager()
    await manager.startup()
    hub = StreamHub(lambda: manager, tick=0.01, session_valid=session_valid, session_recheck=0.02)
    identity = Identity("alice", "cookie", csrf="session-1", expires=None, stamp="x")
    client = hub.subscribe(identity=identity)
    body = hub.stream(client, [])
    try:
        assert await anext(body) == b"retry: 3000\n\n"
        live.clear()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(body), 5)
        assert set(asked) == {"alice"}
    finally:
        await body.aclose()
        await hub.close()
        await manager.shutdown()
