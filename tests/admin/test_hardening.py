"""TaskAdmin hardening over HTTP: body limits, same-origin proof, sessions that end, the login
limiter, signatures and key sizes, redaction of progress and log fields, response headers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import admin_jobs as jobs
import httpx
import pytest
from fastapi import Depends, HTTPException, Request

from fastapi_taskflow import InMemoryLogger, TaskAdmin
from fastapi_taskflow.admin.auth import COOKIE_NAME
from fastapi_taskflow.admin.limiter import LoginLimiter
from fastapi_taskflow.admin.shared import SharedCounters
from fastapi_taskflow.backends import memory
from fastapi_taskflow.errors import ConfigurationError

SECRET = "s" * 32
AUTH = {"auth": ("admin", "pw"), "secret_key": SECRET}
PASSWORD = "hunter2-very-secret"


async def _login(client, username="admin", password="pw"):
    return await client.post("/tasks/auth/login", json={"username": username, "password": password})


async def _bearer(client, username="admin", password="pw") -> dict[str, str]:
    token = (await _login(client, username, password)).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


def _client_at(env, address: str) -> httpx.AsyncClient:
    """A client of the same app seen from another address."""
    transport = httpx.ASGITransport(app=env.asgi, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


# ---- 1. bounded bodies, auth before parsing ----------------------------------------------------


async def test_declared_oversized_body_is_413_before_auth(make_env):
    """A Content-Length over the cap is refused with 413 before credentials are looked at."""
    async with make_env(**AUTH) as env:
        big = b"x" * (300 * 1024)
        response = await env.client.post("/tasks/bulk-retry", content=big)
        assert response.status_code == 413
        assert "over" in response.json()["detail"]
        login = await env.client.post("/tasks/auth/login", content=b"u" * (20 * 1024))
        assert login.status_code == 413


async def test_streamed_login_body_is_cut_at_the_cap(make_env):
    """A login body without Content-Length is read only up to its cap, then 413."""

    async def chunks():
        for _ in range(64):
            yield b"a" * 1024

    async with make_env(**AUTH) as env:
        response = await env.client.post(
            "/tasks/auth/login",
            content=chunks(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 413


async def test_body_is_not_parsed_before_auth(make_env):
    """Without credentials a body route answers 401, not a parse error: auth runs first."""
    async with make_env(**AUTH) as env:
        response = await env.client.post(
            "/tasks/bulk-retry",
            content=b"{not json" * 1000,
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 401


async def test_bad_body_after_auth_is_still_a_422(make_env):
    """Authenticated, a body that is not valid JSON is a 422 naming the body."""
    async with make_env(**AUTH) as env:
        headers = await _bearer(env.client)
        response = await env.client.post("/tasks/bulk-retry", content=b"\x80{", headers=headers)
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"][0] == "body"
        short = await env.client.post("/tasks/bulk-retry", json={"task_ids": []}, headers=headers)
        assert short.status_code == 422
        for body in (
            b'{"concurrency": NaN}',
            b'{"concurrency": 1e400}',
            b'{"max_size": "\\ud800"}',
        ):
            odd = await env.client.patch(
                "/tasks/queues/default",
                content=body,
                headers={**headers, "Content-Type": "application/json"},
            )
            assert odd.status_code == 422, body
            assert odd.json()["detail"][0]["loc"][0] == "body"


# ---- 2. same-origin proof in every mode --------------------------------------------------------


def _cookie_dependency(request: Request) -> None:
    """The app's own cookie auth."""
    if request.cookies.get("app_session") != "valid":
        raise HTTPException(status_code=401, detail="app login needed")
    request.state.taskflow_user = "dana"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Origin": "http://testserver:8001"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "cross-site", "X-CSRF-Token": "x"},
    ],
)
async def test_own_cookie_auth_changes_need_same_origin_proof(make_env, headers):
    """With dependencies=[...] on a cookie, a change without proof of this origin is 403."""
    async with make_env(dependencies=[Depends(_cookie_dependency)]) as env:
        env.add(jobs.fail, "x")
        await env.manager.join(timeout=5)
        client = _client_at(env, "127.0.0.1")
        async with client:
            client.cookies.set("app_session", "valid")
            response = await client.post("/tasks/retry-failed?since=all", headers=headers)
            assert response.status_code == 403, response.text
            assert (await client.get("/tasks/audit")).json() == []


