"""The backend an app under test uses, from an environment variable's text."""

from __future__ import annotations

from fastapi_taskflow.backends.base import TaskBackend


def backend_from_spec(spec: str) -> TaskBackend:
    """``sqlite:<path>`` or ``redis:<url>|<prefix>``."""
    kind, _, where = spec.partition(":")
    if kind == "sqlite":
        from fastapi_taskflow.backends.sqlite import SqliteBackend

        return SqliteBackend(where)
    from fastapi_taskflow.backends.redis import RedisBackend

    url, _, prefix = where.partition("|")
    return RedisBackend(url, prefix=prefix, socket_timeout=0.5)
