"""LoggingObserver: forwards task events to a standard library logger."""

from __future__ import annotations

import logging
from typing import Any

from ..context import LEVEL_NUMBERS
from ..models import LifecycleEvent, LogEvent
from .base import TaskObserver
from .formatting import Event, event_fields, event_level

# Attributes every LogRecord already has; ``logger.log(extra=...)`` raises KeyError when a key
# would overwrite one of them, so such keys are renamed before the call.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
# Shown by the record itself (its message and level), not repeated in ``extra``.
_NOT_EXTRA = frozenset({"message", "level"})


class LoggingObserver(TaskObserver):
    """Sends each event to ``logger`` with the task's fields in ``extra=`` (task_id, ...).

    Use it to route task events into the handlers an app already has (a JSON formatter, Sentry,
    a log shipper). Lifecycle events are logged at the level their status implies.
    """

    def __init__(
        self,
        logger: str | logging.Logger = "fastapi_taskflow.tasks",
        min_level: str = "info",
        log_lifecycle: bool = True,
    ) -> None:
        super().__init__(min_level=min_level)
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.log_lifecycle = log_lifecycle

    async def on_log(self, event: LogEvent) -> None:
        if self.accepts(event.level):
            self._forward(event)

    async def on_lifecycle(self, event: LifecycleEvent) -> None:
        if self.log_lifecycle and self.accepts(event_level(event)):
            self._forward(event)

    def _forward(self, event: Event) -> None:
        # Our level names map onto the stdlib numbers (debug=10 ... critical=50).
        level = LEVEL_NUMBERS[event_level(event)]
        if not self.logger.isEnabledFor(level):
            return
        fields = event_fields(event)
        self.logger.log(
            level,
            "%s[%s] %s",
            event.func_name,
            event.task_id,
            fields["message"],
            extra=record_extra(fields),
        )


def record_extra(fields: dict[str, Any]) -> dict[str, Any]:
    """The event's fields as ``extra=``, with keys that clash with LogRecord attributes renamed."""
    extra: dict[str, Any] = {}
    for key, value in fields.items():
        if key in _NOT_EXTRA:
            continue
        name = f"extra_{key}" if key in _RECORD_ATTRS else key
        extra.setdefault(name, value)
    return extra
