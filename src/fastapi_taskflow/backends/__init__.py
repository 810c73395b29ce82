"""Persistence backends. Each optional one is imported lazily (see ``__getattr__``)."""

from __future__ import annotations

from typing import Any

from .base import JournalEntry, RecordPage, RecordQuery, TaskBackend

__all__ = [
    "JournalEntry",
    "MemoryBackend",
    "MySQLBackend",
    "PostgresBackend",
    "RecordPage",
    "RecordQuery",
    "RedisBackend",
    "SqliteBackend",
    "TaskBackend",
]


def __getattr__(name: str) -> Any:
    if name == "MemoryBackend":
        from .memory import MemoryBackend

        return MemoryBackend
    if name == "SqliteBackend":
        from .sqlite import SqliteBackend

        return SqliteBackend
    if name == "RedisBackend":
        from .redis import RedisBackend

        return RedisBackend
    if name == "PostgresBackend":
        from .postgres import PostgresBackend

        return PostgresBackend
    if name == "MySQLBackend":
        from .mysql import MySQLBackend

        return MySQLBackend
    if name == "SnapshotBackend":
        from ..compat import renamed

        return renamed(name, __name__)
    raise AttributeError(name)
