"""Auth: every route refuses without credentials; cookies, CSRF, bearer tokens, rate limits."""

from __future__ import annotations

import admin_jobs as jobs
import pytest
from fastapi import Depends, HTTPException, Request

from fastapi_taskflow.admin import TaskAuthBackend
from fastapi_taskflow.admin.auth import COOKIE_NAME, SessionSigner

SECRET = "s" * 32
AUTH = {"auth": ("admin", "pw"), "secret_key": SECRET}

PROTECTED = [
    ("GET", "/tasks"),
    ("GET", "/tasks/metrics"),
    ("GET", "/tasks/metrics/prometheus"),
    ("GET", "/tasks/queues"),
    ("GET", "/tasks/audit"),
    ("GET", "/tasks/registry"),
    ("GET", "/tasks/some-id"),
    ("GET", "/tasks/dashboard/config"),
    ("GET", "/tasks/dashboard/stream"),
    ("GET", "/tasks/some-id/events"),
    ("POST", "/tasks/some-id/retry"),
    ("POST", "/tasks/some-id/cancel"),
    ("POST", "/tasks/bulk-retry"),
    ("POST", "/tasks/retry-failed"),
    ("DELETE", "/tasks/history?all=true"),
    ("PATCH", "/tasks/queues/default"),
]


async def _login(env, username="admin", password="pw"):
    credentials = {"username": username, "password": password}
    return await env.client.post("/tasks/auth/login", json=credentials)


async def _form_login(env):
    return await env.client.post("/tasks/auth/login", data={"username": "admin", "password": "pw"})


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_every_route_refuses_without_credentials(make_env, method, path):
    """With auth on, each API route and stream answers 401 with no data."""
    async with make_env(**AUTH) as env:
        env.add(jobs.succeed, "secret-value")
        await env.manager.join(timeout=5)
        response = await env.client.request(method, path, json={"task_ids": ["x"]})
        assert response.status_code == 401
        assert response.json() == {"detail": "Not authenticated"}


async def test_dashboard_redirects_to_login(make_env):
    """The dashboard page sends an anonymous browser to the login page."""
    async with make_env(**AUTH) as env:
        response = await env.client.get("/tasks/dashboard")
        assert response.status_code == 303
        assert response.headers["location"] == "/tasks/auth/login"
        login = await env.client.get("/tasks/auth/login")
        assert login.status_code == 200
        assert "<form" in login.text


