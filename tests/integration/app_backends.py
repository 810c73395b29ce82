"""The backend an app under test uses, from an environment variable's text, so a test can hand
the same backend to a child process; and a counter the test polls while apps write.

``sqlite:<path>``, ``redis:<url>|<prefix>``, ``postgres:<url>|<table prefix>``,
``mysql:<url>|<table prefix>``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi_taskflow.backends.base import TaskBackend
from fastapi_taskflow.backends.factory import build_backend


def backend_from_spec(spec: str) -> TaskBackend:
    kind, _, where = spec.partition(":")
    if kind == "sqlite":
        return build_backend("sqlite", path=where)
    url, _, prefix = where.partition("|")
    if kind == "redis":
        return build_backend("redis", url=url, prefix=prefix, socket_timeout=0.5)
    if kind in ("postgres", "mysql"):
        return build_backend(kind, url=url, table_prefix=prefix, max_size=4)
    raise ValueError(f"unknown backend spec {spec!r}")


class SuccessCounter:
    """Counts SUCCESS records in the backend ``spec`` names, on one connection kept open
    between calls (a test polls it many times while apps in other processes write)."""

    def __init__(self, spec: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.backend = backend_from_spec(spec)
        self.loop.run_until_complete(self.backend.open())

    def __call__(self) -> int:
        counts = self.loop.run_until_complete(self.backend.count_by_status())
        return counts.get("success", 0)

    def close(self) -> None:
        self.loop.run_until_complete(self.backend.close())
        self.loop.close()


@contextmanager
def counting_successes(spec: str) -> Iterator[SuccessCounter]:
    counter = SuccessCounter(spec)
    try:
        yield counter
    finally:
        counter.close()
