"""Raw ASGI calls for tests that must see a response's messages as the server sends them."""

from __future__ import annotations

from typing import Any


def post_scope(route: str) -> dict[str, Any]:
    """The scope of a bodiless ``POST route`` over HTTP/1.1."""
    return {
        "type": "http",
        "method": "POST",
        "path": route,
        "raw_path": route.encode(),
        "headers": [],
        "query_string": b"",
        "http_version": "1.1",
        "scheme": "http",
        "server": ("t", 80),
        "client": ("c", 1),
        "root_path": "",
        "state": {},
    }


async def empty_body() -> dict[str, Any]:
    """``receive`` for a request without a body."""
    return {"type": "http.request", "body": b"", "more_body": False}
