"""Counters every instance of the admin must agree on: login failures and ended sessions.

They live in the manager's backend when it has one with counters (Redis, SQLite, memory), so
two servers on one backend share one login limit and one list of ended sessions. A manager
without a backend, or a backend without counters, gets counters in this process (one instance
behaves the same; several do not share them, and a warning says so once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..backends.memory import MemoryBackend

if TYPE_CHECKING:
    from ..backends.base import TaskBackend
    from ..manager import TaskManager

logger = logging.getLogger("fastapi_taskflow.admin")

PREFIX = "admin:"


class SharedCounters:
    """``add``/``get``/``delete`` on the current manager's backend, or on this process."""

    def __init__(self, current_manager: Callable[[], TaskManager]) -> None:
        self._current_manager = current_manager
        self._local = MemoryBackend()
        self._unshared: set[int] = set()  # ids of backends found without counters

    def _backend(self) -> TaskBackend:
        backend = self._current_manager().backend
        if backend is None or id(backend) in self._unshared:
            return self._local
        return backend

    def _give_up_on(self, backend: TaskBackend) -> None:
        self._unshared.add(id(backend))
        logger.warning(
            "%s has no shared counters: TaskAdmin keeps login limits and ended sessions in "
            "this process only, so other instances do not see them",
            backend.describe(),
        )

    async def add(self, key: str, amount: int, ttl: float) -> int:
        backend = self._backend()
        try:
            return await backend.counter_add(PREFIX + key, amount, ttl)
        except NotImplementedError:
            self._give_up_on(backend)
            return await self._local.counter_add(PREFIX + key, amount, ttl)

    async def get(self, key: str) -> tuple[int, float]:
        backend = self._backend()
        try:
            return await backend.counter_get(PREFIX + key)
        except NotImplementedError:
            self._give_up_on(backend)
            return await self._local.counter_get(PREFIX + key)

    async def delete(self, key: str) -> None:
        backend = self._backend()
        try:
            await backend.counter_delete(PREFIX + key)
        except NotImplementedError:
            self._give_up_on(backend)
            await self._local.counter_delete(PREFIX + key)