@pytest.mark.parametrize(
    "headers",
    [
        {"X-CSRF-Token": "anything"},
        {"Sec-Fetch-Site": "same-origin"},
        {"Origin": "http://testserver"},
    ],
)
async def test_own_cookie_auth_changes_pass_with_proof(make_env, headers):
    """The custom header, Sec-Fetch-Site: same-origin or this Origin let a change through."""
    async with make_env(dependencies=[Depends(_cookie_dependency)]) as env:
        client = _client_at(env, "127.0.0.1")
        async with client:
            client.cookies.set("app_session", "valid")
            response = await client.post("/tasks/retry-failed?since=all", headers=headers)
            assert response.status_code == 200, response.text
            assert (await client.get("/tasks/audit")).json()[0]["actor"] == "dana"


async def test_open_admin_changes_need_same_origin_proof(make_env):
    """With no auth at all, a change still needs proof of this origin (any page could post)."""
    async with make_env() as env:
        client = _client_at(env, "127.0.0.1")
        async with client:
            refused = await client.delete("/tasks/history?all=true")
            assert refused.status_code == 403
            assert "X-CSRF-Token" in refused.json()["detail"]
            ok = await client.delete("/tasks/history?all=true", headers={"X-CSRF-Token": "1"})
            assert ok.status_code == 200


async def test_session_cookie_from_another_origin_is_refused_even_with_the_token(make_env):
    """A browser saying another origin is refused with the session cookie, token or not."""
    async with make_env(**AUTH) as env:
        await env.client.post("/tasks/auth/login", data={"username": "admin", "password": "pw"})
        csrf = (await env.client.get("/tasks/dashboard/config")).json()["csrf_token"]
        response = await env.client.post(
            "/tasks/retry-failed",
            headers={"X-CSRF-Token": csrf, "Sec-Fetch-Site": "same-site"},
        )
        assert response.status_code == 403


# ---- 3. redaction of progress messages and log fields -------------------------------------------


async def test_progress_messages_and_log_fields_are_scrubbed_by_value(make_env, open_sse):
    """A secret argument echoed in set_progress or in a task_log field of another name is
    masked in the store, the API, the streams and the log observers."""
    observer = InMemoryLogger()
    options = {"redact": ["password"], "loggers": [observer]}
    async with make_env(manager_options=options, display_func_args=True) as env:
        env.manager.task()(jobs.report_secret)
        task_id = env.add(jobs.report_secret, PASSWORD)
        await env.manager.join(timeout=5)
        record = await env.manager.get_record(task_id)
        assert record.progress_message == "signing in with ***"
        listed = (await env.client.get("/tasks")).json()
        detail = (await env.client.get(f"/tasks/{task_id}")).json()
        async with open_sse(env.asgi, f"/tasks/{task_id}/events") as (_, stream):
            events = await stream.next()
        assert PASSWORD not in json.dumps([listed, detail, events])
        assert detail["progress_message"] == "signing in with ***"
        await env.manager.join(timeout=5)
        [event] = [e for e in observer.log_events if e.task_id == task_id]
        assert event.extra == {"detail": "pw=***", "nested": {"items": ["***"]}}


# ---- 4. sessions that end -------------------------------------------------------------------


async def test_cookie_replayed_after_logout_is_refused(make_env):
    """After logout the same cookie no longer reads or writes."""
    async with make_env(**AUTH) as env:
        await env.client.post("/tasks/auth/login", data={"username": "admin", "password": "pw"})
        cookie = env.client.cookies[COOKIE_NAME]
        csrf = (await env.client.get("/tasks/dashboard/config")).json()["csrf_token"]
        out = await env.client.post("/tasks/auth/logout", headers={"X-CSRF-Token": csrf})
        assert out.status_code == 303
        replay = {"Cookie": f"{COOKIE_NAME}={cookie}", "X-CSRF-Token": csrf}
        assert (await env.client.get("/tasks", headers=replay)).status_code == 401
        write = await env.client.post("/tasks/retry-failed", headers=replay)
        assert write.status_code == 401


