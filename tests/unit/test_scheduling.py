"""Schedules: every/cron slots, one firing per slot across instances, failures that do not stop
the scheduler, catch-up, and one-off runs that survive a restart."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from control_helpers import BackendFactory, SharedMemoryBackend, running, wait_until

from fastapi_taskflow import QueueConfig, TaskManager, TaskRegistry, TaskStatus
from fastapi_taskflow.backends.base import ScheduledRun, TaskBackend
from fastapi_taskflow.scheduling import CronTrigger, EveryTrigger, Scheduler, slot_label


def scheduled(tm: TaskManager) -> list[object]:
    return [r for r in tm.store.newest_first() if r.source == "scheduled"]


async def test_every_fires_repeatedly_through_the_enqueue_path() -> None:
    """every=0.05 fires again and again; each run is a task record with source 'scheduled'."""
    registry = TaskRegistry()
    three = asyncio.Event()
    runs: list[int] = []

    @registry.schedule(every=0.05)
    async def tick() -> None:
        runs.append(1)
        if len(runs) >= 3:
            three.set()

    async with running(registry=registry) as tm:
        await asyncio.wait_for(three.wait(), 5)
        records = [r for r in tm.store.newest_first() if r.source == "scheduled"]
        assert records
        name = tm.registry.definition_for(tick).name
        assert all(r.tags["schedule"] == name for r in records)
    assert tick.__name__ == "tick"  # the decorator returns the function unchanged


async def test_scheduler_keeps_going_after_failed_firings() -> None:
    """A firing refused by a full queue is logged and counted; later slots still fire."""
    registry = TaskRegistry()
    release = asyncio.Event()
    runs: list[int] = []

    @registry.schedule(every=0.02, queue="cron")
    async def busy() -> None:
        runs.append(1)
        await release.wait()

    queues = {"cron": QueueConfig(concurrency=1, max_size=1)}
    async with running(registry=registry, queues=queues) as tm:
        await wait_until(lambda: tm.scheduler.failures >= 2)  # one running, one waiting: full
        rejected = [r for r in tm.store.newest_first() if r.status is TaskStatus.REJECTED]
        assert rejected
        release.set()
        before = len(runs)
        await wait_until(lambda: len(runs) >= before + 3)
        assert tm.metrics()["schedule_failures"] == tm.scheduler.failures


async def test_task_that_raises_does_not_stop_its_schedule() -> None:
    """A scheduled task failing every time is FAILED each time and keeps being fired."""
    registry = TaskRegistry()
    runs: list[int] = []

    @registry.schedule(every=0.02)
    async def broken() -> None:
        runs.append(1)
        raise RuntimeError("boom")

    async with running(registry=registry) as tm:
        await wait_until(lambda: len(runs) >= 3)
        assert tm.store.counts()[TaskStatus.FAILED] >= 2
        assert tm.scheduler.failures == 0


async def test_run_on_startup_fires_once_at_startup() -> None:
    """run_on_startup=True enqueues one run during startup()."""
    registry = TaskRegistry()

    @registry.schedule(every=3600, run_on_startup=True)
    async def warm() -> None:
        return None

    async with running(registry=registry) as tm:
        assert len(scheduled(tm)) == 1
        await tm.join(timeout=5)


@pytest.mark.parametrize(("missed_slots", "expected"), [(1, 1), (10, 1), (0, 0), (None, 0)])
async def test_catch_up_fires_a_missed_slot_once(
    missed_slots: int | None, expected: int, shared_backend: BackendFactory
) -> None:
    """catch_up=True fires the latest missed slot once at startup, however many were missed."""
    registry = TaskRegistry()
    backend = shared_backend()
    await backend.open()

    @registry.schedule(every=3600, catch_up=True, name="report")
    async def report() -> None:
        return None

    now = time.time()
    latest = EveryTrigger(3600).latest(now)
    if missed_slots is not None:
        await backend.set_meta("schedule:report:last", repr(latest - 3600 * missed_slots))
    async with running(registry=registry, snapshot_backend=backend, close_backend=False) as tm:
        assert len(scheduled(tm)) == expected
        await tm.join(timeout=5)
    if expected:
        assert await backend.get_meta("schedule:report:last") == repr(latest)


async def test_shared_backend_fires_each_slot_on_one_instance(
    shared_backend: BackendFactory,
) -> None:
    """Two instances sharing a backend never both fire one slot."""
    registry = TaskRegistry()
    fired: list[str] = []

    @registry.schedule(every=0.03, name="shared-tick")
    async def tick() -> None:
        context = __import__("fastapi_taskflow").get_task_context()
        fired.append(context.tags["slot"])

    async with (
        running(registry=registry, snapshot_backend=shared_backend(), close_backend=False),
        running(registry=registry, snapshot_backend=shared_backend(), close_backend=False),
    ):
        await wait_until(lambda: len(fired) >= 5)
    assert len(fired) == len(set(fired))


async def test_a_slot_due_as_the_manager_stops_still_takes_its_lock() -> None:
    """A firing already on its way when the scheduler stops asks the shared backend for the
    slot's lock like any other: it never fires a slot another instance took."""
    registry = TaskRegistry()

    @registry.schedule(every=3600, name="hourly")
    async def hourly() -> None:
        pass

    backend = SharedMemoryBackend()
    async with running(registry=registry, snapshot_backend=backend) as manager:
        scheduler = manager.scheduler
        state = scheduler._periodic[0]
        slot = state.trigger.first_after(time.time())
        assert await backend.acquire_lock(f"schedule:hourly:{slot_label(slot)}", "other", 60)
        scheduler._due(state, slot)  # the slot's timer goes off right before the stop
        await scheduler.stop()
        assert scheduler.fired == 0
        assert manager.metrics()["total"] == 0


