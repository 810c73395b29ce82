"""Schedules: periodic tasks (``every=`` seconds or ``cron=``) and one-off runs.

Every firing goes through the manager's one enqueue path with ``source="scheduled"``.

* Timers, not polling: each schedule has one asyncio timer, armed for its next slot.
* Slots: ``every=`` slots are multiples of the interval since the Unix epoch (so instances agree
  on them without talking); ``cron=`` slots come from croniter in the schedule's time zone.
* With a shared backend, the instance that takes the lock ``schedule:{name}:{slot}`` fires the
  slot; the others skip it. Exactly one firing per slot.
* A failed firing (queue full, backend down) is logged and counted (``failures``); the schedule
  goes on. A task that raises is its own FAILED record and never touches the scheduler.
* ``catch_up=True``: at startup, the latest slot missed while the app was down fires once (the
  last fired slot is kept in backend meta), never once per missed slot.
* One-off runs (``schedule_once``) live in memory and, with a backend, as backend rows (put
  atomically, so concurrent calls on several instances lose none). The instance that takes a
  run's row when it falls due fires it; a sweep arms runs saved by other instances, so a run
  fires even when the instance that scheduled it is gone. See docs/task-control.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .backends.base import ScheduledRun
from .registry import ScheduleDefinition, TaskDefinition
from .schedules import CronTrigger, EveryTrigger, Trigger, load_zone
from .serialization import decode_call, encode_call
from .validation import check_call_options

if TYPE_CHECKING:
    from .backends.base import TaskBackend
    from .crypto import ArgumentCipher
    from .models import TaskSource
    from .registry import TaskRegistry

logger = logging.getLogger("fastapi_taskflow.scheduling")

F = TypeVar("F", bound=Callable[..., Any])
STARTUP_LOCK_TTL = 30.0  # instances starting within this window share one run_on_startup run
ONCE_INDEX_KEY = "schedule:once"  # where versions before the rows kept one-off runs
ONCE_RETRY = 5.0  # seconds before a one-off whose row could not be taken is tried again


# ---- triggers: when slots fall -----------------------------------------------------------------


def make_trigger(schedule: ScheduleDefinition) -> Trigger:
    if schedule.every is not None:
        return EveryTrigger(schedule.every)
    return CronTrigger(schedule.cron, load_zone(schedule.timezone))


def slot_label(slot: float) -> str:
    return datetime.fromtimestamp(slot, UTC).isoformat(timespec="microseconds")


# ---- state -------------------------------------------------------------------------------------


@dataclass(eq=False)
class Periodic:
    """One ``@schedule`` while the manager runs."""

    schedule: ScheduleDefinition
    trigger: Trigger
    timer: asyncio.TimerHandle | None = None
    fired: int = 0
    failures: int = 0

    @property
    def name(self) -> str:
        return self.schedule.task.name

    @property
    def lock_ttl(self) -> float:
        interval = self.schedule.every if self.schedule.every is not None else 3600.0
        return max(60.0, min(2 * interval, 86_400.0))


@dataclass(eq=False)
class OnceRun:
    """One ``schedule_once`` call waiting for its time."""

    run_key: str
    definition: TaskDefinition
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    run_at: float
    tags: dict[str, str] = field(default_factory=dict)
    priority: int | None = None
    queue: str | None = None
    idempotency_key: str | None = None
    timer: asyncio.TimerHandle | None = None

    def describe(self) -> dict[str, Any]:
        fields = {
            "tags": self.tags,
            "priority": self.priority,
            "queue": self.queue,
            "idempotency_key": self.idempotency_key,
        }
        return _describe(self.run_key, self.definition.name, self.run_at, fields)

    def to_json(self, cipher: ArgumentCipher | None) -> dict[str, Any]:
        payload = encode_call(self.args, self.kwargs)
        if cipher is not None:
            payload = cipher.encrypt(payload)
        return {
            "func_name": self.definition.name,
            "payload": base64.b64encode(payload).decode("ascii"),
            "encrypted": cipher is not None,
            "run_at": self.run_at,
            "tags": self.tags,
            "priority": self.priority,
            "queue": self.queue,
            "idempotency_key": self.idempotency_key,
        }

    @classmethod
    def from_json(
        cls,
        run_key: str,
        data: dict[str, Any],
        definition: TaskDefinition,
        cipher: ArgumentCipher | None,
    ) -> OnceRun:
        payload = base64.b64decode(data["payload"])
        if data.get("encrypted"):
            if cipher is None:
                raise ValueError("its arguments are encrypted and no key is configured")
            payload = cipher.decrypt(payload)
        args, kwargs = decode_call(payload)
        return cls(
            run_key=run_key,
            definition=definition,
            args=args,
            kwargs=kwargs,
            run_at=float(data["run_at"]),
            tags=dict(data.get("tags") or {}),
            priority=data.get("priority"),
            queue=data.get("queue"),
            idempotency_key=data.get("idempotency_key"),
        )


def _same_run(run: OnceRun, row: ScheduledRun) -> bool:
    """The row is the one this run saved (same time and task), so the run in memory may fire:
    it also holds functions that were never registered, which a row cannot name."""
    return row.run_at == run.run_at and row.document.get("func_name") == run.definition.name


def _describe(run_key: str, func_name: str, run_at: float, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_key": run_key,
        "func_name": func_name,
        "run_at": datetime.fromtimestamp(run_at, UTC).isoformat(),
        "tags": dict(data.get("tags") or {}),
        "priority": data.get("priority"),
        "queue": data.get("queue"),
        "idempotency_key": data.get("idempotency_key"),
    }


def _timestamp(run_at: Any, clock: Callable[[], float]) -> float:
    if isinstance(run_at, timedelta):
        return clock() + run_at.total_seconds()
    if isinstance(run_at, datetime):
        # A naive datetime is taken as UTC (documented), never as the server's local time.
        return (run_at if run_at.tzinfo else run_at.replace(tzinfo=UTC)).timestamp()
    raise ValueError(f"run_at must be a datetime or a timedelta, got {run_at!r}")


# ---- the scheduler -----------------------------------------------------------------------------


class ScheduleHost(Protocol):
    """What the scheduler uses of its manager: the tasks declared, the backend that shares
    runs between instances, the key that seals saved arguments, and the one enqueue path."""

    @property
    def registry(self) -> TaskRegistry: ...

    @property
    def backend(self) -> TaskBackend | None: ...

    @property
    def cipher(self) -> ArgumentCipher | None: ...

    @property
    def instance_id(self) -> str: ...

    def enqueue_definition(
        self,
        definition: TaskDefinition,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        source: TaskSource,
        tags: dict[str, str] | None = None,
        priority: int | None = None,
        queue: str | None = None,
        idempotency_key: str | None = None,
    ) -> object: ...


class Scheduler:
    """Fires a manager's schedules and one-off runs; started and stopped by the manager.

    ``clock`` (wall-clock seconds since the epoch) decides slots; replace it in tests.
    """

    def __init__(
        self,
        manager: ScheduleHost,
        clock: Callable[[], float] = time.time,
        sweep_interval: float = 10.0,
    ) -> None:
        self.manager = manager
        self.clock = clock
        self.fired = 0
        self.failures = 0
        self._periodic: list[Periodic] = []
        self._once: dict[str, OnceRun] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._sweep_stop = asyncio.Event()
        # Seconds between looks for one-off runs other instances saved.
        self.sweep_interval = sweep_interval
        self._inflight: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False

    @property
    def backend(self) -> TaskBackend | None:
        return self.manager.backend if self._running else None

    async def start(self) -> None:
        """Fire startup and catch-up runs, arm every timer, load saved one-off runs."""
        self._loop = asyncio.get_running_loop()
        self._running = True
        self._periodic = [Periodic(s, make_trigger(s)) for s in self.manager.registry.schedules]
        for state in self._periodic:
            await self._begin(state)
        await self._load_once()

    async def stop(self) -> None:
        """Disarm every timer and let firings in flight finish (briefly)."""
        saved = self.backend is not None
        self._running = False
        for state in self._periodic:
            if state.timer is not None:
                state.timer.cancel()
        for run in self._once.values():
            if run.timer is not None:
                run.timer.cancel()
                run.timer = None
        if saved:
            self._once.clear()  # they live in the backend; the next start reads them there
        # Told, not cancelled or awaited: it ends at its next wake-up (never mid backend call),
        # and shutdown goes on to settle waiting tasks without yielding to the loop here.
        self._sweep_stop.set()
        self._sweeper = None
        if self._inflight:
            _, late = await asyncio.wait(self._inflight, timeout=5.0)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    def stats(self) -> list[dict[str, Any]]:
        """Each periodic schedule with its counters (for the API and the dashboard)."""
        return [
            {
                "name": s.name,
                "every": s.schedule.every,
                "cron": s.schedule.cron,
                "timezone": s.schedule.timezone,
                "fired": s.fired,
                "failures": s.failures,
            }
            for s in self._periodic
        ]

    # ---- periodic ------------------------------------------------------------------------------

    async def _begin(self, state: Periodic) -> None:
        now = self.clock()
        if state.schedule.run_on_startup:
            await self._fire(state, now, f"schedule:{state.name}:startup", STARTUP_LOCK_TTL)
        elif state.schedule.catch_up:
            missed = await self._missed(state, now)
            if missed is not None:
                await self._fire_slot(state, missed)
        self._arm(state, state.trigger.first_after(now))

    def _arm(self, state: Periodic, slot: float) -> None:
        assert self._loop is not None
        delay = max(0.0, slot - self.clock())
        state.timer = self._loop.call_later(delay, self._due, state, slot)

    def _due(self, state: Periodic, slot: float) -> None:
        if not self._running:
            return
        self._spawn(self._fire_slot(state, slot))
        following = state.trigger.after(slot)
        now = self.clock()
        if following <= now:  # the loop was blocked past a slot: skip ahead, never burst
            following = state.trigger.first_after(now)
        self._arm(state, following)

    async def _fire_slot(self, state: Periodic, slot: float) -> None:
        await self._fire(state, slot, f"schedule:{state.name}:{slot_label(slot)}", state.lock_ttl)

    async def _fire(self, state: Periodic, slot: float, lock: str, ttl: float) -> None:
        if not self._running:
            # stop() ran after the timer spawned this firing, before its first step (a loaded
            # loop does that): the slot is left to the instances that go on, as _due leaves it.
            # Fired now, it would skip the lock (no backend once stopped) and fire beside them.
            return
        # Read once: self.backend is None once stopped, and a firing in flight at stop() must
        # still lock and remember its slot on the backend it began with.
        backend = self.backend
        label = slot_label(slot)
        try:
            if not await self._acquire(backend, lock, ttl):
                return  # another instance fires this slot
            self.manager.enqueue_definition(
                state.schedule.task,
                (),
                {},
                source="scheduled",
                tags={"schedule": state.name, "slot": label},
            )
        except Exception:  # queue full, backend down, bad arguments: the schedule goes on
            state.failures += 1
            self._failed(f"schedule {state.name!r}, slot {label}")
            return
        state.fired += 1
        self.fired += 1
        if state.schedule.catch_up:
            await self._remember(backend, state, slot)

    async def _missed(self, state: Periodic, now: float) -> float | None:
        """The latest slot before ``now`` if it was never fired (needs a backend)."""
        backend = self.backend
        if backend is None:
            logger.warning(
                "schedule %r: catch_up needs a backend to remember fired slots", state.name
            )
            return None
        try:
            last = await backend.get_meta(f"schedule:{state.name}:last")
        except Exception:
            self._failed(f"reading the last slot of schedule {state.name!r}")
            return None
        latest = state.trigger.latest(now)
        if last is None or float(last) >= latest - 1e-6:
            return None  # never ran before (nothing missed), or nothing missed
        return latest

    async def _remember(self, backend: TaskBackend | None, state: Periodic, slot: float) -> None:
        if backend is None:
            return
        try:
            await backend.set_meta(f"schedule:{state.name}:last", repr(slot))
        except Exception:
            self._failed(f"saving the last slot of schedule {state.name!r}")

    # ---- one-off runs --------------------------------------------------------------------------

    async def schedule_once(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        run_at: datetime | timedelta,
        run_key: str | None,
        tags: dict[str, str] | None,
        priority: int | None,
        queue: str | None,
        idempotency_key: str | None,
    ) -> str:
        """Keep a one-off run (a backend row when a backend exists); returns its run key.

        A run key that is already waiting is returned unchanged (scheduling is idempotent).
        """
        clean_tags = check_call_options(
            idempotency_key=idempotency_key, priority=priority, queue=queue, tags=tags
        )
        if run_key is not None and (not isinstance(run_key, str) or not run_key):
            raise ValueError(f"run_key must be a non-empty string or None, got {run_key!r}")
        when = _timestamp(run_at, self.clock)
        key = run_key or uuid.uuid4().hex
        if key in self._once:
            return key
        definition = self.manager.registry.definition_for(func)
        run = OnceRun(
            key,
            definition,
            tuple(args),
            dict(kwargs),
            when,
            clean_tags,
            priority,
            queue,
            idempotency_key,
        )
        backend = self.backend
        if backend is not None and not await backend.put_scheduled(self._row(run)):
            return key  # waiting already (scheduled by another instance)
        self._once[key] = run
        if self._running:
            self._arm_once(run, when)
        return key

    async def cancel_once(self, run_key: str) -> bool:
        run = self._once.pop(run_key, None)
        if run is not None and run.timer is not None:
            run.timer.cancel()
        backend = self.backend
        taken = await backend.take_scheduled(run_key) if backend is not None else None
        return run is not None or taken is not None

    async def list_once(self, before: datetime | None = None) -> list[dict[str, Any]]:
        limit = _timestamp(before, self.clock) if before is not None else math.inf
        backend = self.backend
        if backend is None:
            found = [run.describe() for run in self._once.values() if run.run_at < limit]
        else:
            rows = await backend.list_scheduled(limit if before is not None else None)
            found = [
                _describe(row.run_key, str(row.document.get("func_name")), row.run_at, row.document)
                for row in rows
            ]
        return sorted(found, key=lambda r: (str(r["run_at"]), str(r["run_key"])))

    def _row(self, run: OnceRun) -> ScheduledRun:
        return ScheduledRun(run.run_key, run.run_at, run.to_json(self.manager.cipher))

    def _arm_once(self, run: OnceRun, when: float) -> None:
        assert self._loop is not None
        delay = max(0.0, when - self.clock())
        run.timer = self._loop.call_later(delay, self._spawn_once, run)

    def _spawn_once(self, run: OnceRun) -> None:
        if self._running:
            self._spawn(self._fire_once(run))

    async def _fire_once(self, run: OnceRun) -> None:
        """Take the run's row (exactly one instance gets it) and enqueue what the row says."""
        key = run.run_key
        if self._once.get(key) is not run:
            return  # cancelled meanwhile
        backend = self.backend
        if backend is not None:
            try:
                taken = await backend.take_scheduled(key)
            except Exception:
                self._failed(f"one-off run {key!r} (tried again in {ONCE_RETRY:g}s)")
                self._arm_once(run, self.clock() + ONCE_RETRY)
                return
            # pop: stop() may have cleared the runs meanwhile, and this one's row is taken now.
            self._once.pop(key, None)
            if taken is None:
                return  # fired or cancelled by another instance
            if not _same_run(run, taken):  # replaced under the same key by another instance
                fired = self._restore(key, taken.document)
                if fired is None:
                    return  # unreadable: logged
                run = fired
        else:
            del self._once[key]
        self._enqueue_once(run)

    def _enqueue_once(self, run: OnceRun) -> None:
        try:
            self.manager.enqueue_definition(
                run.definition,
                run.args,
                run.kwargs,
                source="scheduled",
                tags=run.tags,
                priority=run.priority,
                queue=run.queue,
                idempotency_key=run.idempotency_key,
            )
            self.fired += 1
        except Exception:  # e.g. QueueFullError: the REJECTED record says so too
            self._failed(f"one-off run {run.run_key!r}")

    async def _load_once(self) -> None:
        """Save runs made before startup, then arm a timer for every saved run due soon."""
        backend = self.backend
        if backend is None:
            for run in self._once.values():
                self._arm_once(run, run.run_at)
            return
        await self._migrate_index(backend)
        early, self._once = self._once, {}
        for run in early.values():
            try:
                await backend.put_scheduled(self._row(run))
            except Exception:
                self._failed(f"saving one-off run {run.run_key!r}")
                self._once[run.run_key] = run  # runs here at least
                self._arm_once(run, run.run_at)
        try:
            await self._adopt_saved()
        except NotImplementedError as exc:
            logger.warning("one-off runs are not saved: %s", exc)
            return
        assert self._loop is not None
        self._sweep_stop = asyncio.Event()
        self._sweeper = self._loop.create_task(self._sweep(), name="taskflow-once-sweep")

    async def _sweep(self) -> None:
        """Arm runs other instances saved since (their instance may be gone when they fall due)."""
        stop = self._sweep_stop
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.sweep_interval)
            if stop.is_set() or not self._running:
                return
            try:
                await self._adopt_saved(self.clock() + 2 * self.sweep_interval)
            except NotImplementedError:
                return  # said once, at startup

    async def _adopt_saved(self, horizon: float | None = None) -> None:
        backend = self.backend
        if backend is None:
            return
        try:
            rows = await backend.list_scheduled(horizon)
        except NotImplementedError:
            raise  # a backend without one-off rows: the sweep ends (see _sweep)
        except Exception:
            self._failed("reading the saved one-off runs")
            return
        for row in rows:
            if row.run_key not in self._once:
                run = self._restore(row.run_key, row.document)
                if run is not None:
                    self._once[row.run_key] = run
                    self._arm_once(run, run.run_at)

    def _restore(self, key: str, data: Any) -> OnceRun | None:
        try:
            definition = self.manager.registry.get(str(data["func_name"]))
            return OnceRun.from_json(key, data, definition, self.manager.cipher)
        except Exception as exc:
            logger.warning("saved one-off run %r cannot be restored: %s", key, exc)
            return None

    async def _migrate_index(self, backend: TaskBackend) -> None:
        """Runs saved by an older version as one JSON document in meta become rows, once."""
        try:
            raw = await backend.get_meta(ONCE_INDEX_KEY)
            if not raw or raw == "{}":
                return
            if not await backend.acquire_lock(
                f"{ONCE_INDEX_KEY}:migrate", self.manager.instance_id, 60.0
            ):
                return  # another instance is moving them; their rows arrive by the sweep
            index = json.loads(await backend.get_meta(ONCE_INDEX_KEY) or "{}")
            for key, data in (index if isinstance(index, dict) else {}).items():
                await backend.put_scheduled(ScheduledRun(key, float(data["run_at"]), data))
            await backend.set_meta(ONCE_INDEX_KEY, "{}")
            logger.info("moved %d saved one-off runs to their own rows", len(index))
        except Exception:
            self._failed("moving the saved one-off runs to rows")

    # ---- helpers -------------------------------------------------------------------------------

    async def _acquire(self, backend: TaskBackend | None, lock: str, ttl: float) -> bool:
        """Take a slot's lock when instances share the backend; alone, every slot is ours."""
        if backend is None or not backend.shared:
            return True
        return await backend.acquire_lock(lock, self.manager.instance_id, ttl)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None
        task = self._loop.create_task(work, name="taskflow-schedule")
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    def _failed(self, what: str) -> None:
        self.failures += 1
        logger.warning("scheduled firing failed: %s; the schedule goes on", what, exc_info=True)
