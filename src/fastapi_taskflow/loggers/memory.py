"""InMemoryLogger: keeps every event in lists, for tests and for inspecting a run by hand."""

from __future__ import annotations

from ..models import LifecycleEvent, LogEvent, TaskStatus
from .base import TaskObserver


class InMemoryLogger(TaskObserver):
    """Records events in arrival order; nothing is written anywhere.

    It keeps everything it is given, so it suits tests and short runs, not a long-lived
    production process.
    """

    def __init__(self, min_level: str = "debug", log_lifecycle: bool = True) -> None:
        super().__init__(min_level=min_level)
        self.log_lifecycle = log_lifecycle
        self.log_events: list[LogEvent] = []
        self.lifecycle_events: list[LifecycleEvent] = []

    async def on_log(self, event: LogEvent) -> None:
        if self.accepts(event.level):
            self.log_events.append(event)

    async def on_lifecycle(self, event: LifecycleEvent) -> None:
        if self.log_lifecycle:
            self.lifecycle_events.append(event)

    def clear(self) -> None:
        """Forget everything recorded so far."""
        self.log_events.clear()
        self.lifecycle_events.clear()

    def messages(self, task_id: str | None = None) -> list[str]:
        """The logged messages in order, of one task or of all tasks."""
        return [e.message for e in self.log_events if task_id is None or e.task_id == task_id]

    def statuses(self, task_id: str) -> list[TaskStatus]:
        """The statuses one task went through, in order (retries repeat RUNNING)."""
        return [e.status for e in self.lifecycle_events if e.task_id == task_id]
