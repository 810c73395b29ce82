"""Bodies FastAPI's own validation handler cannot echo back (lone surrogates, NaN, 1e400) and
cursors that decode to nonsense are 422 with a JSON message, never a 500 or 503."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import pytest

from conftest import Env, running_admin

RAW_BODIES = [
    b'{"task_ids": ["\\ud800"]}',
    b'{"task_ids": [NaN]}',
    b'{"task_ids": [Infinity]}',
    b'{"task_ids": ["a"], "extra": -Infinity}',
    b'{"task_ids": "\\udfff"}',
]


@pytest.mark.parametrize("body", RAW_BODIES)
async def test_bulk_retry_with_unencodable_input_is_422(env: Env, body: bytes) -> None:
    """bulk-retry with a lone surrogate or NaN/Infinity answers 422 with a JSON detail."""
    response = await env.client.post(
        "/tasks/bulk-retry", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"]
    assert env.manager.metrics()["total"] == 0


@pytest.mark.parametrize(
    "body", [b'{"concurrency": 1e400}', b'{"max_size": NaN}', b'{"concurrency": "\\ud800"}']
)
async def test_queue_patch_with_unencodable_input_is_422(env: Env, body: bytes) -> None:
    """PATCH /tasks/queues/default with 1e400, NaN or a lone surrogate answers 422."""
    response = await env.client.patch(
        "/tasks/queues/default", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.fixture
async def redis_env(redis_url: str, redis_prefix: str) -> AsyncIterator[Env]:
    from fastapi_taskflow import RedisBackend

    backend = RedisBackend(redis_url, prefix=redis_prefix)
    async with running_admin({"snapshot_backend": backend}) as env:
        yield env


@pytest.mark.redis
@pytest.mark.parametrize("cursor", ["nan|x", "inf|x", "-inf|x", "1e400|x"])
async def test_a_cursor_that_decodes_to_no_number_is_422_on_redis(
    redis_env: Env, cursor: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A list cursor whose time is NaN or infinite is a 422 on Redis, with no ERROR logged."""
    response = await redis_env.client.get("/tasks", params={"cursor": _cursor(cursor)})
    assert response.status_code == 422, response.text
    assert "cursor" in response.json()["detail"]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
