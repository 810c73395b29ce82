"""Task results: kept on the record, read back by handle and by id, capped, expiring, sealed."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import UTC, datetime
from decimal import Decimal

import pydantic
import pytest
from control_helpers import SharedMemoryBackend, running
from cryptography.fernet import Fernet

from fastapi_taskflow import (
    ConfigurationError,
    MemoryBackend,
    QueueConfig,
    QueueFullError,
    TaskFailedError,
    TaskflowError,
    TaskManager,
    TaskStatus,
    UnknownTaskError,
)
from fastapi_taskflow.backends.base import record_to_row, row_to_record
from fastapi_taskflow.di.settings import TaskflowSettings
from fastapi_taskflow.keyrotation import rotate_keys
from fastapi_taskflow.models import TaskRecord


class Invoice(pydantic.BaseModel):
    number: int
    issued: datetime


@dataclasses.dataclass
class Point:
    x: int
    y: int


async def test_async_and_sync_return_values_come_back_with_their_types() -> None:
    """handle.result() gives back what the task returned: bytes, datetimes, tuples, Decimals."""
    value = {"pdf": b"%PDF\x00\xff", "at": datetime(2025, 1, 2, tzinfo=UTC), "pair": (1, "a")}
    async with running() as manager:

        @manager.task()
        async def render() -> dict[str, object]:
            return value

        @manager.task()
        def total() -> Decimal:
            return Decimal("12.50")

        assert await manager.add_task(render).result() == value
        assert await manager.add_task(total).result() == Decimal("12.50")


async def test_models_and_dataclasses_are_kept_as_their_json_form() -> None:
    """A pydantic model or a dataclass comes back as its JSON form (a dict)."""
    async with running() as manager:

        @manager.task()
        async def invoice() -> Invoice:
            return Invoice(number=7, issued=datetime(2025, 3, 4, tzinfo=UTC))

        @manager.task()
        def points() -> list[Point]:
            return [Point(1, 2)]

        assert await manager.add_task(invoice).result() == {
            "number": 7,
            "issued": "2025-03-04T00:00:00Z",
        }
        assert await manager.add_task(points).result() == [{"x": 1, "y": 2}]


async def test_get_result_by_id_waits_for_the_task() -> None:
    """get_result(task_id) waits until the task has finished and returns its value."""
    async with running() as manager:
        release = asyncio.Event()

        @manager.task()
        async def slow() -> int:
            await release.wait()
            return 42

        handle = manager.add_task(slow)
        waiting = asyncio.ensure_future(manager.get_result(handle.task_id))
        await asyncio.sleep(0)
        assert not waiting.done()
        release.set()
        assert await waiting == 42


async def test_failed_task_raises_task_failed_error_holding_the_record() -> None:
    """A failed task's result raises TaskFailedError with its error and record."""
    async with running() as manager:

        @manager.task()
        async def broken() -> None:
            raise ValueError("no paper")

        handle = manager.add_task(broken)
        with pytest.raises(TaskFailedError, match="no paper") as caught:
            await handle.result()
        assert isinstance(caught.value, TaskflowError)
        assert caught.value.record.status is TaskStatus.FAILED
        with pytest.raises(TaskFailedError, match="failed"):
            await manager.get_result(handle.task_id)


async def test_cancelled_rejected_and_interrupted_tasks_raise_task_failed_error() -> None:
    """Cancelled, rejected and interrupted tasks raise TaskFailedError from result()."""
    manager = TaskManager(
        queues={"tight": QueueConfig(concurrency=1, max_size=1)}, drain_timeout=0.05
    )
    await manager.startup()
    hold = asyncio.Event()

    @manager.task(queue="tight")
    async def wait_here() -> int:
        await hold.wait()
        return 1

    running_one = manager.add_task(wait_here)
    queued = manager.add_task(wait_here)
    with pytest.raises(QueueFullError) as full:
        manager.add_task(wait_here)
    rejected = await manager.get_task(full.value.task_id or "")
    assert rejected is not None
    with pytest.raises(TaskFailedError, match="rejected"):
        await rejected.result()
    queued.cancel()
    with pytest.raises(TaskFailedError, match="cancelled"):
        await queued.result()
    waiter = asyncio.ensure_future(running_one.result())
    await manager.shutdown()
    with pytest.raises(TaskFailedError, match="interrupted"):
        await waiter


