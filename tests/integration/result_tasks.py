"""Module-level tasks whose return values the restart tests read back (a process worker
imports them by name)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def report(report_id: int) -> bytes:
    return f"%PDF report {report_id}".encode()


def summary(n: int) -> dict[str, Any]:
    return {"n": n, "at": datetime(2025, 1, 2, 3, 4, tzinfo=UTC), "pair": (n, str(n))}


async def async_total(a: int, b: int) -> int:
    return a + b
