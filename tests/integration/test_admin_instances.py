"""TaskAdmin on two uvicorn processes sharing one redis-server: one login limit, and a session
logged out on one instance is refused by the other."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from processes import AppProcess, wait_for

from servers import RedisServer

pytestmark = pytest.mark.slow

LOGIN = "/tasks/auth/login"


@pytest.fixture(scope="module")
def instances(redis_server: RedisServer) -> Iterator[tuple[str, str]]:
    """The base URLs of two instances of admin_app.py on one Redis, for the module."""
    redis_server.start()
    env = {"TF_REDIS": f"{redis_server.url}|tftest-{uuid.uuid4().hex[:12]}"}
    first = AppProcess(env, app="admin_app:app").start()
    try:
        second = AppProcess(env, app="admin_app:app").start()
        try:
            yield first.url, second.url
        finally:
            second.stop()
    finally:
        first.stop()


def test_failed_logins_on_one_process_block_on_the_other(instances: tuple[str, str]) -> None:
    """Five failures against one process make the other answer 429 for that user."""
    first, second = instances
    for _ in range(5):
        wrong = httpx.post(first + LOGIN, json={"username": "ops", "password": "guess"})
        assert wrong.status_code == 401
    blocked = httpx.post(second + LOGIN, json={"username": "OPS", "password": "pw2"})
    assert blocked.status_code == 429
    assert int(blocked.headers["Retry-After"]) >= 1


def test_logout_on_one_process_ends_the_session_on_the_other(instances: tuple[str, str]) -> None:
    """A bearer session works on both processes until it logs out on one."""
    first, second = instances
    token = httpx.post(first + LOGIN, json={"username": "admin", "password": "pw"}).json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    assert httpx.get(second + "/tasks", headers=headers).status_code == 200
    assert httpx.post(first + "/tasks/auth/logout", headers=headers).status_code == 303
    assert httpx.get(first + "/tasks", headers=headers).status_code == 401
    # The other process trusts a session it found live for up to a second.
    wait_for(
        lambda: httpx.get(second + "/tasks", headers=headers).status_code == 401,
        5,
        "the other process refuses the ended session",
    )
