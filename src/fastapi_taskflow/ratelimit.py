"""Rate limits: ``RateLimit(10, per=1.0)`` or ``"10/s"``, and the GCRA step every backend runs.

GCRA (the generic cell rate algorithm) keeps one number per limit, the *theoretical arrival
time* (TAT): when the next start would be due if starts came exactly every ``per / limit``
seconds. A start is allowed when ``now >= TAT - (burst - 1) * interval``; it then moves TAT one
interval on. With the default ``burst=1`` starts are spaced evenly, so any window of ``per``
seconds holds at most ``limit`` of them. One number per limit makes the step a single atomic
read-modify-write in every backend (a Lua script on Redis, one transaction on SQLite).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}
_TEXT = re.compile(r"^\s*(\d+)\s*/\s*(\d*(?:\.\d+)?)\s*([a-z]+)\s*$")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``limit`` starts per ``per`` seconds (``burst`` of them may start at once)."""

    limit: int
    per: float = 1.0
    burst: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise ValueError(f"rate limit: limit must be an int >= 1, got {self.limit!r}")
        per = self.per
        if isinstance(per, bool) or not isinstance(per, int | float) or not math.isfinite(per):
            raise ValueError(f"rate limit: per must be a number of seconds, got {per!r}")
        if per <= 0:
            raise ValueError(f"rate limit: per must be > 0 seconds, got {per!r}")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise ValueError(f"rate limit: burst must be an int >= 1, got {self.burst!r}")

    @property
    def interval(self) -> float:
        """Seconds between two starts at the steady rate."""
        return self.per / self.limit

    def __str__(self) -> str:
        for unit, seconds in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
            if self.per == seconds:
                return f"{self.limit}/{unit}"
        return f"{self.limit}/{self.per:g}s"


def parse_rate_limit(value: Any, *, what: str = "rate_limit") -> RateLimit | None:
    """``None``, a :class:`RateLimit`, or text like ``"10/s"``, ``"100/m"``, ``"5/h"``,
    ``"3/10s"``; raises ``ValueError`` naming ``what`` for anything else."""
    if value is None or isinstance(value, RateLimit):
        return value
    if isinstance(value, str):
        match = _TEXT.match(value.lower())
        if match is not None and match.group(3) in _UNITS:
            count, scale, unit = match.groups()
            try:
                return RateLimit(int(count), per=float(scale or 1) * _UNITS[unit])
            except ValueError as exc:
                raise ValueError(f"{what}={value!r}: {exc}") from None
    raise ValueError(
        f"{what} must be like '10/s', '100/m', '5/h' or a RateLimit(limit, per=seconds), "
        f"got {value!r}"
    )


def gcra_step(tat: float | None, now: float, interval: float, burst: int) -> tuple[float, float]:
    """One GCRA decision: ``(new_tat, 0.0)`` when a start is allowed now, else
    ``(tat, seconds to wait)`` with ``tat`` unchanged. ``tat`` None: never used."""
    current = now if tat is None or tat < now else tat
    allowed_at = current - (burst - 1) * interval
    if now < allowed_at:
        return current, allowed_at - now
    return current + interval, 0.0
