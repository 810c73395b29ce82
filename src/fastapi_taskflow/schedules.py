"""Declaring a schedule: the trigger options checked at decoration time, and the triggers.

The declaration half of scheduling, kept apart from the runtime loop (scheduling.py) so the
registry, where ``@schedule`` is declared, depends on nothing that runs tasks.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

CRON_INSTALL = "pip install 'fastapi-taskflow[scheduler]'"


def check_schedule(
    every: Any, cron: Any, timezone: Any, run_on_startup: Any, catch_up: Any
) -> None:
    """Raise ``ValueError`` naming the bad option of an ``@schedule(...)`` declaration."""
    _check_trigger(every, cron, timezone)
    for flag, value in (("run_on_startup", run_on_startup), ("catch_up", catch_up)):
        if not isinstance(value, bool):
            raise ValueError(f"{flag} must be True or False, got {value!r}")


def _check_trigger(every: Any, cron: Any, timezone: Any) -> None:
    if (every is None) == (cron is None):
        raise ValueError("a schedule needs exactly one of every= (seconds) or cron=")
    zone = load_zone(timezone)
    if every is not None:
        if isinstance(every, bool) or not isinstance(every, int | float):
            raise ValueError(f"every must be a number of seconds, got {every!r}")
        if not math.isfinite(every) or every <= 0:
            raise ValueError(f"every must be > 0 seconds, got {every!r}")
    else:
        CronTrigger(cron, zone)


def load_zone(timezone: Any) -> ZoneInfo:
    """The ``ZoneInfo`` for an IANA name; ``ValueError`` naming ``timezone`` otherwise."""
    if not isinstance(timezone, str) or not timezone:
        raise ValueError(f"timezone must be an IANA time zone name, got {timezone!r}")
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"timezone {timezone!r} is not a known IANA time zone (e.g. 'UTC', 'Europe/Paris')"
        ) from None


def _croniter() -> Any:
    try:
        from croniter import croniter
    except ImportError:
        raise ImportError(f"cron= schedules need croniter: {CRON_INSTALL}") from None
    return croniter


# ---- triggers: when slots fall -----------------------------------------------------------------


class Trigger(Protocol):
    def first_after(self, now: float) -> float: ...

    def after(self, slot: float) -> float: ...

    def latest(self, now: float) -> float: ...


class EveryTrigger:
    """Slots at whole multiples of ``interval`` seconds since the epoch."""

    def __init__(self, interval: float) -> None:
        self.interval = float(interval)

    def first_after(self, now: float) -> float:
        slot = (math.floor(now / self.interval) + 1) * self.interval
        return slot if slot > now else slot + self.interval

    def after(self, slot: float) -> float:
        # round(): a slot is k * interval; float division must not land on k - 1.
        return (round(slot / self.interval) + 1) * self.interval

    def latest(self, now: float) -> float:
        return math.floor(now / self.interval) * self.interval


class CronTrigger:
    """Slots of a cron expression, evaluated in a time zone (DST handled by croniter)."""

    def __init__(self, expression: Any, zone: ZoneInfo) -> None:
        self._croniter = _croniter()
        if not isinstance(expression, str) or not self._croniter.is_valid(expression):
            raise ValueError(f"cron must be a valid cron expression, got {expression!r}")
        self.expression = expression
        self.zone = zone

    def _at(self, when: float) -> Any:
        return self._croniter(self.expression, datetime.fromtimestamp(when, self.zone))

    def first_after(self, now: float) -> float:
        return float(self._at(now).get_next(datetime).timestamp())

    def after(self, slot: float) -> float:
        return self.first_after(slot)

    def latest(self, now: float) -> float:
        return float(self._at(now).get_prev(datetime).timestamp())
