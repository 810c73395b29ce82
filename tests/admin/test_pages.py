"""The dashboard's files: CSP and caching headers, no inline code, text-only rendering."""

from __future__ import annotations

import re
from importlib import resources

import pytest

STATIC = resources.files("fastapi_taskflow.admin").joinpath("static")


async def test_dashboard_page_has_strict_headers(env):
    """The dashboard page is served with a strict CSP and revalidation caching."""
    response = await env.client.get("/tasks/dashboard")
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-content-type-options"] == "nosniff"
    etag = {"If-None-Match": response.headers["etag"]}
    again = await env.client.get("/tasks/dashboard", headers=etag)
    assert again.status_code == 304


@pytest.mark.parametrize("name", ["app.js", "app.css", "login.js", "favicon.svg"])
async def test_static_assets_are_cached(env, name):
    """Static files carry an ETag and a max-age and answer 304 when unchanged."""
    response = await env.client.get(f"/tasks/static/{name}")
    assert response.status_code == 200
    assert "max-age" in response.headers["cache-control"]
    etag = response.headers["etag"]
    again = await env.client.get(f"/tasks/static/{name}", headers={"If-None-Match": etag})
    assert again.status_code == 304


@pytest.mark.parametrize("name", ["nope.js", "index.html", "..%2Fapi.py", "%2e%2e"])
async def test_unknown_static_is_404(env, name):
    """Only the shipped assets are served."""
    response = await env.client.get(f"/tasks/static/{name}")
    assert response.status_code == 404


async def test_dashboard_config(env):
    """The page reads its settings from /dashboard/config."""
    config = (await env.client.get("/tasks/dashboard/config")).json()
    assert config["title"] == "Tasks"
    assert config["auth"] is False
    assert config["read_only"] is False


def test_no_inline_code_and_no_html_sinks():
    """The HTML has no inline script or style; the JS never assigns HTML from strings."""
    for page in ("index.html", "login.html"):
        html = STATIC.joinpath(page).read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", html)
        assert "<style" not in html
        assert " style=" not in html
        assert " on" + "click=" not in html
        assert "http://" not in html.replace("http://www.w3.org", "")
        assert "https://" not in html
    script = STATIC.joinpath("app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script
