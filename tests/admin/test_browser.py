"""The dashboard in a real browser (Debian's chromium through playwright).

Skipped locally when /usr/bin/chromium is missing; a failure when CI=true. Screenshots land in
docs/images/ for docs/dashboard.md.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import admin_jobs as jobs
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request

from conftest import register
from fastapi_taskflow import TaskAdmin, TaskManager

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Screenshots refresh docs/images/ only when asked (TASKFLOW_SCREENSHOTS=docs): a plain test run
# must not rewrite tracked files. Otherwise they go to a scratch folder, still taken and checked.
IMAGES = (
    Path(__file__).resolve().parents[2] / "docs" / "images"
    if os.environ.get("TASKFLOW_SCREENSHOTS") == "docs"
    else Path(tempfile.mkdtemp(prefix="taskflow-shots-"))
)


def _need_chromium() -> None:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{CHROMIUM} is missing and CI must run the browser tests")
        pytest.skip(f"{CHROMIUM} is not installed")


@dataclass
class Server:
    """A uvicorn server in a thread, with its app's manager and admin."""

    url: str
    manager: TaskManager
    admin: TaskAdmin
    loop: asyncio.AbstractEventLoop

    def add(self, func: Any, *args: Any, **kwargs: Any) -> str:
        return str(self.manager.add_task(func, *args, **kwargs))

    def join(self) -> None:
        asyncio.run_coroutine_threadsafe(self.manager.join(timeout=10), self.loop).result(15)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _uvicorn(app: FastAPI) -> Iterator[int]:
    """Serve ``app`` on a free port in a thread; yields the port."""
    import uvicorn

    port = _free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ws="none",
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def _serve(app: FastAPI | None = None, **admin_options: Any) -> Iterator[Server]:
    manager = TaskManager(drain_timeout=1.0)
    register(manager)
    app = app or FastAPI()
    admin = TaskAdmin(app, manager, **admin_options)
    with _uvicorn(app) as port:
        loop = manager._loop
        assert loop is not None
        try:
            yield Server(f"http://127.0.0.1:{port}/tasks", manager, admin, loop)
        finally:
            asyncio.run_coroutine_threadsafe(admin.close_streams(), loop).result(5)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One chromium for the module."""
    _need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def server() -> Iterator[Server]:
    """An open admin showing task arguments."""
    _need_chromium()
    with _serve(display_func_args=True) as running:
        yield running


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page that records console errors and page errors."""
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    page = context.new_page()
    page.errors = []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    yield page
    context.close()


def _open(page: Any, server: Server, view: str = "overview") -> None:
    from playwright.sync_api import expect

    page.goto(f"{server.url}/dashboard#{view}")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.locator("#live")).to_have_text("live")


def test_dashboard_loads_without_console_errors(page, server):
    """The overview renders cards and charts with no console error."""
    from playwright.sync_api import expect

    for i in range(12):
        server.add(jobs.succeed, i, tags={"batch": "demo"})
    for i in range(3):
        server.add(jobs.log_and_fail, f"upstream timed out #{i}")
    server.join()
    _open(page, server)
    expect(page.locator('[data-card="Total"] .value')).to_have_text("15")
    expect(page.locator("#chart-durations rect").first).to_be_visible()
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMAGES / "dashboard-overview.png"), full_page=True)
    assert page.errors == []


def test_new_task_appears_live(page, server):
    """A task added after the page loaded shows up in the table without a reload."""
    from playwright.sync_api import expect

    _open(page, server, "tasks")
    expect(page.locator("#task-table tbody")).to_contain_text("No tasks match")
    task_id = server.add(jobs.succeed, "live")
    row = page.locator(f'tr[data-id="{task_id}"]')
    expect(row).to_be_visible()
    expect(row).to_have_attribute("data-status", "success")
    assert page.errors == []


def test_filters_and_paging(page, server):
    """Status filter, search and server-side paging work together."""
    from playwright.sync_api import expect

    for i in range(30):
        server.add(jobs.succeed, i)
    failed = [server.add(jobs.fail, f"bad {i}") for i in range(4)]
    server.join()
    _open(page, server, "tasks")
    page.select_option("#page-size", "25")
    rows = page.locator("#task-table tbody tr[data-id]")
    expect(rows).to_have_count(25)
    page.click("#next")
    expect(rows).to_have_count(9)
    expect(page.locator("#page-info")).to_have_text("Page 2")
    page.click("#prev")
    expect(rows).to_have_count(25)
    page.select_option('#filters select[name="status"]', "failed")
    page.click('#filters button[type="submit"]')
    expect(rows).to_have_count(4)
    page.fill('#filters input[name="q"]', failed[0][:13])
    page.click('#filters button[type="submit"]')
    expect(rows).to_have_count(1)
    page.screenshot(path=str(IMAGES / "dashboard-tasks.png"))
    assert page.errors == []