async def test_bearer_logout_ends_that_token_only(make_env):
    """POST /auth/logout with a bearer token ends it; another session of the user lives on."""
    async with make_env(**AUTH) as env:
        first, second = await _bearer(env.client), await _bearer(env.client)
        assert (await env.client.post("/tasks/auth/logout", headers=first)).status_code == 303
        assert (await env.client.get("/tasks", headers=first)).status_code == 401
        assert (await env.client.get("/tasks", headers=second)).status_code == 200


async def test_removed_user_and_changed_password_end_sessions(make_env):
    """A token of a user no longer configured, or whose password changed, is refused by an
    admin with the same secret_key."""
    async with make_env(auth=[("admin", "pw"), ("bob", "b")], secret_key=SECRET) as first:
        admin_token = await _bearer(first.client)
        bob_token = await _bearer(first.client, "bob", "b")
    async with make_env(auth=[("admin", "new-pw")], secret_key=SECRET) as second:
        assert (await second.client.get("/tasks", headers=bob_token)).status_code == 401
        assert (await second.client.get("/tasks", headers=admin_token)).status_code == 401
    async with make_env(auth=[("admin", "pw")], secret_key=SECRET) as same:
        assert (await same.client.get("/tasks", headers=admin_token)).status_code == 200


async def test_custom_backend_credential_version_ends_sessions(make_env):
    """A TaskAuthBackend's credential_version: a new value, or None, ends the user's sessions."""
    from fastapi_taskflow.admin import TaskAuthBackend

    class Users(TaskAuthBackend):
        version: str | None = "v1"

        def authenticate_user(self, username: str, password: str) -> bool:
            return (username, password) == ("eve", "pw")

        async def credential_version(self, username: str) -> str | None:
            return self.version

    users = Users()
    async with make_env(auth=users, secret_key=SECRET) as env:
        headers = await _bearer(env.client, "eve", "pw")
        assert (await env.client.get("/tasks", headers=headers)).status_code == 200
        users.version = "v2"
        assert (await env.client.get("/tasks", headers=headers)).status_code == 401
        users.version = None
        fresh = await _bearer(env.client, "eve", "pw")
        assert (await env.client.get("/tasks", headers=fresh)).status_code == 401


async def test_logout_on_one_instance_ends_the_session_on_another(make_env, tmp_path):
    """Two admins on one SQLite file: a session logged out on one is refused by the other."""
    options = {"snapshot_db": str(tmp_path / "tasks.db")}
    async with (
        make_env(manager_options=options, **AUTH) as first,
        make_env(manager_options=options, **AUTH) as second,
    ):
        headers = await _bearer(first.client)
        assert (await second.client.get("/tasks", headers=headers)).status_code == 200
        await first.client.post("/tasks/auth/logout", headers=headers)
        assert (await first.client.get("/tasks", headers=headers)).status_code == 401
        # The other instance trusts a session it found live for up to a second.
        deadline = time.monotonic() + 5
        while (await second.client.get("/tasks", headers=headers)).status_code != 401:
            assert time.monotonic() < deadline, "the other instance still accepts the session"
            await _pause()


def test_default_token_expiry_is_a_working_day():
    """Sessions last 8 hours unless token_expiry says otherwise."""
    from fastapi import FastAPI

    from fastapi_taskflow import TaskManager

    admin = TaskAdmin(FastAPI(), TaskManager(), **AUTH, manage_lifecycle=False)
    assert admin.auth.token_expiry == 8 * 3600


# ---- 5. the login limiter ---------------------------------------------------------------------


async def test_a_valid_login_does_not_clear_the_address_counter(make_env):
    """Guesses at other users keep counting for the address across the attacker's own valid
    login: after ten failures the address waits, right password or not."""
    async with make_env(**AUTH) as env:
        for i in range(9):
            assert (await _login(env.client, f"user{i}", "guess")).status_code == 401
        assert (await _login(env.client)).status_code == 200
        assert (await _login(env.client, "user9", "guess")).status_code == 401
        blocked = await _login(env.client)
        assert blocked.status_code == 429
        assert int(blocked.headers["Retry-After"]) >= 1


