"""The dashboard's files and the login page, with caching and security headers.

The HTML, JS and CSS are real files in ``static/`` shipped with the package; nothing is
generated. They are read once, served with an ETag (304 on a match) and, for pages, a strict
Content-Security-Policy: scripts and styles only from this origin, no inline code, no framing.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from .routing import AdminRoute

if TYPE_CHECKING:
    from .auth import AdminAuth

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    etag: str
    media_type: str


def load_assets() -> dict[str, Asset]:
    assets: dict[str, Asset] = {}
    folder = resources.files("fastapi_taskflow.admin").joinpath("static")
    for item in folder.iterdir():
        if item.is_file() and not item.name.startswith("."):
            body = item.read_bytes()
            media = mimetypes.guess_type(item.name)[0] or "application/octet-stream"
            if media.startswith("text/") or media.endswith("javascript"):
                media += "; charset=utf-8"
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            assets[item.name] = Asset(body, etag, media)
    return assets


def serve(request: Request, asset: Asset, cache: str, page: bool = False) -> Response:
    headers = {"ETag": asset.etag, "Cache-Control": cache, "X-Content-Type-Options": "nosniff"}
    if page:
        headers.update(PAGE_HEADERS)
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def pages_router(
    *,
    path: str,
    auth: AdminAuth,
    dependencies: list[Any],
    config: dict[str, Any],
    read_only_users: frozenset[str],
) -> APIRouter:
    """Dashboard page, its config, static files, login and logout (a POST: see auth)."""
    assets = load_assets()
    router = APIRouter(prefix=path, include_in_schema=False, route_class=AdminRoute)

    @router.get("/dashboard", dependencies=dependencies)
    async def dashboard(request: Request) -> Response:
        if auth.enabled and await auth.identify(request) is None:
            return RedirectResponse(f"{path}/auth/login", status_code=303)
        return serve(request, assets["index.html"], "no-cache", page=True)

    @router.get("/dashboard/config", dependencies=[*dependencies, Depends(auth.guard)])
    async def dashboard_config(request: Request) -> Response:
        identity = request.state.taskflow_identity
        return JSONResponse(
            {
                **config,
                "read_only": config["read_only"] or identity.user in read_only_users,
                "auth": auth.enabled,
                "user": identity.user,
                "csrf_token": identity.csrf,
            },
            headers={"Cache-Control": "no-store"},
        )

    @router.get("/static/{name}")
    async def static(request: Request, name: str) -> Response:
        asset = assets.get(name)
        if asset is None or name.endswith(".html"):
            return JSONResponse({"detail": "Not found"}, status_code=404)
        return serve(request, asset, "public, max-age=300")

    @router.get("/auth/login")
    async def login_page(request: Request) -> Response:
        if not auth.enabled:
            return RedirectResponse(f"{path}/dashboard", status_code=303)
        return serve(request, assets["login.html"], "no-cache", page=True)

    @router.post("/auth/login")
    async def login(request: Request) -> Response:
        if not auth.enabled:
            return JSONResponse({"detail": "authentication is not configured"}, status_code=404)
        return await auth.login(request)

    @router.post("/auth/logout")
    async def logout(request: Request) -> Response:
        return await auth.logout(request)

    return router