def test_retry_from_detail_panel(page, server):
    """Opening a failed task and pressing Retry runs it again."""
    from playwright.sync_api import expect

    failed = server.add(jobs.log_and_fail, "card declined")
    server.join()
    _open(page, server, "tasks")
    page.locator(f'tr[data-id="{failed}"]').click()
    panel = page.locator("#detail")
    expect(panel).to_be_visible()
    expect(panel.locator(".error-text")).to_contain_text("card declined")
    expect(panel.locator(".logs")).to_contain_text("card declined")
    page.screenshot(path=str(IMAGES / "dashboard-detail.png"))
    page.click("#detail-retry")
    expect(page.locator("#toast")).to_contain_text("Retried")
    expect(page.locator("#detail-title")).to_have_text("admin_jobs:log_and_fail")
    server.join()
    audit = [
        e.action
        for e in asyncio.run_coroutine_threadsafe(server.admin.audit.entries(), server.loop).result(
            5
        )
    ]
    assert audit == ["retry"]
    assert page.errors == []


def test_xss_payloads_render_as_text(page, server):
    """Markup in args, errors, logs and tags is shown as text and never runs."""
    from playwright.sync_api import expect

    task_id = server.add(jobs.log_and_fail, jobs.XSS, tags={"x": jobs.XSS})
    server.join()
    _open(page, server, "tasks")
    row = page.locator(f'tr[data-id="{task_id}"]')
    expect(row).to_contain_text(jobs.XSS)
    row.click()
    expect(page.locator("#detail .args")).to_contain_text("<img src=x onerror=")
    expect(page.locator("#detail .logs")).to_contain_text(jobs.XSS)
    expect(page.locator("#detail .error-text")).to_contain_text(jobs.XSS)
    page.click('[data-view="failed"]')
    expect(page.locator("#failed-table")).to_contain_text(jobs.XSS)
    assert page.evaluate("window.__xss") is None
    assert page.locator("img[src=x]").count() == 0


def test_result_shows_in_detail_as_text(page, server):
    """A task's result appears in the detail panel as text: markup in it never runs."""
    from playwright.sync_api import expect

    task_id = server.add(jobs.succeed, {"html": jobs.XSS, "pages": 3})
    server.join()
    _open(page, server, "tasks")
    page.locator(f'tr[data-id="{task_id}"]').click()
    result = page.locator("#detail .result")
    expect(result).to_contain_text('"pages": 3')
    expect(result).to_contain_text("<img src=x onerror=")
    assert page.evaluate("window.__xss") is None
    assert page.errors == []


def test_dark_mode_and_queues(page, server):
    """The queues view edits live config; dark mode follows the toggle."""
    from playwright.sync_api import expect

    _open(page, server, "queues")
    page.click("#theme")
    row = page.locator('tr[data-queue="default"]')
    row.locator('input[name="concurrency"]').fill("0")
    row.locator("button").click()
    expect(page.locator("#toast")).to_contain_text("greater than or equal to 1")
    row.locator('input[name="concurrency"]').fill("4")
    row.locator("button").click()
    expect(page.locator("#toast")).to_contain_text("updated")
    assert server.manager.queue_stats()["default"]["concurrency"] == 4
    page.screenshot(path=str(IMAGES / "dashboard-queues-dark.png"))
    assert [e for e in page.errors if "status of 422" not in e] == []  # the refused save


def test_login_required_and_stream_refused(browser):
    """With auth, the dashboard asks for a login, the stream refuses anonymous clients, and
    signing in opens the live dashboard."""
    from playwright.sync_api import expect

    _need_chromium()
    errors: list[str] = []
    with _serve(auth=("admin", "s3cret"), secret_key="k" * 32) as server:
        context = browser.new_context()
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        anonymous = page.request.get(f"{server.url}/dashboard/stream")
        assert anonymous.status == 401
        page.goto(f"{server.url}/dashboard")
        expect(page).to_have_url(re.compile(r"/tasks/auth/login$"))
        page.screenshot(path=str(IMAGES / "login.png"))
        page.fill("#username", "admin")
        page.fill("#password", "wrong")
        page.click('button[type="submit"]')
        expect(page.locator("#login-error")).to_contain_text("Invalid")
        page.fill("#username", "admin")
        page.fill("#password", "s3cret")
        page.click('button[type="submit"]')
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        expect(page.locator("#live")).to_have_text("live")
        expect(page.locator("#user")).to_have_text("admin")
        context.close()
        assert errors == []


# ---- cross-site requests: a second origin (another port of 127.0.0.1: same site) ----------------


def _attacker(html: str) -> FastAPI:
    """A page on another origin: ``html`` at /."""
    from fastapi.responses import HTMLResponse

    app = FastAPI()

    @app.get("/")
    async def page() -> HTMLResponse:
        return HTMLResponse(html)

    return app