async def test_guesses_from_one_address_do_not_lock_the_user_out_elsewhere(make_env):
    """Five failures for a user from one address block that address for that user only."""
    async with make_env(**AUTH) as env, _client_at(env, "10.0.0.1") as attacker:
        for _ in range(5):
            assert (await _login(attacker, password="guess")).status_code == 401
        assert (await _login(attacker)).status_code == 429
        async with _client_at(env, "10.0.0.2") as user:
            assert (await _login(user)).status_code == 200


async def test_usernames_are_casefolded_for_the_limit(make_env):
    """Admin, ADMIN and admin share one counter: five mixed-case failures block admin from
    that address, while another user of the same address still signs in."""
    async with make_env(auth=[("admin", "pw"), ("bob", "b")], secret_key=SECRET) as env:
        for name in ("Admin", "ADMIN", "admin", "aDmin", "ADMIn"):
            assert (await _login(env.client, name, "guess")).status_code == 401
        assert (await _login(env.client)).status_code == 429
        assert (await _login(env.client, "bob", "b")).status_code == 200


def test_long_usernames_make_short_counter_keys():
    """A 10,000-character username is counted under a digest, still casefolded."""
    long_name = "A" * 10_000
    keys = [key for key, _ in LoginLimiter.keys("10.0.0.1", long_name)]
    assert max(len(key) for key in keys) < 120
    assert keys == [key for key, _ in LoginLimiter.keys("10.0.0.1", long_name.lower())]


async def test_failed_logins_are_counted_across_instances(make_env, tmp_path):
    """Two admins on one SQLite file share the limit: failures on one block on the other."""
    options = {"snapshot_db": str(tmp_path / "tasks.db")}
    async with (
        make_env(manager_options=options, **AUTH) as first,
        make_env(manager_options=options, **AUTH) as second,
    ):
        for _ in range(5):
            assert (await _login(first.client, password="guess")).status_code == 401
        assert (await _login(second.client)).status_code == 429


async def test_the_wait_grows_with_each_further_failure(make_env):
    """Past the free failures the block doubles with every failure after it ends."""
    async with make_env() as env:
        limiter = LoginLimiter(SharedCounters(lambda: env.manager), window=0.4, max_delay=10)
        keys = limiter.keys("10.0.0.9", "admin")
        for _ in range(5):
            await limiter.failed(keys)
        first = (await limiter.counters.get("login-block:" + keys[1][0]))[1]
        deadline = time.monotonic() + 5
        while await limiter.retry_after(keys):
            assert time.monotonic() < deadline, "the block never ended"
            await _pause()
        await limiter.failed(keys)
        second = (await limiter.counters.get("login-block:" + keys[1][0]))[1]
        assert 0 < first <= 0.4 < second <= 0.8
        assert limiter.delay(5, 5) == 0.4
        assert limiter.delay(40, 5) == 10


async def _pause() -> None:
    import asyncio

    await asyncio.sleep(0.02)


async def test_a_flood_of_new_keys_does_not_evict_a_block(make_env, monkeypatch):
    """With the in-process table full of one-off keys, a blocked user stays blocked."""
    monkeypatch.setattr(memory, "MAX_COUNTERS", 100)
    async with make_env() as env:
        limiter = LoginLimiter(SharedCounters(lambda: env.manager))
        victim = limiter.keys("10.0.0.1", "admin")
        for _ in range(5):
            await limiter.failed(victim)
        for i in range(500):
            await limiter.failed(limiter.keys(f"10.1.{i // 250}.{i % 250}", f"user{i}"))
        assert await limiter.retry_after(victim) > 0


