"""Parsing and validating what clients send: time windows, tags, cursors, queue settings.

Each parser raises :class:`BadInput` with a message a person can act on; the routes turn it
into a 422 ``{"detail": ...}`` before anything changes.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from ..backends.base import RecordQuery, decode_cursor
from ..models import TaskStatus

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
_WINDOW = re.compile(r"^\s*(\d{1,6})\s*(s|m|min|h|hour|d|day)s?\s*$", re.IGNORECASE)
_UNITS = {
    "s": "seconds",
    "m": "minutes",
    "min": "minutes",
    "h": "hours",
    "hour": "hours",
    "d": "days",
    "day": "days",
}
STATUSES = ", ".join(s.value for s in TaskStatus)


class BadInput(ValueError):
    """Raised when a client sends a value the task API cannot use; becomes a 422."""


def parse_window(value: str) -> timedelta:
    """``"30m"``, ``"6h"``, ``"7d"``, ``"45s"`` as a positive timedelta."""
    match = _WINDOW.match(value)
    if match is None:
        raise BadInput(f"invalid time window {value!r}: use <N>s, <N>m, <N>h or <N>d, e.g. 6h")
    amount = int(match.group(1))
    if amount <= 0:
        raise BadInput(f"invalid time window {value!r}: must be greater than zero")
    try:
        return timedelta(**{_UNITS[match.group(2).lower()]: amount})
    except OverflowError:
        raise BadInput(f"invalid time window {value!r}: too large") from None


def window_start(name: str, value: str, now: datetime | None = None) -> datetime:
    """``now`` minus the window ``value`` (``6h``); a window reaching before year 1 is bad
    input, not an ``OverflowError``."""
    window = parse_window(value)
    try:
        return (now or datetime.now(UTC)) - window
    except OverflowError:
        raise BadInput(f"{name}={value!r} is too far back") from None


def parse_instant(name: str, value: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 datetime (UTC when no offset) or a window back from now (``6h``)."""
    if _WINDOW.match(value):
        return window_start(name, value, now)
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(
            f"{name}={value!r} is neither an ISO 8601 datetime nor a window like 6h"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def parse_tag(value: str) -> tuple[str, str]:
    key, sep, tag_value = value.partition(":")
    if not sep or not key:
        raise BadInput(f"tag={value!r} must look like key:value")
    return key, tag_value


def record_query(
    *,
    status: str | None,
    func_name: str | None,
    queue: str | None,
    tag: str | None,
    q: str | None,
    since: str | None,
    until: str | None,
    limit: int | None,
    cursor: str | None,
) -> RecordQuery:
    """The list filters as a :class:`RecordQuery`, every field checked."""
    if status is not None and status not in {s.value for s in TaskStatus}:
        raise BadInput(f"status={status!r} is not one of: {STATUSES}")
    if limit is None:
        limit = DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise BadInput(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    if cursor is not None:
        try:
            decode_cursor(cursor)
        except ValueError:
            raise BadInput("cursor is not one this API returned; start again without it") from None
    since_at = parse_instant("since", since) if since else None
    until_at = parse_instant("until", until) if until else None
    if since_at is not None and until_at is not None and until_at <= since_at:
        raise BadInput("until must be later than since")
    return RecordQuery(
        status=status,
        func_name=func_name or None,
        queue=queue or None,
        tag=parse_tag(tag) if tag else None,
        text=q.strip() or None if q else None,
        since=since_at,
        until=until_at,
        limit=limit,
        cursor=cursor,
    )
