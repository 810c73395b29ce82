"""A backend from one string, so a test can hand the same backend to a child process.

``sqlite:<path>``, ``redis:<url>|<prefix>``, ``postgres:<url>|<table prefix>``,
``mysql:<url>|<table prefix>``.
"""

from __future__ import annotations

import asyncio

from fastapi_taskflow.backends.base import TaskBackend


def backend_from_spec(spec: str) -> TaskBackend:
    kind, _, where = spec.partition(":")
    url, _, prefix = where.partition("|")
    if kind == "sqlite":
        from fastapi_taskflow.backends.sqlite import SqliteBackend

        return SqliteBackend(where)
    if kind == "redis":
        from fastapi_taskflow.backends.redis import RedisBackend

        return RedisBackend(url, prefix=prefix, socket_timeout=0.5)
    if kind == "postgres":
        from fastapi_taskflow.backends.postgres import PostgresBackend

        return PostgresBackend(url, table_prefix=prefix, max_size=4)
    if kind == "mysql":
        from fastapi_taskflow.backends.mysql import MySQLBackend

        return MySQLBackend(url, table_prefix=prefix, max_size=4)
    raise ValueError(f"unknown backend spec {spec!r}")


def successes(spec: str) -> int:
    """How many records in the backend ``spec`` names are SUCCESS (a fresh connection)."""

    async def count() -> int:
        backend = backend_from_spec(spec)
        await backend.open()
        try:
            return (await backend.count_by_status()).get("success", 0)
        finally:
            await backend.close()

    return asyncio.run(count())
