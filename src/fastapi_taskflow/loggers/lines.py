"""LineObserver: the shared part of the observers that write one formatted line per event."""

from __future__ import annotations

from ..models import LifecycleEvent, LogEvent
from .base import TaskObserver
from .formatting import Event, EventFormatter, event_level


class LineObserver(TaskObserver):
    """Formats accepted events and hands each line to :meth:`write_line`.

    ``min_level`` also applies to lifecycle events, through the level derived from their status
    (failed is ``error``, cancelled/interrupted are ``warning``, the rest ``info``), so
    ``min_level="warning", log_lifecycle=True`` shows only the status changes that need a look.
    """

    def __init__(
        self, *, min_level: str = "info", log_lifecycle: bool = False, format: str = "json"
    ) -> None:
        super().__init__(min_level=min_level)
        self.log_lifecycle = log_lifecycle
        self.formatter = EventFormatter(format)

    @property
    def format(self) -> str:
        return self.formatter.format

    async def on_log(self, event: LogEvent) -> None:
        # The chain already filters by level; checking again keeps a directly called observer
        # (tests, users composing observers) honest too.
        if self.accepts(event.level):
            self._emit(event)

    async def on_lifecycle(self, event: LifecycleEvent) -> None:
        if self.log_lifecycle and self.accepts(event_level(event)):
            self._emit(event)

    def _emit(self, event: Event) -> None:
        self.write_line(self.formatter(event))

    def write_line(self, line: str) -> None:
        """Deliver one formatted line (without its newline). Subclasses must override."""
        raise NotImplementedError
