"""Fixtures for the admin tests: an app with TaskAdmin, an HTTP client, an SSE reader."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import admin_jobs as jobs
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from fastapi_taskflow import TaskAdmin, TaskManager


@dataclass
class Env:
    """One app with a started manager and its admin."""

    app: FastAPI
    manager: TaskManager
    admin: TaskAdmin
    client: httpx.AsyncClient
    asgi: Any

    def add(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
        return str(self.manager.add_task(func, *args, **kwargs))


def register(manager: TaskManager) -> None:
    for func in (jobs.succeed, jobs.fail, jobs.log_and_fail, jobs.block, jobs.stepped):
        manager.task()(func)


@asynccontextmanager
async def running_admin(
    manager_options: dict[str, Any] | None = None,
    base_url: str = "http://testserver",
    **admin_options: Any,
) -> AsyncIterator[Env]:
    manager = TaskManager(**{"drain_timeout": 1.0, **(manager_options or {})})
    register(manager)
    app = FastAPI()
    admin = TaskAdmin(app, manager, **admin_options)
    async with LifespanManager(app) as lifespan:
        transport = httpx.ASGITransport(app=lifespan.app)
        # Sent by browsers on every same-origin change; the admin refuses changes without it.
        origin = {"Origin": base_url}
        async with httpx.AsyncClient(
            transport=transport, base_url=base_url, headers=origin
        ) as client:
            yield Env(app, manager, admin, client, lifespan.app)
        await admin.close_streams()


MakeEnv = Callable[..., AbstractAsyncContextManager[Env]]


@pytest.fixture
def make_env() -> MakeEnv:
    """A factory: ``async with make_env(auth=...) as env``."""
    return running_admin


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    """An open (no auth) admin at /tasks on a memory-only manager."""
    async with running_admin() as env:
        yield env


# ---- SSE over raw ASGI (httpx's ASGI transport buffers whole bodies) ---------------------------


class SseStream:
    """Reads events from one streaming ASGI response."""

    def __init__(self, messages: asyncio.Queue[dict[str, Any]]) -> None:
        self._messages = messages
        self._buffer = b""
        self.ended = False
        self.raw = b""

    async def next(self, timeout: float = 5.0) -> tuple[str, Any] | None:
        """The next ``(event, data)``; None when the response ended."""
        async with asyncio.timeout(timeout):
            while True:
                if b"\n\n" in self._buffer:
                    block, self._buffer = self._buffer.split(b"\n\n", 1)
                    parsed = _parse(block.decode())
                    if parsed is not None:
                        return parsed
                    continue
                if self.ended:
                    return None
                message = await self._messages.get()
                body = message.get("body", b"")
                self.raw += body
                self._buffer += body
                if not message.get("more_body", False):
                    self.ended = True

    async def until(self, predicate: Callable[[str, Any], bool], timeout: float = 5.0) -> Any:
        """Read events until ``predicate(event, data)``; return that data."""
        async with asyncio.timeout(timeout):
            while True:
                got = await self.next(timeout)
                assert got is not None, "stream ended first"
                if predicate(*got):
                    return got[1]


def _parse(block: str) -> tuple[str, Any] | None:
    name, data = "message", []
    for line in block.splitlines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
    if not data:
        return None
    return name, json.loads("\n".join(data))


@asynccontextmanager
async def sse(
    asgi: Any, path: str, headers: dict[str, str] | None = None
) -> AsyncIterator[tuple[int, SseStream]]:
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    gone = asyncio.Event()
    raw_path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": raw_path,
        "raw_path": raw_path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await messages.put(message)

    task = asyncio.create_task(asgi(scope, receive, send))
    try:
        start = await asyncio.wait_for(messages.get(), 5)
        assert start["type"] == "http.response.start"
        yield start["status"], SseStream(messages)
    finally:
        gone.set()
        await asyncio.wait_for(task, 5)


@pytest.fixture
def open_sse() -> Callable[..., AbstractAsyncContextManager[tuple[int, SseStream]]]:
    """``async with open_sse(env.asgi, "/tasks/dashboard/stream") as (status, stream)``."""
    return sse
