"""SQLite's own integrity checks on a taskflow database, at open and from ``taskflow db check``.

A damaged page must not start a healthy-looking app: journaled tasks on that page would never
run and show nowhere. ``SqliteBackend`` runs the cheap check at every open and refuses a damaged
file; the command runs either check on demand and says what it found.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

# "quick": PRAGMA quick_check (every page and b-tree; linear in the file size, no index
# lookups), "full": PRAGMA integrity_check (also every index against its table), "off": none.
INTEGRITY_CHECKS = ("off", "quick", "full")
# The checks stop after this many problems: enough to name what is wrong, not a flood.
INTEGRITY_MAX_PROBLEMS = 20


async def integrity_problems(db: aiosqlite.Connection, *, full: bool) -> list[str]:
    """What SQLite's own check finds wrong with the open database; empty when it is sound."""
    pragma = "integrity_check" if full else "quick_check"
    try:
        rows = await db.execute_fetchall(f"PRAGMA {pragma}({INTEGRITY_MAX_PROBLEMS})")
    except sqlite3.DatabaseError as exc:  # damage bad enough that the check itself stops
        return [str(exc)]
    # One row may hold several lines, under a "*** in database main ***" heading.
    found = [line for row in rows for line in str(row[0]).splitlines()]
    problems = [line for line in found if line and not line.startswith("*** in database")]
    return [] if problems == ["ok"] else problems


@dataclass(slots=True)
class DatabaseReport:
    """What ``taskflow db check`` found in one file."""

    path: str
    check: str
    problems: list[str] = field(default_factory=list)
    tables: dict[str, int | str] = field(default_factory=dict)  # rows, or why unreadable
    page_count: int = 0
    free_pages: int = 0
    auto_vacuum: str = ""

    @property
    def damaged(self) -> bool:
        return bool(self.problems)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "check": self.check,
            "ok": not self.damaged,
            "problems": self.problems,
            "tables": self.tables,
            "page_count": self.page_count,
            "free_pages": self.free_pages,
            "auto_vacuum": self.auto_vacuum,
        }


_TABLES = ("tf_records", "tf_journal", "tf_owners", "tf_keys", "tf_locks", "tf_meta")
_VACUUM_MODES = {0: "none", 1: "full", 2: "incremental"}


async def inspect_database(path: Path, *, full: bool = False) -> DatabaseReport:
    """Open ``path`` read-only, run the check and count each table's rows.

    Raises ``FileNotFoundError`` when there is no such file and ``sqlite3.DatabaseError``
    when it is not a database at all."""
    if not await asyncio.to_thread(path.is_file):
        raise FileNotFoundError(f"no database file at {path}")
    report = DatabaseReport(str(path), "integrity_check" if full else "quick_check")
    async with aiosqlite.connect(f"file:{path}?mode=ro", uri=True) as db:
        report.problems = await integrity_problems(db, full=full)
        report.page_count = await _number(db, "PRAGMA page_count")
        report.free_pages = await _number(db, "PRAGMA freelist_count")
        report.auto_vacuum = _VACUUM_MODES.get(await _number(db, "PRAGMA auto_vacuum"), "?")
        for table in _TABLES:
            try:
                report.tables[table] = await _number(db, f"SELECT COUNT(*) FROM {table}")
            except sqlite3.DatabaseError as exc:
                report.tables[table] = f"unreadable: {exc}"
    return report


async def _number(db: aiosqlite.Connection, sql: str) -> int:
    rows = list(await db.execute_fetchall(sql))
    return int(rows[0][0])