async def test_result_timeout_raises_timeout_error() -> None:
    """result(timeout=...) raises TimeoutError while the task is still running."""
    async with running(drain_timeout=0.1) as manager:

        @manager.task()
        async def forever() -> None:
            await asyncio.Event().wait()

        handle = manager.add_task(forever)
        with pytest.raises(TimeoutError):
            await handle.result(timeout=0.05)
        with pytest.raises(TimeoutError):
            await manager.get_result(handle.task_id, timeout=0.05)
        handle.cancel()


async def test_unknown_id_raises_unknown_task_error() -> None:
    """get_result of an id nobody knows raises UnknownTaskError at once."""
    async with running(snapshot_backend=MemoryBackend()) as manager:
        with pytest.raises(UnknownTaskError):
            await manager.get_result("no-such-task")


async def test_store_result_false_keeps_nothing_and_says_so() -> None:
    """store_result=False: result() is None and the record says why."""
    async with running() as manager:

        @manager.task(store_result=False)
        async def secret() -> str:
            return "do not keep"

        handle = manager.add_task(secret)
        assert await handle.result() is None
        assert not handle.record.has_result
        assert "store_result=False" in (handle.record.result_note or "")


async def test_too_large_result_is_not_stored_but_the_task_succeeds() -> None:
    """A value over max_result_bytes is not kept; the task is SUCCESS and the record says why."""
    async with running(max_result_bytes=100) as manager:

        @manager.task()
        async def big() -> bytes:
            return b"x" * 1000

        @manager.task(max_result_bytes=10_000)
        async def allowed() -> bytes:
            return b"x" * 1000

        handle = manager.add_task(big)
        assert await handle.result() is None
        assert handle.record.status is TaskStatus.SUCCESS
        assert "over max_result_bytes (100)" in (handle.record.result_note or "")
        assert await manager.add_task(allowed).result() == b"x" * 1000
        assert manager.results.not_stored == 1


async def test_unencodable_result_is_not_stored_and_says_why() -> None:
    """A value the codec cannot carry is noted on the record instead of failing the task."""
    async with running() as manager:

        @manager.task()
        async def lock() -> object:
            import threading

            return threading.Lock()

        handle = manager.add_task(lock)
        assert await handle.result() is None
        assert handle.record.status is TaskStatus.SUCCESS
        assert "cannot be encoded" in (handle.record.result_note or "")


async def test_result_ttl_drops_the_result_but_keeps_the_record() -> None:
    """After result_ttl the result is gone (and said so); the record stays."""
    async with running(result_ttl=0.05) as manager:

        @manager.task()
        async def short_lived() -> int:
            return 5

        handle = manager.add_task(short_lived)
        assert await handle.result() == 5
        assert handle.record.result_expires_at is not None
        dropped = asyncio.Event()
        manager.store.add_listener(lambda r: dropped.set() if not r.has_result else None)
        await asyncio.wait_for(dropped.wait(), 2)
        assert manager.store.get(handle.task_id) is handle.record
        assert await handle.result() is None
        assert handle.record.result_note == "dropped after its result_ttl"


async def test_expired_result_is_never_returned_even_before_the_sweep() -> None:
    """A record read past its expiry answers no value, whoever reads it."""
    async with running() as manager:
        record = TaskRecord("t", "x", status=TaskStatus.SUCCESS, result_data=b"1")
        record.result_expires_at = datetime(2000, 1, 1, tzinfo=UTC)
        assert manager.results.value(record) is None
        assert record.result_note == "dropped after its result_ttl"


async def test_encrypted_result_is_sealed_in_the_row_and_readable_with_the_key() -> None:
    """With encryption on the stored row holds no clear result, and result() still works."""
    key = Fernet.generate_key()
    backend = MemoryBackend()
    async with running(encrypt_args_key=key, snapshot_backend=backend) as manager:

        @manager.task()
        async def token() -> str:
            return "s3cret-value"

        handle = manager.add_task(token)
        assert await handle.result() == "s3cret-value"
        row = record_to_row(handle.record)
        assert "s3cret-value" not in row["data"]
        assert "encrypted_result" in json.loads(row["data"])


