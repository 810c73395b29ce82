"""What the admin checks on a request before it trusts it: body size and origin.

Bodies are refused by ``Content-Length`` first and otherwise read in chunks with a cap (413),
so a huge body costs no more memory than the cap. A request that changes something must show
it comes from this origin: browsers say so in ``Sec-Fetch-Site`` or ``Origin``, and a custom
header (``X-CSRF-Token``) cannot be sent from another origin without a CORS preflight.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import HTTPException, Request

# The largest admin body is a bulk retry: 1,000 ids of up to 200 characters.
MAX_BODY = 256 * 1024
MAX_LOGIN_BODY = 16 * 1024
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The ``Content-Length`` of raw ASGI headers; None when absent or not a number."""
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def too_large(limit: int) -> HTTPException:
    return HTTPException(status_code=413, detail=f"the request body is over {limit} bytes")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, at most ``limit`` bytes: 413 by ``Content-Length`` or once the cap is passed."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(limit)
    return bytes(body)


def cross_origin(request: Request) -> str | None:
    """Why a browser's request comes from another origin; None when it does not say so.

    ``Sec-Fetch-Site`` decides when the browser sent it (every current browser does): only
    ``same-origin`` passes, so another port or subdomain (``same-site``) is refused too.
    Otherwise an ``Origin`` naming another host is refused. Neither header: not a browser.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return None if site == "same-origin" else f"Sec-Fetch-Site: {site}"
    origin = request.headers.get("origin")
    if origin is not None and not _own_host(origin, request):
        return f"Origin: {origin}"
    return None


def proves_same_origin(request: Request) -> bool:
    """True when the browser said this origin, or the client sent the custom CSRF header."""
    if request.headers.get("sec-fetch-site") == "same-origin" or request.headers.get(CSRF_HEADER):
        return True
    origin = request.headers.get("origin")
    return origin is not None and _own_host(origin, request)


def _own_host(origin: str, request: Request) -> bool:
    # Host, not the scheme: behind a TLS proxy the app may see http while the page is https.
    host = request.headers.get("host", "")
    return bool(host) and urlsplit(origin).netloc.lower() == host.lower()
