"""RedisBackend specifics beyond the contract: URLs, errors, key layout, TTLs, restarts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from fastapi_taskflow.backends.base import RecordQuery
from fastapi_taskflow.backends.redis import RedisBackend, mask_url
from fastapi_taskflow.errors import BackendError
from fastapi_taskflow.models import TaskRecord, TaskStatus
from servers import RedisServer, free_port


@pytest.fixture
async def backend(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(redis_url, prefix=redis_prefix, socket_timeout=1.0)
    await backend.open()
    yield backend
    await backend.close()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://:s3cret@host:6380/2", "redis://:***@host:6380/2"),
        ("rediss://user:s3cret@host/1", "rediss://user:***@host/1"),
        ("redis://host/0?password=s3cret&ssl=1", "redis://host/0?password=***&ssl=1"),
    ],
)
def test_describe_masks_passwords(url: str, shown: str) -> None:
    """describe() shows the URL with any password replaced by ***."""
    assert mask_url(url) == shown
    assert RedisBackend(url).describe() == shown


async def test_unreachable_server_raises_backend_error_with_masked_url() -> None:
    """open() on a port nobody listens on raises BackendError naming the masked URL."""
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    with pytest.raises(BackendError) as caught:
        await RedisBackend(url, socket_timeout=1.0).open()
    assert ":***@127.0.0.1" in str(caught.value)
    assert "s3cret" not in str(caught.value)


@pytest.mark.redis
async def test_every_key_lives_under_the_prefix(backend: RedisBackend, redis_url: str) -> None:
    """Records, journal, leases, keys, locks and meta all use keys under the prefix."""
    await backend.save_records([TaskRecord("t1", "app:f", status=TaskStatus.SUCCESS)])
    await backend.heartbeat("me", 30)
    await backend.reserve_idempotency_key("k", "t1", 30)
    await backend.acquire_lock("slot", "me", 30)
    await backend.set_meta("m", "1")
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        ours = [key async for key in client.scan_iter(f"{backend.prefix}:*")]
        assert f"{backend.prefix}:rec:t1" in ours
        assert f"{backend.prefix}:owner:me" in ours
        assert await client.pttl(f"{backend.prefix}:owner:me") > 0
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_record_ttl_expires_records_and_their_index(
    redis_url: str, redis_prefix: str
) -> None:
    """With record_ttl, records expire and pages and counts forget them."""
    backend = RedisBackend(redis_url, prefix=redis_prefix, record_ttl=0.2)
    await backend.open()
    try:
        await backend.save_records([TaskRecord("t1", "app:f", status=TaskStatus.SUCCESS)])
        assert await backend.count_by_status() == {"success": 1}
        deadline = time.monotonic() + 5
        while await backend.get_record("t1") is not None:
            assert time.monotonic() < deadline, "record did not expire"
            await asyncio.sleep(0.02)
        assert (await backend.query_records(RecordQuery())).records == []
        assert await backend.count_by_status() == {}
    finally:
        await backend.close()


@pytest.mark.redis
async def test_backend_recovers_after_server_restart(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    """While the server is down calls raise BackendError; after a restart they work again."""
    redis_server.start()
    backend = RedisBackend(redis_server.url, prefix=redis_prefix, socket_timeout=0.5)
    await backend.open()
    try:
        await backend.set_meta("m", "1")
        redis_server.stop()
        with pytest.raises(BackendError):
            await backend.reserve_idempotency_key("k", "t1", 30)
        redis_server.start()
        # Scripts are gone with the old process; redis-py reloads them on NOSCRIPT.
        assert await backend.reserve_idempotency_key("k", "t1", 30) is None
        assert await backend.get_meta("m") is None  # the test server keeps nothing on disk
    finally:
        await backend.close()
        redis_server.start()
