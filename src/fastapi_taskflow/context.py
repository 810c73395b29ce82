"""What code inside a task can call: ``get_task_context``, ``task_log`` and ``set_progress``.

The running attempt is held in a context variable, so it follows the task into threads
(``asyncio.to_thread`` copies the context) and is set again inside a worker process.
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from typing import Any, Protocol

from .models import TaskContext

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LEVEL_NUMBERS = {name: 10 * (i + 1) for i, name in enumerate(LOG_LEVELS)}


class TaskSink(Protocol):
    """Where a running task's logs and progress go (the dispatcher, or a process channel)."""

    @property
    def context(self) -> TaskContext: ...

    def log(self, message: str, level: str, extra: dict[str, Any]) -> None: ...

    def progress(self, fraction: float, message: str | None) -> None: ...


current_sink: ContextVar[TaskSink | None] = ContextVar("fastapi_taskflow_task", default=None)


def get_task_context() -> TaskContext | None:
    """The running task's id, name, attempt and tags; None outside a task."""
    sink = current_sink.get()
    return sink.context if sink is not None else None


def check_level(level: str) -> str:
    normalized = level.lower() if isinstance(level, str) else level
    if normalized not in LEVEL_NUMBERS:
        raise ValueError(f"level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    return str(normalized)


def task_log(message: str, level: str = "info", **extra: Any) -> None:
    """Add a line to the running task's log and send it to the observers.

    Outside a task it does nothing, so helpers that log can also be called directly.
    """
    level = check_level(level)
    sink = current_sink.get()
    if sink is not None:
        sink.log(str(message), level, extra)


def set_progress(fraction: float, message: str | None = None) -> None:
    """Report how far the running task is, from 0.0 to 1.0 (shown live in the dashboard)."""
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, int | float)
        or not math.isfinite(fraction)
    ):
        raise ValueError(f"progress must be a number from 0 to 1, got {fraction!r}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"progress must be between 0 and 1, got {fraction!r}")
    sink = current_sink.get()
    if sink is not None:
        sink.progress(float(fraction), message)