# ---- 6. non-ASCII signatures -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"), [("/tasks", 401), ("/tasks/dashboard", 303), ("/tasks/x/events", 401)]
)
@pytest.mark.parametrize("how", ["cookie", "bearer"])
async def test_non_ascii_signature_is_refused_not_a_500(make_env, path, expected, how):
    """A token whose signature has non-ASCII characters is refused like any bad token."""
    token = "eyJ1IjoiYWRtaW4ifQ.sig\xe9nature"
    async with make_env(**AUTH) as env:
        if how == "cookie":
            headers = {"Cookie": f"{COOKIE_NAME}={token}".encode("latin-1")}
        else:
            headers = {"Authorization": f"Bearer {token}".encode("latin-1")}
        response = await env.client.get(path, headers=headers)
        assert response.status_code == expected


# ---- 7. logout and login across sites -----------------------------------------------------------


async def test_logout_is_a_post_needing_the_csrf_token(make_env):
    """GET logout is gone (405); a POST with the cookie but without the token is 403 and the
    session lives on."""
    async with make_env(**AUTH) as env:
        await env.client.post("/tasks/auth/login", data={"username": "admin", "password": "pw"})
        assert (await env.client.get("/tasks/auth/logout")).status_code == 405
        assert (await env.client.post("/tasks/auth/logout")).status_code == 403
        assert (await env.client.get("/tasks")).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}, {"Origin": "http://evil"}],
)
async def test_login_from_another_origin_is_refused(make_env, headers):
    """A login form posted from another origin signs nobody in (403, no cookie)."""
    async with make_env(**AUTH) as env:
        response = await env.client.post(
            "/tasks/auth/login", data={"username": "admin", "password": "pw"}, headers=headers
        )
        assert response.status_code == 403
        assert "set-cookie" not in response.headers


# ---- 8. key size and token lifetime --------------------------------------------------------------


@pytest.mark.parametrize("key", ["k" * 31, b"k" * 16, "é" * 15])
def test_short_secret_keys_are_refused(key):
    """secret_key needs at least 32 bytes."""
    from fastapi import FastAPI

    from fastapi_taskflow import TaskManager

    with pytest.raises(ConfigurationError, match="at least 32 bytes"):
        TaskAdmin(FastAPI(), TaskManager(), auth=("a", "b"), secret_key=key)


async def test_token_living_beyond_token_expiry_is_refused(make_env):
    """A well-signed token whose exp lies past now + token_expiry was not made here: 401."""
    async with make_env(**AUTH) as env:
        good = (await _login(env.client)).json()["access_token"]
        payload = json.loads(base64.urlsafe_b64decode(good.split(".")[0] + "=="))
        payload["exp"] = int(time.time()) + 10 * 365 * 86400
        forged = _sign(env.admin, payload)
        response = await env.client.get("/tasks", headers={"Authorization": f"Bearer {forged}"})
        assert response.status_code == 401


def _sign(admin: TaskAdmin, payload: dict) -> str:
    """A token for ``payload`` signed with the admin's own key (a key recovered offline)."""
    key = hmac.new(SECRET.encode(), b"fastapi-taskflow session v1", hashlib.sha256).digest()
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    signature = hmac.new(key, body.encode(), hashlib.sha256).digest()
    return f"{body}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


# ---- the smaller ones -----------------------------------------------------------------------


async def test_json_responses_are_nosniff(make_env):
    """Every admin JSON answer, refusals included, carries X-Content-Type-Options: nosniff."""
    async with make_env(**AUTH) as env:
        headers = await _bearer(env.client)
        for response in (
            await env.client.get("/tasks", headers=headers),
            await env.client.get("/tasks/missing", headers=headers),
            await env.client.get("/tasks"),
            await _login(env.client, password="bad"),
        ):
            assert response.headers["x-content-type-options"] == "nosniff"


async def test_one_task_is_not_cached(env):
    """GET /tasks/{id} answers Cache-Control: no-store (it can carry a revealed error)."""
    task_id = env.add(jobs.succeed, 1)
    await env.manager.join(timeout=5)
    response = await env.client.get(f"/tasks/{task_id}")
    assert response.headers["cache-control"] == "no-store"


