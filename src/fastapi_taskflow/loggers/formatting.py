"""Turns observer events into one line each: a JSON object or a plain text line.

:func:`event_fields` is the single place that decides which fields an event carries; the JSON
and text renderings (and :class:`LoggingObserver`'s ``extra=``) all start from its dict.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Literal, TypeAlias

from pythonjsonlogger.json import JsonFormatter

from ..models import LifecycleEvent, LogEvent, TaskStatus

Event: TypeAlias = LogEvent | LifecycleEvent
LineFormat = Literal["json", "text"]
FORMATS: tuple[LineFormat, ...] = ("json", "text")

# The fields every line may carry, in output order. Extra fields from ``task_log(**extra)`` come
# after them and can never replace one of them (see ``_merge_extra``).
FIXED_FIELDS = (
    "timestamp",
    "level",
    "event",
    "task_id",
    "func_name",
    "attempt",
    "status",
    "duration",
    "error",
    "retrying",
    "queue",
    "tags",
    "message",
)
_FIXED = frozenset(FIXED_FIELDS)


def check_format(value: str) -> LineFormat:
    """Validate a ``format=`` argument; the error names the accepted values."""
    if value == "json":
        return "json"
    if value == "text":
        return "text"
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {value!r}")


def event_level(event: Event) -> str:
    """The level of an event: its own for a log line, derived from the status for a lifecycle."""
    if isinstance(event, LogEvent):
        return event.level
    if event.status is TaskStatus.FAILED:
        # A failure that will be retried is not yet the end of the task.
        return "warning" if event.retrying else "error"
    if event.status in (TaskStatus.CANCELLED, TaskStatus.INTERRUPTED, TaskStatus.REJECTED):
        return "warning"
    return "info"


def event_fields(event: Event) -> dict[str, Any]:
    """The flat dict describing one event; JSON, text and stdlib logging all render this."""
    if isinstance(event, LogEvent):
        return _log_fields(event)
    return _lifecycle_fields(event)


def _log_fields(event: LogEvent) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "timestamp": iso_utc(event.timestamp),
        "level": event.level,
        "event": "log",
        "task_id": event.task_id,
        "func_name": event.func_name,
        "attempt": event.attempt,
        "queue": event.queue,
        "tags": dict(event.tags),
        "message": event.message,
    }
    _merge_extra(fields, event.extra)
    return fields


def _lifecycle_fields(event: LifecycleEvent) -> dict[str, Any]:
    return {
        "timestamp": iso_utc(event.timestamp),
        "level": event_level(event),
        "event": "lifecycle",
        "task_id": event.task_id,
        "func_name": event.func_name,
        "attempt": event.attempt,
        "status": event.status.value,
        "duration": event.duration,
        "error": event.error,
        "retrying": event.retrying,
        "queue": event.queue,
        "tags": dict(event.tags),
        "message": lifecycle_message(event),
    }


def _merge_extra(fields: dict[str, Any], extra: dict[str, Any]) -> None:
    """Flatten ``extra`` into ``fields``; a key that clashes with a fixed field gets a prefix.

    Renaming instead of dropping keeps the caller's data, and the fixed fields stay trustworthy
    for whoever parses the lines (``task_log("x", task_id="other")`` cannot fake a task id).
    """
    for key, value in extra.items():
        name = str(key)
        if name in _FIXED:
            name = f"extra_{name}"
        fields.setdefault(name, value)


def lifecycle_message(event: LifecycleEvent) -> str:
    """A short human sentence for a status change, e.g. ``"failed, will retry: boom"``."""
    status = event.status
    if status is TaskStatus.SUCCESS and event.duration is not None:
        return f"success in {event.duration:.3f}s"
    if status is TaskStatus.FAILED:
        prefix = "failed, will retry" if event.retrying else "failed"
        return f"{prefix}: {event.error}" if event.error else prefix
    if status is TaskStatus.PENDING and event.retrying:
        return "waiting to retry"
    return str(status)


def iso_utc(value: datetime) -> str:
    """ISO 8601 with an explicit offset; a naive time is taken to be UTC (as ``utcnow`` makes)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


class EventFormatter:
    """Renders events as single lines in the chosen format."""

    def __init__(self, format: str = "json") -> None:
        self.format = check_format(format)
        # An empty field list: the object holds exactly our fields, in our order (the default
        # would put ``message`` first). Built once, as JsonFormatter parses its options.
        self._json = JsonFormatter(fmt=())

    def __call__(self, event: Event) -> str:
        fields = event_fields(event)
        if self.format == "text":
            return render_text(fields)
        return self._render_json(fields)

    def _render_json(self, fields: dict[str, Any]) -> str:
        # A dict ``msg`` is python-json-logger's way of logging structured data: it becomes the
        # object itself, and its encoder turns odd extra values (sets, objects) into strings.
        record = logging.makeLogRecord({"msg": fields})
        return self._json.format(record)


def render_text(fields: dict[str, Any]) -> str:
    """``<timestamp> <LEVEL> <func_name>[<task_id>] <message> key=value ...`` on one line."""
    head = (
        f"{fields['timestamp']} {fields['level'].upper():<8} "
        f"{fields['func_name']}[{fields['task_id']}] {_one_line(fields['message'])}"
    )
    rest = [
        f"{key}={_one_line(_text_value(value))}"
        for key, value in fields.items()
        if key not in _TEXT_HEAD and _worth_showing(key, value)
    ]
    return " ".join([head, *rest])


_TEXT_HEAD = frozenset({"timestamp", "level", "func_name", "task_id", "message", "event"})


def _worth_showing(key: str, value: Any) -> bool:
    # Text is for people: leave out empty fields and the usual ``retrying=False``.
    if key == "retrying":
        return bool(value)
    return value is not None and value != {}


def _text_value(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items())
    return str(value)


def _one_line(text: str) -> str:
    # Escaped rather than stripped, so a multi-line message stays readable and one event stays
    # one line for tools that split on newlines.
    return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")