def _auto_post(action: str, fields: dict[str, str] | None = None) -> str:
    """A page that submits a form to ``action`` as soon as it loads."""
    inputs = "".join(f'<input name="{k}" value="{v}">' for k, v in (fields or {}).items())
    return (
        f'<form id="f" method="post" action="{action}">{inputs}</form>'
        "<script>document.getElementById('f').submit()</script>"
    )


def _audit(server: Server) -> list[str]:
    future = asyncio.run_coroutine_threadsafe(server.admin.audit.entries(), server.loop)
    return [entry.action for entry in future.result(5)]


def _app_with_cookie_auth() -> FastAPI:
    """An app whose own auth is a cookie (SameSite=Lax, the browsers' default), checked by the
    dependency given to TaskAdmin."""
    from fastapi.responses import RedirectResponse

    app = FastAPI()

    @app.get("/app-login")
    async def app_login() -> RedirectResponse:
        response = RedirectResponse("/tasks/dashboard#failed", status_code=303)
        response.set_cookie("app_session", "valid", httponly=True, samesite="lax")
        return response

    return app


def _require_app_cookie(request: Request) -> None:
    if request.cookies.get("app_session") != "valid":
        raise HTTPException(status_code=401, detail="app login needed")
    request.state.taskflow_user = "dana"


def test_cross_site_form_cannot_retry_under_the_apps_cookie_auth(browser):
    """With dependencies=[...] on the app's cookie, a form posted from another port carries the
    cookie but is refused (403) and retries nothing; the dashboard itself still retries."""
    from playwright.sync_api import expect

    _need_chromium()
    app = _app_with_cookie_auth()
    with _serve(app, dependencies=[Depends(_require_app_cookie)]) as server:
        failed = server.add(jobs.fail, "declined")
        server.join()
        evil = _auto_post(f"{server.url}/retry-failed?since=all")
        with _uvicorn(_attacker(evil)) as evil_port:
            context = browser.new_context()
            page = context.new_page()
            page.goto(server.url.removesuffix("/tasks") + "/app-login")
            expect(page.locator("body")).to_have_attribute("data-ready", "true")
            with page.expect_response(re.compile(r"/retry-failed")) as answer:
                page.goto(f"http://127.0.0.1:{evil_port}/")
            assert answer.value.status == 403
            assert _audit(server) == []
            page.goto(f"{server.url}/dashboard#tasks")
            page.locator(f'tr[data-id="{failed}"]').click()
            page.click("#detail-retry")
            expect(page.locator("#toast")).to_contain_text("Retried")
            assert _audit(server) == ["retry"]
            context.close()


def test_cross_site_login_and_logout_are_refused(browser):
    """A page on another port can neither sign the browser in as someone else nor sign it out;
    the dashboard's own Sign out ends the session for good."""
    from playwright.sync_api import expect

    _need_chromium()
    with _serve(auth=[("admin", "s3cret"), ("mallory", "m")], secret_key="k" * 32) as server:
        login = _auto_post(f"{server.url}/auth/login", {"username": "mallory", "password": "m"})
        logout = f'<img src="{server.url}/auth/logout">' + _auto_post(f"{server.url}/auth/logout")
        with _uvicorn(_attacker(login)) as login_port, _uvicorn(_attacker(logout)) as out_port:
            context = browser.new_context()
            page = context.new_page()
            with page.expect_response(re.compile(r"/auth/login$")) as answer:
                page.goto(f"http://127.0.0.1:{login_port}/")
            assert answer.value.status == 403
            assert context.cookies() == []
            page.goto(f"{server.url}/dashboard")
            page.fill("#username", "admin")
            page.fill("#password", "s3cret")
            page.click('button[type="submit"]')
            expect(page.locator("#user")).to_have_text("admin")
            stolen = context.cookies()
            with page.expect_response(re.compile(r"/auth/logout$")) as answer:
                page.goto(f"http://127.0.0.1:{out_port}/")
            assert answer.value.status in (403, 405)
            assert page.request.get(f"{server.url}/dashboard/config").status == 200
            page.goto(f"{server.url}/dashboard")
            expect(page.locator("#user")).to_have_text("admin")
            page.click("#logout")
            expect(page).to_have_url(re.compile(r"/tasks/auth/login$"))
            replay = browser.new_context()
            replay.add_cookies(stolen)
            assert replay.request.get(f"{server.url}/dashboard/config").status == 401
            replay.close()
            context.close()


def test_instances_view_lists_this_instance(page, server):
    """The instances view shows the live instance (id, pid) as text."""
    from playwright.sync_api import expect

    _open(page, server, "instances")
    row = page.locator(f'tr[data-instance="{server.manager.instance_id}"]')
    expect(row).to_contain_text(str(os.getpid()))
    expect(row.locator('[data-field="running"]')).to_have_text("0")
    page.screenshot(path=str(IMAGES / "dashboard-instances.png"))
    assert page.errors == []
