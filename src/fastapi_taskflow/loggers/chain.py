"""ObserverChain: fans events out to every observer; one failing never touches another."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from ..models import LifecycleEvent, LogEvent
from .base import TaskObserver

logger = logging.getLogger("fastapi_taskflow.loggers")


class ObserverChain:
    """Delivers each event to each observer in order, isolating their failures."""

    def __init__(self, observers: Iterable[TaskObserver] = ()) -> None:
        self.observers: list[TaskObserver] = list(observers)
        self.failures = 0

    def __bool__(self) -> bool:
        return bool(self.observers)

    async def _each(self, hook: str, call: Callable[[TaskObserver], Awaitable[None]]) -> None:
        for observer in self.observers:
            await self._guarded(observer, hook, call(observer))

    async def startup(self) -> None:
        await self._each("startup", lambda o: o.startup())

    async def close(self) -> None:
        await self._each("close", lambda o: o.close())

    async def on_log(self, event: LogEvent) -> None:
        for observer in self.observers:
            if observer.accepts(event.level):
                await self._guarded(observer, "on_log", observer.on_log(event))

    async def on_lifecycle(self, event: LifecycleEvent) -> None:
        for observer in self.observers:
            await self._guarded(observer, "on_lifecycle", observer.on_lifecycle(event))

    async def _guarded(self, observer: TaskObserver, hook: str, call: Awaitable[None]) -> None:
        try:
            await call
        except asyncio.CancelledError:
            raise
        except Exception:
            self.failures += 1
            logger.error(
                "observer %s failed in %s; other observers and the task are unaffected",
                type(observer).__name__,
                hook,
                exc_info=True,
            )