async def test_json_login_gives_a_bearer_token(make_env):
    """POST /auth/login with JSON returns a bearer token that opens the API."""
    async with make_env(**AUTH) as env:
        token = (await _login(env)).json()["access_token"]
        response = await env.client.get("/tasks", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
        bad = await env.client.get("/tasks", headers={"Authorization": f"Bearer {token}x"})
        assert bad.status_code == 401


async def test_bearer_needs_no_csrf(make_env):
    """Bearer-authenticated calls change things without a CSRF token (no ambient cookie)."""
    async with make_env(**AUTH) as env:
        token = (await _login(env)).json()["access_token"]
        response = await env.client.patch(
            "/tasks/queues/default",
            json={"concurrency": 2},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 200
        audit = await env.client.get("/tasks/audit", headers={"Authorization": f"Bearer {token}"})
        assert audit.json()[0]["actor"] == "admin"


async def test_wrong_password_is_401(make_env):
    """A wrong password is refused with a JSON 401."""
    async with make_env(**AUTH) as env:
        response = await _login(env, password="nope")
        assert response.status_code == 401
        assert "access_token" not in response.json()


@pytest.mark.parametrize("body", [{}, {"username": "admin"}, {"username": 1, "password": "pw"}, []])
async def test_malformed_login_is_422(make_env, body):
    """A login body without string credentials is a 422."""
    async with make_env(**AUTH) as env:
        response = await env.client.post("/tasks/auth/login", json=body)
        assert response.status_code == 422


async def test_login_rate_limited(make_env):
    """After five failures from one address, logins are refused with 429 and Retry-After."""
    async with make_env(**AUTH) as env:
        for _ in range(5):
            assert (await _login(env, password="bad")).status_code == 401
        blocked = await _login(env)
        assert blocked.status_code == 429
        assert int(blocked.headers["Retry-After"]) >= 1


async def test_form_login_sets_a_strict_cookie(make_env):
    """The form login sets an HttpOnly, SameSite=Strict cookie scoped to the admin path."""
    async with make_env(**AUTH) as env:
        response = await _form_login(env)
        assert response.status_code == 303
        assert response.headers["location"] == "/tasks/dashboard"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE_NAME}=")
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        assert "Path=/tasks" in cookie
        assert "Secure" not in cookie
        page = await env.client.get("/tasks/dashboard")
        assert page.status_code == 200


async def test_cookie_is_secure_over_https(make_env):
    """Served over HTTPS, the session cookie is Secure."""
    async with make_env(base_url="https://testserver", **AUTH) as env:
        cookie = (await _form_login(env)).headers["set-cookie"]
        assert "Secure" in cookie


async def test_failed_form_login_redirects_with_error(make_env):
    """A failed form login goes back to the login page with an error code."""
    async with make_env(**AUTH) as env:
        response = await env.client.post(
            "/tasks/auth/login", data={"username": "admin", "password": "bad"}
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/tasks/auth/login?error=invalid"


async def test_cookie_changes_need_csrf(make_env):
    """With the cookie, a change without the CSRF token is 403; with it, it works."""
    async with make_env(**AUTH) as env:
        await _form_login(env)
        refused = await env.client.patch("/tasks/queues/default", json={"concurrency": 2})
        assert refused.status_code == 403
        wrong = await env.client.patch(
            "/tasks/queues/default", json={"concurrency": 2}, headers={"X-CSRF-Token": "nope"}
        )
        assert wrong.status_code == 403
        csrf = (await env.client.get("/tasks/dashboard/config")).json()["csrf_token"]
        ok = await env.client.patch(
            "/tasks/queues/default", json={"concurrency": 2}, headers={"X-CSRF-Token": csrf}
        )
        assert ok.status_code == 200
        assert env.manager.queue_stats()["default"]["concurrency"] == 2


async def test_logout_clears_the_cookie(make_env):
    """Logout (a POST with the CSRF token) expires the cookie and the next API call is refused."""
    async with make_env(**AUTH) as env:
        await _form_login(env)
        csrf = (await env.client.get("/tasks/dashboard/config")).json()["csrf_token"]
        response = await env.client.post("/tasks/auth/logout", headers={"X-CSRF-Token": csrf})
        assert response.status_code == 303
        assert 'taskflow_session=""' in response.headers["set-cookie"]
        assert (await env.client.get("/tasks")).status_code == 401


async def test_shared_secret_sessions_work_across_workers(make_env):
    """A token signed by one admin is accepted by another with the same secret_key."""
    async with make_env(**AUTH) as first, make_env(**AUTH) as second:
        token = (await _login(first)).json()["access_token"]
        response = await second.client.get("/tasks", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200


def test_expired_and_tampered_tokens_rejected():
    """The signer refuses expired, tampered and foreign tokens."""
    signer = SessionSigner(SECRET, lifetime=60)
    token, csrf = signer.issue("admin", now=1000.0)
    assert signer.verify(token, now=1001.0).csrf == csrf
    assert signer.verify(token, now=2000.0) is None
    body, sig = token.split(".")
    assert signer.verify(body + "A." + sig, now=1001.0) is None
    assert SessionSigner("t" * 32, lifetime=60).verify(token, now=1001.0) is None
    assert signer.verify("garbage", now=1001.0) is None


async def test_api_tokens(make_env):
    """Static api_tokens open the API for scripts and name the actor."""
    async with make_env(api_tokens={"ci": "t" * 24}, **AUTH) as env:
        headers = {"Authorization": "Bearer " + "t" * 24}
        await env.client.patch("/tasks/queues/default", json={"max_size": 9}, headers=headers)
        audit = (await env.client.get("/tasks/audit", headers=headers)).json()
        assert audit[0]["actor"] == "ci"


async def test_custom_async_backend(make_env):
    """An async TaskAuthBackend decides logins; one that raises refuses instead of a 500."""

    class Backend(TaskAuthBackend):
        async def authenticate_user(self, username: str, password: str) -> bool:
            if username == "crash":
                raise RuntimeError("db down")
            return (username, password) == ("bob", "pw2")

    async with make_env(auth=Backend(), secret_key=SECRET) as env:
        assert (await _login(env, "bob", "pw2")).status_code == 200
        assert (await _login(env, "bob", "nope")).status_code == 401
        assert (await _login(env, "crash", "x")).status_code == 401


async def test_list_of_pairs(make_env):
    """auth accepts a list of (username, password) pairs."""
    async with make_env(auth=[("a", "1"), ("b", "2")], secret_key=SECRET) as env:
        assert (await _login(env, "b", "2")).status_code == 200
        assert (await _login(env, "a", "2")).status_code == 401


async def test_own_dependency_guards_everything(make_env, open_sse):
    """dependencies=[...] run on every admin route, the streams included."""

    def require_admin(request: Request) -> None:
        if request.headers.get("x-role") != "admin":
            raise HTTPException(status_code=403, detail="admins only")
        request.state.taskflow_user = "carol"

    async with make_env(dependencies=[Depends(require_admin)]) as env:
        assert (await env.client.get("/tasks")).status_code == 403
        assert (await env.client.get("/tasks/dashboard")).status_code == 403
        async with open_sse(env.asgi, "/tasks/dashboard/stream") as (status, _):
            assert status == 403
        headers = {"x-role": "admin"}
        assert (await env.client.get("/tasks", headers=headers)).status_code == 200
        await env.client.patch("/tasks/queues/default", json={"max_size": 4}, headers=headers)
        audit = (await env.client.get("/tasks/audit", headers=headers)).json()
        assert audit[0]["actor"] == "carol"


async def test_stream_refused_without_login_and_opens_with_it(make_env, open_sse):
    """The dashboard stream is 401 anonymously and streams once logged in."""
    async with make_env(**AUTH) as env:
        async with open_sse(env.asgi, "/tasks/dashboard/stream") as (status, stream):
            assert status == 401
            assert b"Not authenticated" in (await _drain(stream))
        token = (await _login(env)).json()["access_token"]
        headers = {"authorization": f"Bearer {token}"}
        async with open_sse(env.asgi, "/tasks/dashboard/stream", headers) as (status, stream):
            assert status == 200
            assert (await stream.next())[0] == "hello"


async def _drain(stream) -> bytes:
    while await stream.next(timeout=2) is not None:
        pass
    return stream.raw


async def test_login_without_auth_configured(env):
    """With no auth, the login page leads to the dashboard and POST login is a 404."""
    assert (await env.client.get("/tasks/auth/login")).status_code == 303
    assert (await _login(env)).status_code == 404