async def test_key_rotation_re_encrypts_results() -> None:
    """taskflow keys rotate rewrites sealed results under the new key."""
    old, new = Fernet.generate_key(), Fernet.generate_key()
    backend = MemoryBackend()
    async with running(encrypt_args_key=old, snapshot_backend=backend, close_backend=False) as m:

        @m.task(name="rotated")
        async def value() -> str:
            return "kept"

        task_id = m.add_task(value).task_id
        await m.join()
    manager = TaskManager(encrypt_args_key=[new, old])
    assert manager.cipher is not None
    report = await rotate_keys(backend, manager.cipher)
    assert report.rotated == 1
    stored = await backend.get_record(task_id)
    assert stored is not None
    assert stored.encrypted_result is not None
    assert manager.cipher.is_current(stored.encrypted_result)
    only_new = TaskManager(encrypt_args_key=new)
    assert only_new.results.value(stored) == "kept"


def test_rows_written_before_results_existed_are_readable() -> None:
    """A record row without any result field loads as a record with no result."""
    row = record_to_row(TaskRecord("old", "app:job", status=TaskStatus.SUCCESS))
    doc = json.loads(row["data"])
    assert not {"result", "encrypted_result", "result_note"} & set(doc)
    record = row_to_record(row["data"])
    assert not record.has_result
    assert record.result_note is None


def test_bad_result_options_are_refused_at_decoration() -> None:
    """store_result, max_result_bytes and result_ttl are validated where they are written."""
    manager = TaskManager()
    for name, value in (("store_result", "yes"), ("max_result_bytes", -1), ("result_ttl", 0)):
        with pytest.raises(ValueError, match=name):
            manager.task(**{name: value})
    with pytest.raises(ValueError, match="max_result_bytes"):
        TaskManager(max_result_bytes=-1)


async def test_per_task_result_ttl_wins_over_the_manager_setting() -> None:
    """@task(result_ttl=...) sets the expiry of that task's results."""
    async with running(result_ttl=3600) as manager:

        @manager.task(result_ttl=0.01)
        async def brief() -> int:
            return 1

        handle = manager.add_task(brief)
        await handle.wait()
        expires = handle.record.result_expires_at
        assert expires is not None
        assert handle.record.end_time is not None
        assert (expires - handle.record.end_time).total_seconds() < 1


async def test_another_instance_reads_the_result_from_the_backend() -> None:
    """An instance sharing the backend gets the value once the finished record is written."""
    backend = SharedMemoryBackend()
    async with (
        running(snapshot_backend=backend, close_backend=False) as first,
        running(snapshot_backend=backend, close_backend=False) as second,
    ):

        @first.task(name="shared-report")
        async def report() -> bytes:
            return b"pdf"

        handle = first.add_task(report)
        await handle.wait()
        assert first.persister is not None
        await first.persister.flush_history()
        assert second.store.get(handle.task_id) is None
        assert await second.get_result(handle.task_id, timeout=5) == b"pdf"


def test_yaml_result_settings_reach_the_manager() -> None:
    """max_result_bytes and result_ttl in settings become the manager's."""
    settings = TaskflowSettings.from_mapping({"max_result_bytes": 2048, "result_ttl": 60})
    manager = TaskManager(settings=settings.manager_settings())
    assert (manager.results.max_result_bytes, manager.results.result_ttl) == (2048, 60)
    with pytest.raises(ConfigurationError, match="max_result_bytes"):
        TaskflowSettings.from_mapping({"max_result_bytes": -5})


async def test_expired_result_read_from_the_backend_is_dropped_at_rest() -> None:
    """A row whose result expired (e.g. before a restart) loses it when read; the row stays."""
    backend = MemoryBackend()
    record = TaskRecord("old", "app:job", status=TaskStatus.SUCCESS, result_data=b"1")
    record.result_expires_at = datetime(2000, 1, 1, tzinfo=UTC)
    await backend.save_records([record])
    async with running(snapshot_backend=backend, close_backend=False) as manager:
        assert await manager.get_result("old") is None
    stored = await backend.get_record("old")
    assert stored is not None
    assert stored.result_data is None
    assert stored.result_note == "dropped after its result_ttl"


async def test_unknown_id_on_a_shared_backend_raises_after_a_short_look() -> None:
    """With a shared backend an id nobody wrote still ends in UnknownTaskError."""
    async with running(snapshot_backend=SharedMemoryBackend()) as manager:
        with pytest.raises(UnknownTaskError):
            await manager.get_result("never-written", timeout=5)
