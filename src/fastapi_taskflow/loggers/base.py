"""TaskObserver: the base class of everything that watches tasks. Every hook is a no-op."""

from __future__ import annotations

from ..context import LEVEL_NUMBERS, check_level
from ..models import LifecycleEvent, LogEvent


class TaskObserver:
    """Receives ``task_log`` lines and status changes. Override what you need.

    ``min_level`` drops log events below it before ``on_log`` is called. Hooks run on the event
    loop: do slow I/O in a thread (as :class:`FileLogger` does), never inline.
    """

    def __init__(self, min_level: str = "info") -> None:
        self.min_level = check_level(min_level)
        self._min_number = LEVEL_NUMBERS[self.min_level]

    def accepts(self, level: str) -> bool:
        return LEVEL_NUMBERS.get(level, 0) >= self._min_number

    async def startup(self) -> None:
        """Called once when the manager starts."""

    async def close(self) -> None:
        """Called once when the manager stops; flush and release resources here."""

    async def on_log(self, event: LogEvent) -> None:
        """A task called ``task_log``."""

    async def on_lifecycle(self, event: LifecycleEvent) -> None:
        """A task changed status."""