class FrozenClock:
    """A wall clock stopped at ``now``, counting how often the scheduler reads it."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


class RecordingHost:
    """What a manager gives its scheduler; each firing's slot is recorded, nothing runs."""

    def __init__(self, registry: TaskRegistry, backend: TaskBackend, instance_id: str) -> None:
        self.registry = registry
        self.backend = backend
        self.cipher = None
        self.instance_id = instance_id
        self.fired: list[str] = []  # the slot of each periodic firing, the run of a one-off

    def enqueue_definition(
        self, definition: object, args: object, kwargs: object, **options: Any
    ) -> None:
        self.fired.append(options["tags"].get("slot") or options["tags"]["run"])


def minute_registry(catch_up: bool = False) -> TaskRegistry:
    registry = TaskRegistry()

    @registry.schedule(every=60, name="minute", catch_up=catch_up)
    async def minute() -> None:
        return None

    return registry


SLOT = 1_800_000_000.0  # a whole minute: the slot every=60 fires next when the clock is just before


async def test_an_instance_stopping_as_a_slot_falls_due_never_fires_it_beside_another() -> None:
    """A firing whose timer went off just before stop() fires nothing: it must not fire the slot
    as if alone (no lock) while the instance that goes on fires it too."""
    registry, backend = minute_registry(), SharedMemoryBackend()
    going_on = Scheduler(RecordingHost(registry, backend, "a"), clock=FrozenClock(SLOT - 0.001))
    stopping_clock = FrozenClock(SLOT - 0.001)
    stopping = Scheduler(RecordingHost(registry, backend, "b"), clock=stopping_clock)
    await going_on.start()
    await stopping.start()
    # Step the loop until the stopping instance's timer has gone off (it reads the clock to arm
    # the next slot). This test's step was queued before that timer ran, so it runs before the
    # firing's first step, as a loaded loop runs a shutdown between the two. An event could not
    # do it: its waiter would wake after the firing's first step.
    reads = stopping_clock.reads
    while stopping_clock.reads == reads:  # noqa: ASYNC110 (the order of steps is the point)
        await asyncio.sleep(0)
    await stopping.stop()
    await going_on.stop()
    assert going_on.manager.fired + stopping.manager.fired == [slot_label(SLOT)]


