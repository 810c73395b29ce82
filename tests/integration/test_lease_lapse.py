"""A lease renewal that hangs past lease_ttl (redis-server stopped by SIGSTOP) and then
succeeds is reported: the "may have expired" error, a metric, and the journal rewritten."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Iterator

import pytest

from fastapi_taskflow import RedisBackend, TaskManager
from servers import RedisServer, require_redis_server, running_redis_server


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this module alone: stopping it must not stall other tests."""
    with running_redis_server(require_redis_server()) as server:
        yield server


async def _until(predicate: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


@pytest.mark.redis
async def test_a_renewal_that_hangs_past_the_lease_is_reported(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis frozen for 1.2 s with lease_ttl=0.6: the error comes while the renewal hangs, it
    is counted once, no heartbeat failed, and the entries are rewritten when it returns."""
    caplog.set_level(logging.WARNING, "fastapi_taskflow.persistence")
    backend = RedisBackend(own_redis.url, prefix="lapse", socket_timeout=10.0)
    manager = TaskManager(
        snapshot_backend=backend, heartbeat_interval=0.2, lease_ttl=0.6, drain_timeout=0.5
    )
    release = asyncio.Event()

    @manager.task(name="jobs.hold", requeue_on_interrupt=True)
    async def hold() -> None:
        await release.wait()

    await manager.startup()
    assert own_redis.process is not None
    try:
        manager.add_task(hold)
        assert manager.persister is not None
        await manager.persister.drain()
        pid = own_redis.process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            await _until(
                lambda: manager.metrics()["lease_expirations"] == 1,
                3.0,
                "no lease error while the renewal hung",
            )
            await asyncio.sleep(0.6)  # frozen for about 1.2 s in all
        finally:
            os.kill(pid, signal.SIGCONT)
        await _until(
            lambda: any("works again" in r.getMessage() for r in caplog.records),
            5.0,
            "the instance did not say it renews again",
        )
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1
        assert "may have expired" in errors[0]
        assert manager.metrics()["lease_expirations"] == 1
        assert manager.metrics()["lease_failures"] == 0
    finally:
        release.set()
        await manager.shutdown()