async def test_next_link_ignores_the_host_header(env):
    """The Link header is a path from the mount point, whatever Host the client sent."""
    for i in range(3):
        env.add(jobs.succeed, i)
    await env.manager.join(timeout=5)
    response = await env.client.get("/tasks?limit=1", headers={"Host": "evil.example"})
    link = response.headers["link"]
    assert link.startswith("</tasks?limit=1&cursor=")
    assert "evil" not in link


async def test_event_stream_ids_are_capped(env):
    """An id longer than 200 characters on /{id}/events is a 422, not a backend lookup."""
    response = await env.client.get("/tasks/" + "x" * 201 + "/events")
    assert response.status_code == 422


async def test_admin_routes_stay_out_of_the_public_openapi(env):
    """By default the app's /openapi.json does not list the admin routes."""
    paths = (await env.client.get("/openapi.json")).json().get("paths", {})
    assert not [p for p in paths if p.startswith("/tasks")]


async def test_read_only_users_may_read_but_not_change(make_env):
    """A user in read_only_users reads the API, gets 403 on changes and a read-only dashboard;
    other users change things as before."""
    options = {"auth": [("admin", "pw"), ("viewer", "v")], "secret_key": SECRET}
    async with make_env(read_only_users=["viewer"], **options) as env:
        viewer = await _bearer(env.client, "viewer", "v")
        admin = await _bearer(env.client)
        assert (await env.client.get("/tasks", headers=viewer)).status_code == 200
        refused = await env.client.delete("/tasks/history?all=true", headers=viewer)
        assert refused.status_code == 403
        config = (await env.client.get("/tasks/dashboard/config", headers=viewer)).json()
        assert config["read_only"] is True
        ok = await env.client.delete("/tasks/history?all=true", headers=admin)
        assert ok.status_code == 200


async def test_backend_without_counters_falls_back_to_this_process(caplog):
    """A backend lacking the counter primitives: counters live in the process, with a warning
    said once."""
    import logging

    from fastapi_taskflow.backends.base import TaskBackend

    class OldBackend(memory.MemoryBackend):
        _counter_add = TaskBackend._counter_add
        _counter_get = TaskBackend._counter_get
        _counter_delete = TaskBackend._counter_delete

    class Manager:
        backend = OldBackend()

    caplog.set_level(logging.WARNING, logger="fastapi_taskflow.admin")
    counters = SharedCounters(lambda: Manager())
    assert await counters.add("k", 2, 30) == 2
    assert (await counters.get("k"))[0] == 2
    await counters.delete("k")
    assert await counters.get("k") == (0, 0.0)
    assert len([r for r in caplog.records if "no shared counters" in r.getMessage()]) == 1


# ---- 8. open streams end with their session ----------------------------------------------------


async def test_an_open_stream_ends_when_its_session_is_logged_out(make_env, open_sse):
    """A dashboard stream opened with a session closes once that session is logged out; a
    stream of another, live session stays open."""
    async with make_env(**AUTH) as env:
        ended_session = await _bearer(env.client)
        live_session = await _bearer(env.client)
        path = "/tasks/dashboard/stream"
        async with (
            open_sse(env.asgi, path, ended_session) as (status, ended_stream),
            open_sse(env.asgi, path, live_session) as (_, live_stream),
        ):
            assert status == 200
            assert (await ended_stream.next())[0] == "hello"
            assert (await live_stream.next())[0] == "hello"
            assert await env.admin.hub.end_lapsed_sessions() == 0

            await env.client.post("/tasks/auth/logout", headers=ended_session)
            assert await env.admin.hub.end_lapsed_sessions() == 1

            assert await ended_stream.next() is None
            env.add(jobs.succeed)
            assert (await live_stream.until(lambda name, data: name == "delta")) is not None


async def test_a_stream_opened_with_an_api_token_is_not_a_session(make_env, open_sse):
    """API tokens have no logout: their streams are left open by the session check."""
    async with make_env(api_tokens={"ci": "t" * 32}) as env:
        headers = {"Authorization": "Bearer " + "t" * 32}
        async with open_sse(env.asgi, "/tasks/dashboard/stream", headers) as (status, stream):
            assert status == 200
            assert (await stream.next())[0] == "hello"
            assert await env.admin.hub.end_lapsed_sessions() == 0