class SlowLocks(SharedMemoryBackend):
    """Slot locks answered when the test says so: a firing held mid-way, as by a slow backend."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = asyncio.Event()
        self.answer = asyncio.Event()

    async def acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        self.asked.set()
        await self.answer.wait()
        return await super().acquire_lock(name, owner, ttl)


async def test_a_firing_in_flight_at_stop_still_records_its_slot_for_catch_up() -> None:
    """stop() lets a firing in flight finish: it fires and records its slot, so the next start
    does not fire that slot again as missed."""
    backend = SlowLocks()
    host = RecordingHost(minute_registry(catch_up=True), backend, "a")
    scheduler = Scheduler(host, clock=FrozenClock(SLOT - 0.001))
    await scheduler.start()
    await backend.asked.wait()
    backend.answer.set()  # the lock is answered after stop() began
    await scheduler.stop()
    assert host.fired == [slot_label(SLOT)]
    assert await backend.get_meta("schedule:minute:last") == repr(SLOT)


class SlowTakes(SharedMemoryBackend):
    """One-off rows handed over when the test says so: a run taken mid-way by a slow backend."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = asyncio.Event()
        self.answer = asyncio.Event()

    async def take_scheduled(self, run_key: str) -> ScheduledRun | None:
        self.asked.set()
        await self.answer.wait()
        return await super().take_scheduled(run_key)


async def test_a_one_off_run_taken_as_stop_begins_still_fires() -> None:
    """A one-off run whose row was being taken when stop() began fires: the row is gone from
    the backend, so no instance would ever fire it otherwise."""
    registry, backend = minute_registry(), SlowTakes()
    host = RecordingHost(registry, backend, "a")
    scheduler = Scheduler(host, clock=FrozenClock(SLOT))

    async def report() -> None:
        return None

    await scheduler.start()
    await scheduler.schedule_once(
        report,
        (),
        {},
        run_at=timedelta(0),
        run_key="r1",
        tags={"run": "r1"},
        priority=None,
        queue=None,
        idempotency_key=None,
    )
    await backend.asked.wait()
    backend.answer.set()  # the row is handed over after stop() began
    await scheduler.stop()
    assert host.fired == ["r1"]
    assert await backend.list_scheduled() == []


def test_every_slots_are_epoch_multiples_without_float_repeats() -> None:
    """every= slots are interval multiples; stepping slot to slot never repeats one."""
    trigger = EveryTrigger(0.05)
    slot = trigger.first_after(1_700_000_000.123)
    assert slot > 1_700_000_000.123
    labels = set()
    for _ in range(2000):
        labels.add(slot_label(slot))
        following = trigger.after(slot)
        assert following > slot
        slot = following
    assert len(labels) == 2000
    assert EveryTrigger(60).latest(125.0) == 120.0


def test_cron_slots_follow_the_time_zone_and_dst() -> None:
    """cron='0 9 * * *' in Europe/Paris is 08:00 UTC in winter and 07:00 UTC in summer."""
    trigger = CronTrigger("0 9 * * *", ZoneInfo("Europe/Paris"))
    winter = trigger.first_after(datetime(2024, 1, 1, tzinfo=UTC).timestamp())
    summer = trigger.first_after(datetime(2024, 7, 1, tzinfo=UTC).timestamp())
    assert datetime.fromtimestamp(winter, UTC) == datetime(2024, 1, 1, 8, tzinfo=UTC)
    assert datetime.fromtimestamp(summer, UTC) == datetime(2024, 7, 1, 7, tzinfo=UTC)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({}, "every"),
        ({"every": 1, "cron": "* * * * *"}, "every"),
        ({"every": 0}, "every"),
        ({"every": True}, "every"),
        ({"cron": "not a cron"}, "cron"),
        ({"every": 5, "timezone": "Mars/Olympus"}, "timezone"),
        ({"every": 5, "run_on_startup": "yes"}, "run_on_startup"),
        ({"every": 5, "catch_up": 1}, "catch_up"),
        ({"every": 5, "retries": -1}, "retries"),
    ],
)
def test_schedule_options_are_validated_at_decoration(
    options: dict[str, object], named: str
) -> None:
    """@schedule(...) refuses bad options at once, naming them."""
    with pytest.raises(ValueError, match=named):
        TaskRegistry().schedule(**options)


