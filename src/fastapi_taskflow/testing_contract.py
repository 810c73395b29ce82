"""The backend contract: every rule a backend keeps, as tests you can run on your own backend.

Not collected by itself (no ``Test`` prefix): subclass :class:`BackendContract` in your tests,
provide the ``backend`` fixture, and pytest runs every test below on it (it needs pytest and
pytest-asyncio in auto mode)::

    import pytest
    from fastapi_taskflow.testing_contract import BackendContract

    class TestMyBackend(BackendContract):
        @pytest.fixture
        async def backend(self):
            backend = MyBackend(...)  # an empty store
            await backend.open()
            yield backend
            await backend.close()

fastapi-taskflow's own ``tests/contract/test_backend_contract.py`` runs it on the built-in
backends. See docs/backends.md ("Checking your backend").
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import pytest

from fastapi_taskflow.admin.audit import META_KEY, move_meta_document
from fastapi_taskflow.backends.base import (
    Command,
    InstanceInfo,
    JournalEntry,
    RecordQuery,
    ScheduledRun,
    TaskBackend,
)
from fastapi_taskflow.models import TaskRecord, TaskStatus
from fastapi_taskflow.ratelimit import RateLimit

T = TypeVar("T")
T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
GARBAGE = "{not json"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def make_record(task_id: str, created: float = 0.0, **fields: Any) -> TaskRecord:
    """A record created ``created`` seconds after T0; finished ones get an end time."""
    status = fields.pop("status", TaskStatus.SUCCESS)
    if status.finished and "end_time" not in fields:
        fields["end_time"] = at(created + 1)
    return TaskRecord(
        task_id=task_id,
        func_name=fields.pop("func_name", "app.jobs:work"),
        status=status,
        created_at=at(created),
        **fields,
    )


def make_entry(task_id: str, **fields: Any) -> JournalEntry:
    return JournalEntry(task_id=task_id, func_name="app.jobs:work", payload=b"{}", **fields)


def make_instance(instance_id: str, running: int = 0, waiting: int = 0) -> InstanceInfo:
    return InstanceInfo(
        instance_id=instance_id,
        host=f"host-{instance_id}",
        pid=1234,
        version="1.0",
        started_at=T0,
        heartbeat_at=T0,
        running=running,
        waiting=waiting,
    )


def audit_entry(entry_id: str, second: int = 0) -> dict[str, Any]:
    """An audit entry as TaskAdmin stores it."""
    return {
        "entry_id": entry_id,
        "action": "cancel",
        "task_id": f"task-{entry_id}",
        "actor": "ann",
        "timestamp": at(second).isoformat(),
        "detail": {"result": "ok"},
    }


async def eventually(check: Callable[[], Awaitable[T]], within: float = 5.0) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.02)


async def all_pages(backend: TaskBackend, **filters: Any) -> list[str]:
    """Every task id the query yields, following cursors to the end."""
    ids: list[str] = []
    cursor = None
    while True:
        page = await backend.query_records(RecordQuery(cursor=cursor, **filters))
        ids += [r.task_id for r in page.records]
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


class BackendContract:
    """Every rule a backend keeps. Subclass it and provide the ``backend`` fixture."""

    @pytest.fixture
    async def backend(self) -> TaskBackend:
        """An opened backend with no data, closed after the test. Override it (yield it)."""
        raise NotImplementedError("provide a `backend` fixture in your BackendContract subclass")

    @pytest.fixture
    async def peer(self, backend: TaskBackend) -> TaskBackend:
        """A second backend object on the same data (another connection). Default: the same."""
        return backend

    async def write_corrupt_record(
        self, backend: TaskBackend, task_id: str, created_at: float
    ) -> None:
        """Store an unreadable record. Default: through the primitive; override to go lower."""
        row = {
            "task_id": task_id,
            "func_name": "x",
            "status": "success",
            "queue": "default",
            "created_at": created_at,
            "end_time": None,
            "error": None,
            "duration": None,
            "data": GARBAGE,
        }
        await backend._write_rows([row])

    # ---- records ---------------------------------------------------------------------------

    async def test_round_trip_keeps_argument_types(self, backend: TaskBackend) -> None:
        """A saved record comes back with the same argument types and every field intact."""
        args = (at(0), (1, "two"), b"\x00\xff", Decimal("1.10"), uuid.UUID(int=7), {1: "a"})
        kwargs = {"day": date(2025, 2, 3), "nested": {(1, 2): [Decimal("3")]}}
        record = make_record(
            "t1",
            args=args,
            kwargs=kwargs,
            tags={"tenant": "acme"},
            priority=3,
            queue="mail",
            error="boom",
            logs=["a", "b"],
            start_time=at(0.5),
            retries_used=2,
            progress=0.5,
            progress_message="half",
            idempotency_key="k1",
            requeue_count=1,
        )
        await backend.save_records([record])
        got = await backend.get_record("t1")
        assert got is not None
        assert got.args == args
        assert [type(a) for a in got.args] == [type(a) for a in args]
        assert got.kwargs == kwargs
        assert type(next(iter(got.kwargs["nested"]))) is tuple
        assert got.to_dict(include_args=True) == record.to_dict(include_args=True)
        assert got.requeue_count == 1

    async def test_round_trip_keeps_defaults_and_zero_values(self, backend: TaskBackend) -> None:
        """Rows leave out fields at their default; they come back the same, and a zero
        priority or progress stays zero (not "unset")."""
        bare = make_record("bare")
        zeros = make_record("zeros", priority=0, progress=0.0, progress_message="")
        await backend.save_records([bare, zeros])
        for record in (bare, zeros):
            got = await backend.get_record(record.task_id)
            assert got is not None
            assert got.to_dict(include_args=True) == record.to_dict(include_args=True)

    async def test_encrypted_payload_round_trips(self, backend: TaskBackend) -> None:
        """An encrypted record keeps its ciphertext and has no clear arguments."""
        await backend.save_records([make_record("enc", encrypted_payload=b"gAAAA\x00cipher")])
        got = await backend.get_record("enc")
        assert got is not None
        assert got.encrypted_payload == b"gAAAA\x00cipher"
        assert (got.args, got.kwargs) == ((), {})

    async def test_results_round_trip(self, backend: TaskBackend) -> None:
        """A kept result, a sealed one, the note of one not kept, and a waiting reason come
        back as saved."""
        kept = make_record(
            "res", result_data=b'{"__tf__":"bytes","v":"AA=="}', result_expires_at=at(60)
        )
        sealed = make_record("sealed", encrypted_result=b"gAAAA\x00result")
        noted = make_record("noted", result_note="not stored: 2000 bytes encoded, over 1000")
        waiting = make_record(
            "waiting", status=TaskStatus.PENDING, waiting_reason="waiting for rate limit 1/s"
        )
        await backend.save_records([kept, sealed, noted, waiting])
        got = {r.task_id: await backend.get_record(r.task_id) for r in (kept, sealed, noted)}
        assert got["res"] is not None
        assert got["res"].result_data == kept.result_data
        assert got["res"].result_expires_at == at(60)
        assert got["sealed"] is not None
        assert got["sealed"].encrypted_result == b"gAAAA\x00result"
        assert got["sealed"].result_data is None
        assert got["noted"] is not None
        assert got["noted"].result_note == noted.result_note
        assert not got["noted"].has_result
        pending = await backend.get_record("waiting")
        assert pending is not None
        assert pending.waiting_reason == "waiting for rate limit 1/s"

    async def test_unknown_record_is_none(self, backend: TaskBackend) -> None:
        """Getting a task id that was never saved returns None."""
        assert await backend.get_record("nope") is None

    async def test_save_replaces_by_task_id(self, backend: TaskBackend) -> None:
        """Saving a task id again replaces the record, and every filter sees the new status."""
        await backend.save_records([make_record("t1", status=TaskStatus.RUNNING)])
        await backend.save_records([make_record("t1", status=TaskStatus.FAILED, error="x")])
        got = await backend.get_record("t1")
        assert got is not None
        assert got.status is TaskStatus.FAILED
        assert await all_pages(backend, status="running") == []
        assert await all_pages(backend, status="failed") == ["t1"]
        assert await all_pages(backend) == ["t1"]
        assert await backend.count_by_status() == {"failed": 1}

    async def test_pages_newest_first_without_gaps(self, backend: TaskBackend) -> None:
        """Cursor paging yields every record once, newest first, ties ordered by task id."""
        # Several records share a created_at, so the cursor must break ties by task id.
        records = [make_record(f"t{i:02d}", created=float(i // 3)) for i in range(23)]
        await backend.save_records(records)
        expected = [
            r.task_id
            for r in sorted(records, key=lambda r: (r.created_at, r.task_id), reverse=True)
        ]
        for limit in (1, 2, 5, 50):
            assert await all_pages(backend, limit=limit) == expected

    async def test_last_page_has_no_cursor(self, backend: TaskBackend) -> None:
        """A page that reaches the end has no next cursor; a full one before it has one."""
        await backend.save_records([make_record(f"t{i}", created=i) for i in range(4)])
        first = await backend.query_records(RecordQuery(limit=2))
        assert [r.task_id for r in first.records] == ["t3", "t2"]
        assert first.next_cursor is not None
        second = await backend.query_records(RecordQuery(limit=2, cursor=first.next_cursor))
        assert [r.task_id for r in second.records] == ["t1", "t0"]
        last = await backend.query_records(RecordQuery(limit=5, cursor=first.next_cursor))
        assert last.next_cursor is None

    async def test_invalid_cursor_is_refused(self, backend: TaskBackend) -> None:
        """A cursor this code did not make raises ValueError."""
        with pytest.raises(ValueError, match="invalid cursor"):
            await backend.query_records(RecordQuery(cursor="not-a-cursor"))

    FILTER_CASES = [
        pytest.param({"status": "failed"}, ["f2", "f1"], id="status"),
        pytest.param({"func_name": "app.mail:send"}, ["f2", "m2", "m1"], id="func_name"),
        pytest.param({"queue": "slow"}, ["q1"], id="queue"),
        pytest.param({"tag": ("tenant", "acme")}, ["m2", "f1"], id="tag"),
        pytest.param({"tag": ("tenant", "other")}, [], id="tag-no-match"),
        pytest.param({"text": "MAIL:SE"}, ["f2", "m2", "m1"], id="text-func-name"),
        pytest.param({"text": "smtp down"}, ["f2"], id="text-error"),
        pytest.param({"text": "q1"}, ["q1"], id="text-task-id"),
        # x1's error would match if % and _ were taken as LIKE wildcards.
        pytest.param({"text": "100%_"}, ["p1"], id="text-wildcards-literal"),
        pytest.param({"since": at(3)}, ["p1", "q1", "f2"], id="since-inclusive"),
        pytest.param({"until": at(2)}, ["x1", "m1", "f1"], id="until-exclusive"),
        pytest.param({"since": at(1), "until": at(4)}, ["f2", "m2", "x1", "m1"], id="range"),
        pytest.param({"status": "failed", "func_name": "app.mail:send"}, ["f2"], id="combined"),
        pytest.param({"queue": "slow", "text": "nothing"}, [], id="combined-empty"),
    ]

    @pytest.fixture
    async def filter_data(self, backend: TaskBackend) -> TaskBackend:
        await backend.save_records(
            [
                make_record(
                    "f1", 0, status=TaskStatus.FAILED, error="KeyError", tags={"tenant": "acme"}
                ),
                make_record("m1", 1, func_name="app.mail:send"),
                make_record("m2", 2, func_name="app.mail:send", tags={"tenant": "acme", "x": "1"}),
                make_record(
                    "f2", 3, status=TaskStatus.FAILED, func_name="app.mail:send", error="SMTP down"
                ),
                make_record("q1", 4, queue="slow", status=TaskStatus.PENDING),
                make_record("p1", 5, error="disk 100%_ full"),
                make_record("x1", 1.5, error="100 percent"),
            ]
        )
        return backend

    @pytest.mark.parametrize(("filters", "expected"), FILTER_CASES)
    async def test_filter(
        self, filter_data: TaskBackend, filters: dict[str, Any], expected: list[str]
    ) -> None:
        """Each filter returns exactly its matches, newest first, on every page size."""
        assert await all_pages(filter_data, **filters) == expected
        assert await all_pages(filter_data, limit=1, **filters) == expected

    async def test_filter_pages_through_sparse_matches(self, backend: TaskBackend) -> None:
        """A rare status among many records pages out completely, in order."""
        records = [make_record(f"t{i:03d}", created=i) for i in range(300)]
        for record in records[::50]:
            record.status = TaskStatus.FAILED
        await backend.save_records(records)
        expected = [f"t{i:03d}" for i in range(250, -1, -50)]
        assert await all_pages(backend, status="failed", limit=2) == expected
        assert await all_pages(backend, status="failed", text="t1", limit=1) == ["t150", "t100"]

    async def test_delete_before_removes_only_old_finished(self, backend: TaskBackend) -> None:
        """Deleting before a date removes finished records that ended earlier, nothing else."""
        await backend.save_records(
            [
                make_record("old", 0),
                make_record("old-failed", 1, status=TaskStatus.FAILED),
                make_record("new", 100),
                make_record("old-running", 0, status=TaskStatus.RUNNING, start_time=at(0)),
            ]
        )
        assert await backend.delete_records_before(at(50)) == 2
        assert sorted(await all_pages(backend)) == ["new", "old-running"]
        assert await backend.get_record("old") is None
        assert await backend.count_by_status() == {"success": 1, "running": 1}

    async def test_delete_by_id(self, backend: TaskBackend) -> None:
        """Deleting by task id removes those records and counts only the ones that existed."""
        await backend.save_records([make_record("a", 0), make_record("b", 1)])
        assert await backend.delete_records(["a", "missing"]) == 1
        assert await all_pages(backend) == ["b"]
        assert await backend.delete_records([]) == 0

    async def test_count_by_status(self, backend: TaskBackend) -> None:
        """Counts per status cover every stored record; empty statuses are left out."""
        assert await backend.count_by_status() == {}
        statuses = [TaskStatus.SUCCESS] * 3 + [TaskStatus.FAILED, TaskStatus.PENDING]
        await backend.save_records(
            [make_record(f"t{i}", i, status=s) for i, s in enumerate(statuses)]
        )
        assert await backend.count_by_status() == {"success": 3, "failed": 1, "pending": 1}

    async def test_corrupt_record_is_skipped_and_counted(
        self, backend: TaskBackend, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An unreadable row is skipped with a warning naming it, and counted; paging goes on."""
        await backend.save_records([make_record(f"ok{i}", i * 2) for i in range(3)])
        await self.write_corrupt_record(backend, "bad1", at(3).timestamp())
        with caplog.at_level(logging.WARNING, logger="fastapi_taskflow.backends"):
            assert await all_pages(backend, limit=1) == ["ok2", "ok1", "ok0"]
            assert await backend.get_record("bad1") is None
        assert backend.corrupt_rows >= 2
        assert any("bad1" in message for message in caplog.messages)

    # ---- journal and leases ------------------------------------------------------------------

    async def test_journal_put_list_remove(self, backend: TaskBackend) -> None:
        """Journal entries keep every field, are listed by owner and go when removed."""
        entry = make_entry(
            "j1",
            tags={"t": "1"},
            priority=5,
            queue="mail",
            idempotency_key="k",
            requeue=True,
            retries_used=2,
            encrypted=True,
        )
        entry.payload = b"\x00binary\xff"
        await backend.heartbeat("A", 30)
        await backend.journal_put([entry, make_entry("j2")], "A")
        owned = {e.task_id: e for e in await backend.journal_owned("A")}
        assert set(owned) == {"j1", "j2"}
        got = owned["j1"]
        assert (got.payload, got.tags, got.priority, got.queue) == (
            entry.payload,
            {"t": "1"},
            5,
            "mail",
        )
        assert (got.idempotency_key, got.requeue, got.retries_used, got.encrypted) == (
            "k",
            True,
            2,
            True,
        )
        assert got.owner == "A"
        assert got.created_at == entry.created_at
        await backend.journal_remove(["j1"])
        assert [e.task_id for e in await backend.journal_owned("A")] == ["j2"]

    async def test_claim_takes_only_unowned_or_expired(self, backend: TaskBackend) -> None:
        """A claim takes released entries and those of dead owners, never a live owner's."""
        await backend.heartbeat("alive", 30)
        await backend.heartbeat("leaving", 30)
        await backend.heartbeat("claimer", 30)
        await backend.journal_put([make_entry("a1")], "alive")
        await backend.journal_put([make_entry("d1")], "dead")  # never heartbeated
        await backend.journal_put([make_entry("r1")], "leaving")
        assert await backend.journal_release("leaving") == 1
        claimed = await backend.journal_claim("claimer")
        assert sorted(e.task_id for e in claimed) == ["d1", "r1"]
        assert all(e.owner == "claimer" for e in claimed)
        assert await backend.journal_claim("claimer") == []
        assert [e.task_id for e in await backend.journal_owned("alive")] == ["a1"]

    async def test_claim_respects_limit(self, backend: TaskBackend) -> None:
        """A claim takes at most ``limit`` entries; the next claim takes the rest."""
        await backend.heartbeat("me", 30)
        await backend.journal_put([make_entry(f"j{i}") for i in range(5)], "gone")
        first = await backend.journal_claim("me", limit=3)
        second = await backend.journal_claim("me", limit=3)
        assert (len(first), len(second)) == (3, 2)
        assert {e.task_id for e in first} | {e.task_id for e in second} == {
            f"j{i}" for i in range(5)
        }

    async def test_concurrent_claimers_never_share(
        self, backend: TaskBackend, peer: TaskBackend
    ) -> None:
        """Two claimers racing (also through two backend objects) never get the same entry."""
        ids = {f"j{i:03d}" for i in range(60)}
        await backend.journal_put([make_entry(t) for t in sorted(ids)], "gone")
        await backend.heartbeat("x", 30)
        await peer.heartbeat("y", 30)

        async def drain(b: TaskBackend, owner: str) -> list[str]:
            taken: list[str] = []
            while batch := await b.journal_claim(owner, limit=4):
                taken += [e.task_id for e in batch]
            return taken

        x, y = await asyncio.gather(drain(backend, "x"), drain(peer, "y"))
        assert not set(x) & set(y)
        assert sorted(x + y) == sorted(ids)

    async def test_heartbeat_keeps_entries_from_claims(self, backend: TaskBackend) -> None:
        """While its owner keeps heartbeating, an entry is never claimed, well past the ttl."""
        await backend.heartbeat("owner", 0.2)
        await backend.journal_put([make_entry("j1")], "owner")
        await backend.heartbeat("thief", 30)
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline:
            await backend.heartbeat("owner", 0.2)
            assert await backend.journal_claim("thief") == []
            await asyncio.sleep(0.05)

    async def test_expired_lease_lets_entries_be_claimed(self, backend: TaskBackend) -> None:
        """When an owner stops heartbeating, its entries become claimable after the ttl."""
        await backend.heartbeat("owner", 0.2)
        await backend.journal_put([make_entry("j1")], "owner")
        await backend.heartbeat("rescuer", 30)
        assert await backend.journal_claim("rescuer") == []
        claimed = await eventually(lambda: backend.journal_claim("rescuer"))
        assert [e.task_id for e in claimed] == ["j1"]
        assert [e.task_id for e in await backend.journal_owned("rescuer")] == ["j1"]

    async def test_drop_owner_makes_entries_claimable(self, backend: TaskBackend) -> None:
        """Dropping an owner's lease lets others claim its entries at once."""
        await backend.heartbeat("owner", 30)
        await backend.heartbeat("other", 30)
        await backend.journal_put([make_entry("j1")], "owner")
        assert await backend.journal_claim("other") == []
        await backend.drop_owner("owner")
        assert [e.task_id for e in await backend.journal_claim("other")] == ["j1"]

    async def test_corrupt_journal_entry_is_dropped(
        self, backend: TaskBackend, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A claim skips and deletes an unreadable journal entry, counting it."""
        await backend._journal_write([("bad", GARBAGE)], "gone")
        await backend.journal_put([make_entry("good")], "gone")
        await backend.heartbeat("me", 30)
        with caplog.at_level(logging.WARNING, logger="fastapi_taskflow.backends"):
            claimed = await backend.journal_claim("me")
        assert [e.task_id for e in claimed] == ["good"]
        assert backend.corrupt_rows == 1
        assert any("bad" in message for message in caplog.messages)
        await backend.drop_owner("me")
        assert [e.task_id for e in await backend.journal_claim("next")] == ["good"]

    # ---- idempotency keys, locks, metadata ------------------------------------------------

    async def test_idempotency_key_reserve_and_release(self, backend: TaskBackend) -> None:
        """A key belongs to one task until that task releases it; others get the holder."""
        assert await backend.reserve_idempotency_key("k", "t1", None) is None
        assert await backend.reserve_idempotency_key("k", "t2", None) == "t1"
        assert await backend.reserve_idempotency_key("k", "t1", None) is None  # same holder
        await backend.release_idempotency_key("k", "t2")  # not the holder: no effect
        assert await backend.reserve_idempotency_key("k", "t2", None) == "t1"
        await backend.release_idempotency_key("k", "t1")
        assert await backend.reserve_idempotency_key("k", "t2", None) is None

    async def test_idempotency_key_expires(self, backend: TaskBackend) -> None:
        """A key reserved with a ttl is free again once the ttl passes."""
        assert await backend.reserve_idempotency_key("k", "t1", 0.2) is None
        assert await backend.reserve_idempotency_key("k", "t2", 0.2) == "t1"

        async def free_for_t2() -> bool:
            return await backend.reserve_idempotency_key("k", "t2", 30) is None

        await eventually(free_for_t2)
        assert await backend.reserve_idempotency_key("k", "t3", 30) == "t2"

    async def test_concurrent_reservations_one_wins(
        self, backend: TaskBackend, peer: TaskBackend
    ) -> None:
        """Of many tasks racing for one key (through two backend objects), exactly one wins."""
        results = await asyncio.gather(
            *(
                (backend if i % 2 else peer).reserve_idempotency_key("k", f"t{i}", 30)
                for i in range(10)
            )
        )
        winners = [f"t{i}" for i, held in enumerate(results) if held is None]
        assert len(winners) == 1
        assert {held for held in results if held is not None} <= set(winners)

    async def test_lock_is_exclusive_until_expiry(self, backend: TaskBackend) -> None:
        """A lock refuses other owners until its ttl passes; its owner may renew it."""
        assert await backend.acquire_lock("slot", "a", 0.2) is True
        assert await backend.acquire_lock("slot", "b", 30) is False
        assert await backend.acquire_lock("slot", "a", 0.2) is True
        assert await backend.acquire_lock("other-slot", "b", 30) is True
        await eventually(lambda: backend.acquire_lock("slot", "b", 30))
        assert await backend.acquire_lock("slot", "a", 30) is False

    async def test_concurrent_locks_one_wins(self, backend: TaskBackend, peer: TaskBackend) -> None:
        """Of many owners racing for one lock (through two backend objects), exactly one wins."""
        results = await asyncio.gather(
            *((backend if i % 2 else peer).acquire_lock("slot", f"o{i}", 30) for i in range(10))
        )
        assert results.count(True) == 1

    # ---- counters ----------------------------------------------------------------------------

    async def test_counter_adds_and_reports_time_left(self, backend: TaskBackend) -> None:
        """A counter starts at 0, adds, reports the seconds left and is gone once deleted."""
        assert await backend.counter_get("c") == (0, 0.0)
        assert await backend.counter_add("c", 1, 30) == 1
        assert await backend.counter_add("c", 4, 60) == 5
        value, left = await backend.counter_get("c")
        assert value == 5
        assert 50 < left <= 60
        assert await backend.counter_get("other") == (0, 0.0)
        await backend.counter_delete("c")
        await backend.counter_delete("never-set")
        assert await backend.counter_get("c") == (0, 0.0)
        assert await backend.counter_add("c", 2, 30) == 2

    async def test_counter_expires_and_starts_again(self, backend: TaskBackend) -> None:
        """Once its ttl passes a counter reads 0, and the next add starts from the amount."""
        await backend.counter_add("c", 3, 0.2)

        async def expired() -> bool:
            return await backend.counter_get("c") == (0, 0.0)

        await eventually(expired)
        assert await backend.counter_add("c", 1, 30) == 1

    async def test_concurrent_counter_adds_all_count(
        self, backend: TaskBackend, peer: TaskBackend
    ) -> None:
        """Adds racing through two backend objects are all counted (no lost update)."""
        results = await asyncio.gather(
            *((backend if i % 2 else peer).counter_add("c", 1, 30) for i in range(20))
        )
        assert sorted(results) == list(range(1, 21))
        assert (await peer.counter_get("c"))[0] == 20

    # ---- instances ---------------------------------------------------------------------------

    async def test_instances_are_listed_until_their_announcement_expires(
        self, backend: TaskBackend, peer: TaskBackend
    ) -> None:
        """An announced instance is listed (also through a second backend object) until its ttl
        passes without a renewal; forget_instance removes one at once."""
        await backend.announce_instance(make_instance("a", running=2, waiting=5), ttl=30)
        await peer.announce_instance(make_instance("b"), ttl=0.3)
        listed = await peer.live_instances()
        assert [i.instance_id for i in listed] == ["a", "b"]
        assert (listed[0].host, listed[0].pid, listed[0].running, listed[0].waiting) == (
            "host-a",
            1234,
            2,
            5,
        )
        await backend.announce_instance(make_instance("a", running=0), ttl=30)
        assert [i.running for i in await backend.live_instances()] == [0, 0]

        async def only_a() -> bool:
            return [i.instance_id for i in await backend.live_instances()] == ["a"]

        await eventually(only_a)
        await peer.forget_instance("a")
        assert await backend.live_instances() == []

    async def test_instances_announcing_at_once_all_succeed(
        self, backend: TaskBackend, peer: TaskBackend
    ) -> None:
        """Many instances renewing at the same moment (two backend objects): every renewal
        succeeds, none is refused as a deadlock."""
        await asyncio.gather(
            *(
                (backend if i % 2 else peer).announce_instance(make_instance(f"i{i % 8}"), ttl=30)
                for i in range(64)
            )
        )
        listed = sorted(i.instance_id for i in await peer.live_instances())
        assert listed == [f"i{n}" for n in range(8)]

    # ---- commands ------------------------------------------------------------------------------

    async def test_commands_are_read_from_a_position_oldest_first(
        self, backend: TaskBackend, peer: TaskBackend
    ) -> None:
        """A reader sees every command sent after its position once, in order, from any sender."""
        await backend.send_command(Command("cancel", "x", task_id="old"))
        start = await peer.command_position()
        await backend.send_command(Command("cancel", "x", task_id="t1"))
        await peer.send_command(Command("queue", "y", data={"name": "q", "concurrency": 2}))
        commands, position = await peer.read_commands(start, wait=1.0)
        assert [(c.kind, c.sender, c.task_id) for c in commands] == [
            ("cancel", "x", "t1"),
            ("queue", "y", None),
        ]
        assert commands[1].data == {"name": "q", "concurrency": 2}
        assert position == await backend.command_position()
        again, same = await backend.read_commands(position, wait=0.05)
        assert (again, same) == ([], position)

    async def test_a_waiting_reader_gets_a_command_sent_meanwhile(
        self, backend: TaskBackend, peer: TaskBackend
    ) -> None:
        """read_commands(wait=...) returns as soon as a command arrives, well before the wait."""
        start = await backend.command_position()
        reader = asyncio.ensure_future(backend.read_commands(start, wait=5.0))
        await asyncio.sleep(0.05)
        sent = time.monotonic()
        await peer.send_command(Command("cancel", "y", target="x", task_id="t9"))
        commands, _ = await reader
        assert time.monotonic() - sent < 2.0
        assert [(c.target, c.task_id) for c in commands] == [("x", "t9")]

    # ---- one-off schedules ---------------------------------------------------------------------

    async def test_scheduled_runs_put_once_listed_soonest_first(self, backend: TaskBackend) -> None:
        """put_scheduled inserts only unknown keys; list_scheduled orders by run_at, filters."""
        assert await backend.put_scheduled(ScheduledRun("late", 200.0, {"n": 2})) is True
        assert await backend.put_scheduled(ScheduledRun("soon", 100.0, {"n": 1})) is True
        assert await backend.put_scheduled(ScheduledRun("soon", 50.0, {"n": 9})) is False
        runs = await backend.list_scheduled()
        assert [(r.run_key, r.run_at, r.document) for r in runs] == [
            ("soon", 100.0, {"n": 1}),
            ("late", 200.0, {"n": 2}),
        ]
        assert [r.run_key for r in await backend.list_scheduled(before=150.0)] == ["soon"]
        assert await backend.list_scheduled(before=100.0) == []

    async def test_a_scheduled_run_is_taken_exactly_once(
        self, backend: TaskBackend, peer: TaskBackend
    ) -> None:
        """Of many concurrent takes of one run (two backend objects), exactly one gets it."""
        await backend.put_scheduled(ScheduledRun("k", 10.0, {"func_name": "f"}))
        taken = await asyncio.gather(
            *((backend if i % 2 else peer).take_scheduled("k") for i in range(10))
        )
        winners = [t for t in taken if t is not None]
        assert [(w.run_key, w.run_at, w.document) for w in winners] == [
            ("k", 10.0, {"func_name": "f"})
        ]
        assert await backend.list_scheduled() == []
        assert await backend.take_scheduled("k") is None

    async def test_concurrent_puts_of_scheduled_runs_lose_nothing(
        self, backend: TaskBackend, peer: TaskBackend
    ) -> None:
        """Twenty concurrent puts through two backend objects leave twenty runs."""
        await asyncio.gather(
            *(
                (backend if i % 2 else peer).put_scheduled(ScheduledRun(f"r{i:02d}", i, {}))
                for i in range(20)
            )
        )
        assert [r.run_key for r in await peer.list_scheduled()] == [f"r{i:02d}" for i in range(20)]

    # ---- the audit trail ---------------------------------------------------------------------

    async def test_audit_trail_lists_newest_first_within_its_bound(
        self, backend: TaskBackend
    ) -> None:
        """Entries read newest first, at most ``limit``; an append trims to the newest ``keep``."""
        for n in range(5):
            await backend.append_audit(audit_entry(f"e{n}"), keep=3)
        assert [e["entry_id"] for e in await backend.read_audit(10)] == ["e4", "e3", "e2"]
        assert [e["entry_id"] for e in await backend.read_audit(2)] == ["e4", "e3"]
        [newest] = await backend.read_audit(1)
        assert newest == audit_entry("e4")

    async def test_concurrent_audit_appends_lose_nothing(
        self, backend: TaskBackend, peer: TaskBackend
    ) -> None:
        """Forty appends at once through two backend objects: both read all forty."""
        ids = [f"e{n:02d}" for n in range(40)]
        await asyncio.gather(
            *(
                (backend if n % 2 else peer).append_audit(audit_entry(i), keep=100)
                for n, i in enumerate(ids)
            )
        )
        for reader in (backend, peer):
            assert sorted(e["entry_id"] for e in await reader.read_audit(100)) == ids

    async def test_concurrent_audit_appends_keep_the_bound(
        self, backend: TaskBackend, peer: TaskBackend
    ) -> None:
        """Thirty appends at once with ``keep=10`` leave ten entries, the same for every reader."""
        await asyncio.gather(
            *(
                (backend if n % 2 else peer).append_audit(audit_entry(f"e{n:02d}"), keep=10)
                for n in range(30)
            )
        )
        kept = [e["entry_id"] for e in await backend.read_audit(100)]
        assert len(kept) == 10
        assert [e["entry_id"] for e in await peer.read_audit(100)] == kept
        await backend.append_audit(audit_entry("last"), keep=10)
        assert [e["entry_id"] for e in await peer.read_audit(100)] == ["last", *kept[:9]]

    async def test_corrupt_or_repeated_audit_entries_are_read_once(
        self, backend: TaskBackend
    ) -> None:
        """A corrupt stored entry is skipped and counted; one stored twice is listed once."""
        await backend.append_audit(audit_entry("a"), keep=10)
        await backend._append_audit(GARBAGE, keep=10)
        await backend.append_audit(audit_entry("a"), keep=10)
        await backend.append_audit(audit_entry("b"), keep=10)
        before = backend.corrupt_rows
        assert [e["entry_id"] for e in await backend.read_audit(10)] == ["b", "a"]
        assert backend.corrupt_rows == before + 1

    async def test_an_old_audit_document_in_meta_is_moved_once(
        self, backend: TaskBackend, peer: TaskBackend
    ) -> None:
        """The trail an older version kept as one meta document becomes entries (newest first)
        and the document is emptied; two instances moving it at once move it once."""
        old = [audit_entry(f"old{n}", second=n) for n in (1, 0, 2)]  # written in any order
        await backend.set_meta(META_KEY, json.dumps(old))
        moved = await asyncio.gather(
            move_meta_document(backend, "i-1", keep=1000),
            move_meta_document(peer, "i-2", keep=1000),
        )
        assert True in moved
        assert not await peer.get_meta(META_KEY)
        await backend.append_audit(audit_entry("new", second=30), keep=1000)
        assert [e["entry_id"] for e in await peer.read_audit(100)] == [
            "new",
            "old2",
            "old1",
            "old0",
        ]
        assert await move_meta_document(peer, "i-2", keep=1000) is True
        assert len(await backend.read_audit(100)) == 4

    # ---- rate limits -------------------------------------------------------------------------

    async def test_rate_token_first_is_free_then_waits_an_interval(
        self, backend: TaskBackend
    ) -> None:
        """The first start of a limit is free; the next waits about one interval; keys are
        independent."""
        limit = RateLimit(1, per=10.0)
        assert await backend.take_rate_token("task:a", limit) == 0.0
        wait = await backend.take_rate_token("task:a", limit)
        assert 9.0 < wait <= 10.0
        assert await backend.take_rate_token("task:b", limit) == 0.0

    async def test_rate_token_refused_takes_nothing(self, backend: TaskBackend) -> None:
        """A refused start counts nothing: the wait does not grow with every ask."""
        limit = RateLimit(1, per=10.0)
        await backend.take_rate_token("k", limit)
        first = await backend.take_rate_token("k", limit)
        again = await backend.take_rate_token("k", limit)
        assert again <= first

    async def test_rate_token_burst(self, backend: TaskBackend) -> None:
        """With burst=3, three starts are free at once, then one per interval."""
        limit = RateLimit(5, per=10.0, burst=3)
        assert [await backend.take_rate_token("k", limit) for _ in range(3)] == [0.0] * 3
        assert 1.0 < await backend.take_rate_token("k", limit) <= 2.0

    async def test_rate_token_frees_up_after_the_interval(self, backend: TaskBackend) -> None:
        """Once the interval has passed the next start is free again."""
        limit = RateLimit(1, per=0.2)
        assert await backend.take_rate_token("k", limit) == 0.0
        assert await backend.take_rate_token("k", limit) > 0.0

        async def free() -> bool:
            return await backend.take_rate_token("k", limit) == 0.0

        await eventually(free, within=2.0)

    async def test_concurrent_rate_tokens_one_wins(
        self, backend: TaskBackend, peer: TaskBackend
    ) -> None:
        """Of many callers racing for one start (through two backend objects), one gets it."""
        limit = RateLimit(1, per=30.0)
        waits = await asyncio.gather(
            *((backend if i % 2 else peer).take_rate_token("k", limit) for i in range(10))
        )
        assert waits.count(0.0) == 1
        assert all(w > 0 for w in waits if w != 0.0)

    # ---- maintenance (key rotation) ----------------------------------------------------------

    async def test_journal_pages_every_owner_in_id_order(self, backend: TaskBackend) -> None:
        """journal_page walks entries of all owners by task id, with a cursor to the end."""
        await backend.journal_put([make_entry("j3"), make_entry("j1")], "A")
        await backend.journal_put([make_entry("j2"), make_entry("j4")], "B")
        first, cursor = await backend.journal_page(limit=3)
        assert [e.task_id for e in first] == ["j1", "j2", "j3"]
        assert cursor == "j3"
        rest, end = await backend.journal_page(after=cursor, limit=3)
        assert ([e.task_id for e in rest], end) == (["j4"], None)
        assert [e.owner for e in first] == ["A", "B", "A"]
        await backend.journal_release("A")
        released, _ = await backend.journal_page()
        assert [e.owner for e in released] == [None, "B", None, "B"]

    async def test_journal_update_keeps_owner_and_skips_removed(self, backend: TaskBackend) -> None:
        """journal_update rewrites existing entries only and leaves their owner as it was."""
        await backend.heartbeat("A", 30)
        await backend.journal_put([make_entry("u1"), make_entry("u2")], "A")
        await backend.journal_remove(["u2"])
        changed = [make_entry("u1", trace_context={"traceparent": "x"}), make_entry("u2")]
        changed[0].payload = b"new"
        assert await backend.journal_update(changed) == 1
        (owned,) = await backend.journal_owned("A")
        assert (owned.task_id, owned.payload, owned.trace_context) == (
            "u1",
            b"new",
            {"traceparent": "x"},
        )
        entries, _ = await backend.journal_page()
        assert [e.task_id for e in entries] == ["u1"]

    async def test_update_records_rewrites_only_existing(self, backend: TaskBackend) -> None:
        """update_records changes stored records in place and never resurrects a deleted one."""
        await backend.save_records([make_record("r1", encrypted_payload=b"old"), make_record("r2")])
        await backend.delete_records(["r2"])
        new = [make_record("r1", encrypted_payload=b"new"), make_record("r2")]
        assert await backend.update_records(new) == 1
        got = await backend.get_record("r1")
        assert got is not None
        assert got.encrypted_payload == b"new"
        assert await backend.get_record("r2") is None
        assert await all_pages(backend) == ["r1"]

    async def test_meta_round_trip(self, backend: TaskBackend) -> None:
        """Metadata is stored by key and overwritten by a second set."""
        assert await backend.get_meta("version") is None
        await backend.set_meta("version", "1")
        await backend.set_meta("version", "2")
        await backend.set_meta("other", "x")
        assert (await backend.get_meta("version"), await backend.get_meta("other")) == ("2", "x")

    async def test_describe_and_double_close(self, backend: TaskBackend) -> None:
        """describe() is a non-empty line; close() may be called twice."""
        assert backend.describe()
        assert "\n" not in backend.describe()
        await backend.close()
        await backend.close()

    # ---- the system of record: stats, throughput, change feed -------------------------------

    @pytest.fixture
    def keeps_stats(self, backend: TaskBackend) -> None:
        if not backend.system_of_record:
            pytest.skip("system_of_record is False: the backend keeps no stats or change feed")

    @pytest.mark.usefixtures("keeps_stats")
    async def test_stats_follow_each_write(self, backend: TaskBackend) -> None:
        """Counters per status and per queue and the histogram move with every record write."""
        a = make_record("a", 0, status=TaskStatus.PENDING)
        b = make_record("b", 1, status=TaskStatus.PENDING, queue="mail")
        await backend.save_records([a, b])
        stats = await backend.read_stats()
        assert stats.counts[TaskStatus.PENDING] == 2
        assert stats.queue("mail")[TaskStatus.PENDING] == 1
        assert stats.durations.total == 0
        a.status, a.start_time = TaskStatus.RUNNING, at(0)
        b.status, b.start_time, b.end_time = TaskStatus.SUCCESS, at(1), at(3)
        await backend.save_records([a, b])
        stats = await backend.read_stats()
        assert stats.counts[TaskStatus.PENDING] == 0
        assert stats.counts[TaskStatus.RUNNING] == 1
        assert stats.counts[TaskStatus.SUCCESS] == 1
        assert stats.queue("mail")[TaskStatus.SUCCESS] == 1
        assert stats.queue("mail")[TaskStatus.PENDING] == 0
        assert stats.queue("default")[TaskStatus.RUNNING] == 1
        assert stats.durations.total == 1
        assert abs(stats.durations.sum - 2.0) < 1e-6
        p50 = stats.durations.percentile(0.5)
        assert p50 is not None
        assert 1.6 < p50 < 2.5

    @pytest.mark.usefixtures("keeps_stats")
    async def test_rewriting_a_finished_record_counts_it_once(self, backend: TaskBackend) -> None:
        """Saving the same finished record again changes no counter and no throughput."""
        now = datetime.now(UTC)
        record = make_record("x", 0, start_time=now - timedelta(seconds=1), end_time=now)
        await backend.save_records([record])
        await backend.save_records([record])
        await backend.save_records([record, record])
        stats = await backend.read_stats(throughput=True)
        assert stats.counts[TaskStatus.SUCCESS] == 1
        assert stats.durations.total == 1
        assert stats.throughput[-1][1] == 1
        assert (
            sum(
                1
                for earlier, later in zip(stats.throughput, stats.throughput[1:], strict=False)
                if later[1] > earlier[1]
            )
            == 1
        )

    @pytest.mark.usefixtures("keeps_stats")
    async def test_deletes_take_their_share_away(self, backend: TaskBackend) -> None:
        """Deleting by id or before a date lowers the counters and the histogram to match."""
        records = [
            make_record(f"t{i}", i, start_time=at(i), status=s)
            for i, s in enumerate([TaskStatus.SUCCESS] * 4 + [TaskStatus.FAILED] * 2)
        ]
        records.append(make_record("live", 50, status=TaskStatus.RUNNING, start_time=at(50)))
        await backend.save_records(records)
        assert await backend.delete_records(["t0", "t5", "missing"]) == 2
        assert await backend.delete_records_before(at(3.5)) == 2  # t1 and t2 ended at 2 and 3
        stats = await backend.read_stats()
        stored = await backend.count_by_status()
        assert {s.value: n for s, n in stats.counts.items() if n} == stored
        assert stats.durations.total == stored.get("success", 0) + stored.get("failed", 0)
        assert stats.queue("default")[TaskStatus.RUNNING] == 1

    @pytest.mark.usefixtures("keeps_stats")
    async def test_concurrent_writers_keep_stats_exact(
        self, backend: TaskBackend, peer: TaskBackend
    ) -> None:
        """Two connections moving the same records at once leave counters equal to the rows."""
        records = [make_record(f"c{i}", i, status=TaskStatus.PENDING) for i in range(40)]
        await backend.save_records(records)
        done = [
            make_record(f"c{i}", i, status=TaskStatus.SUCCESS, start_time=at(i)) for i in range(40)
        ]
        running = [
            make_record(f"c{i}", i, status=TaskStatus.RUNNING, start_time=at(i)) for i in range(40)
        ]
        await asyncio.gather(
            *(backend.save_records(done[i : i + 5]) for i in range(0, 40, 5)),
            *(peer.save_records(running[i : i + 5]) for i in range(0, 40, 5)),
        )
        stats = await peer.read_stats()
        stored = await backend.count_by_status()
        assert {s.value: n for s, n in stats.counts.items() if n} == stored
        assert sum(stored.values()) == 40
        assert stats.durations.total == stored.get("success", 0)

    @pytest.mark.usefixtures("keeps_stats")
    async def test_change_feed_lists_each_batch_after_a_cursor(
        self, backend: TaskBackend, peer: TaskBackend
    ) -> None:
        """Every write batch is one entry (origin, ids), seen by every connection, in order."""
        start = await peer.read_changes(None)
        assert start.entries == []
        await backend.save_records([make_record("a", 0), make_record("b", 1)], origin="one")
        await backend.save_records([make_record("a", 0, status=TaskStatus.FAILED)], origin="two")
        page = await peer.read_changes(start.cursor)
        assert page.entries == [("one", ["a", "b"]), ("two", ["a"])]
        assert not page.gap
        assert page.task_ids(skip_origin="two") == {"a", "b"}
        assert (await peer.read_changes(page.cursor)).entries == []
        first = await peer.read_changes(start.cursor, limit=1)
        assert first.entries == [("one", ["a", "b"])]
        assert (await peer.read_changes(first.cursor)).entries == [("two", ["a"])]
        assert (await backend.read_changes(None)).cursor == page.cursor

    @pytest.mark.usefixtures("keeps_stats")
    async def test_get_records_reads_several_at_once(self, backend: TaskBackend) -> None:
        """get_records returns the records that exist among the ids asked for."""
        await backend.save_records([make_record("a", 0), make_record("b", 1)])
        found = await backend.get_records(["b", "missing", "a"])
        assert sorted(r.task_id for r in found) == ["a", "b"]
        assert await backend.get_records([]) == []
