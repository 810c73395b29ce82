"""LoopRef: the event loop a manager runs on, and the one way onto it from any thread.

Sync routes and thread tasks call into the manager from worker threads; the store, queues,
observers and asyncio objects (events, futures) belong to the loop's thread. Every part that may
be reached from a thread shares the manager's LoopRef instead of tracking the loop itself.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any


class LoopRef:
    """The bound loop and its thread; ``call`` runs a function there."""

    __slots__ = ("loop", "thread")

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called from the loop's own thread."""
        self.loop = loop
        self.thread = threading.get_ident()

    def clear(self) -> None:
        self.loop = None

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self.thread

    def call(self, func: Callable[..., Any], *args: Any) -> None:
        """Run ``func(*args)`` on the loop's thread: now when already there (or unbound), else
        soon; dropped once the loop is closed (nothing would run it)."""
        loop = self.loop
        if loop is None or threading.get_ident() == self.thread:
            func(*args)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(func, *args)