def test_cron_without_croniter_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """cron= without the optional croniter names the extra to install."""
    monkeypatch.setitem(sys.modules, "croniter", None)
    with pytest.raises(ImportError, match=r"fastapi-taskflow\[scheduler\]"):
        TaskRegistry().schedule(cron="* * * * *")


async def test_schedule_once_runs_once_and_is_listed_until_then(
    maybe_backend: Callable[[], dict[str, Any]],
) -> None:
    """schedule_once runs the call at run_at; list_scheduled shows it until it fires."""
    done = asyncio.Event()
    seen: list[tuple[int, str]] = []

    async def send(count: int, *, to: str) -> None:
        seen.append((count, to))
        done.set()

    async with running(**maybe_backend()) as tm:
        key = await tm.schedule_once(
            send, 3, to="ops", run_at=timedelta(seconds=0.05), tags={"kind": "reminder"}
        )
        listed = await tm.list_scheduled()
        assert [r["run_key"] for r in listed] == [key]
        assert listed[0]["tags"] == {"kind": "reminder"}
        await asyncio.wait_for(done.wait(), 5)
        await tm.join(timeout=5)
        assert await tm.list_scheduled() == []
        record = scheduled(tm)[0]
        assert record.tags == {"kind": "reminder"}
    assert seen == [(3, "ops")]


async def test_cancel_scheduled_prevents_the_run(
    maybe_backend: Callable[[], dict[str, Any]],
) -> None:
    """cancel_scheduled(run_key) stops a waiting one-off; unknown keys give False."""
    ran: list[int] = []

    async def job() -> None:
        ran.append(1)

    async with running(**maybe_backend()) as tm:
        key = await tm.schedule_once(job, run_at=timedelta(seconds=0.05), run_key="r1")
        assert key == "r1"
        assert await tm.schedule_once(job, run_at=timedelta(hours=1), run_key="r1") == "r1"
        assert await tm.cancel_scheduled("r1") is True
        assert await tm.cancel_scheduled("r1") is False
        assert await tm.list_scheduled() == []
        later = await tm.schedule_once(job, run_at=datetime.now(UTC) + timedelta(hours=2))
        soon = await tm.schedule_once(job, run_at=timedelta(hours=1))
        before = datetime.now(UTC) + timedelta(minutes=90)
        assert [r["run_key"] for r in await tm.list_scheduled(before=before)] == [soon]
        assert {r["run_key"] for r in await tm.list_scheduled()} == {soon, later}
    assert ran == []


async def test_one_off_runs_survive_a_restart_with_their_arguments(
    shared_backend: BackendFactory,
) -> None:
    """A one-off saved in the backend fires after a restart, with arguments of the same types."""
    registry = TaskRegistry()
    got: list[object] = []
    done = asyncio.Event()

    @registry.task(name="remind")
    async def remind(when: datetime, pair: tuple[int, int]) -> None:
        got.extend([when, pair])
        done.set()

    moment = datetime(2030, 1, 2, 3, 4, tzinfo=UTC)
    first = shared_backend()
    async with running(registry=registry, snapshot_backend=first, close_backend=False) as tm:
        key = await tm.schedule_once(remind, moment, (1, 2), run_at=timedelta(hours=1))
    second = TaskManager(registry=registry, snapshot_backend=shared_backend(), close_backend=False)
    second.scheduler.clock = lambda: time.time() + 7200  # two hours later: it is due
    await second.startup()
    try:
        await asyncio.wait_for(done.wait(), 5)
        await second.join(timeout=5)
        assert await second.list_scheduled() == []
    finally:
        await second.shutdown()
    assert got == [moment, (1, 2)]
    assert key


async def test_schedule_once_validates_its_options() -> None:
    """schedule_once refuses a bad run_at, run_key, priority or tags, naming them."""

    async def job() -> None:
        return None

    async with running() as tm:
        for bad, named in [
            ({"run_at": "tomorrow"}, "run_at"),
            ({"run_at": timedelta(1), "run_key": ""}, "run_key"),
            ({"run_at": timedelta(1), "priority": "high"}, "priority"),
            ({"run_at": timedelta(1), "tags": {"a": 1}}, "tags"),
        ]:
            with pytest.raises(ValueError, match=named):
                await tm.schedule_once(job, **bad)  # type: ignore[arg-type]
