"""Helpers for the task-control tests: started managers, gated tasks, condition waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi_taskflow import TaskManager
from fastapi_taskflow.backends import MemoryBackend
from fastapi_taskflow.backends.base import TaskBackend

# Makes backend objects over one store (the ``shared_backend`` fixture of conftest.py).
BackendFactory = Callable[[], TaskBackend]


class SharedMemoryBackend(MemoryBackend):
    """The memory backend declared shared, so two managers in one process act as two instances."""

    shared = True


@asynccontextmanager
async def running(**options: Any) -> AsyncIterator[TaskManager]:
    """A started manager, shut down at the end."""
    manager = TaskManager(**options)
    await manager.startup()
    try:
        yield manager
    finally:
        await manager.shutdown()


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Return as soon as ``condition()`` holds; fail after ``timeout`` (a bound, not a guess)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


class Gate:
    """Async tasks that block until released, counting how many run at once."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.started: list[Any] = []
        self.events: dict[Any, asyncio.Event] = {}
        self.observed: list[tuple[int, int | None]] = []  # (running at start, cap at start)
        self.cap: int | None = None

    def event(self, key: Any) -> asyncio.Event:
        return self.events.setdefault(key, asyncio.Event())

    async def work(self, key: Any) -> Any:
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.observed.append((self.running, self.cap))
        self.started.append(key)
        try:
            await self.event(key).wait()
        finally:
            self.running -= 1
        return key

    def release(self, key: Any) -> None:
        self.event(key).set()

    def release_all(self) -> None:
        for key in list(self.started):
            self.release(key)


async def drain(gate: Gate, total: int) -> None:
    """Release gated tasks until all ``total`` have started, then release the last ones."""
    while len(gate.started) < total:
        before = len(gate.started)
        gate.release_all()
        await wait_until(lambda before=before: len(gate.started) > before)
    gate.release_all()
