"""The backend an app under test uses, from an environment variable's text."""

from __future__ import annotations

from fastapi_taskflow.backends.base import TaskBackend
from fastapi_taskflow.backends.factory import build_backend


def backend_from_spec(spec: str) -> TaskBackend:
    """``sqlite:<path>`` or ``redis:<url>|<prefix>``."""
    kind, _, where = spec.partition(":")
    if kind == "sqlite":
        return build_backend("sqlite", path=where)
    url, _, prefix = where.partition("|")
    return build_backend("redis", url=url, prefix=prefix, socket_timeout=0.5)
