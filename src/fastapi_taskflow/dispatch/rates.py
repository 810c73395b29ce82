"""Rate gates: where a rate-limited job waits for its turn before it joins its queue.

One gate per limit (a task's ``rate_limit``, a queue's): a heap of waiting jobs, highest
priority first, and one pump coroutine that runs only while jobs wait. The pump takes a start
from the backend (atomic, shared by every instance on it); when none is free it sleeps until
the backend says the next one will be, then asks again, so nothing spins. A waiting job stays
PENDING with a ``waiting_reason``, holds no queue slot, and other tasks and queues go on.
Jobs without a limit never come here.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..backends.base import TaskBackend
from ..backends.memory import MemoryBackend
from ..errors import BackendError
from ..ratelimit import RateLimit
from .job import Job

if TYPE_CHECKING:
    from ..store import TaskStore
    from .queues import QueueState

logger = logging.getLogger("fastapi_taskflow")

# Seconds between attempts when the backend cannot answer a rate limit (tasks keep waiting).
BACKEND_RETRY = 1.0

Admit = Callable[[Job, "QueueState"], None]
Refuse = Callable[[Job, str], None]


def job_limits(job: Job, queue: QueueState) -> tuple[tuple[str, RateLimit], ...]:
    """The limits ``job`` passes before it may start: its task's, then its queue's."""
    limits: list[tuple[str, RateLimit]] = []
    if job.options.rate_limit is not None:
        limits.append((f"task:{job.definition.name}", job.options.rate_limit))
    if queue.config.rate is not None:
        limits.append((f"queue:{queue.name}", queue.config.rate))
    return tuple(limits)


class _Gate:
    """The jobs waiting for one limit, and the pump that lets them through one by one."""

    def __init__(self, gates: RateGates, key: str, limit: RateLimit) -> None:
        self.gates = gates
        self.key = key
        self.limit = limit
        self.waiting: list[tuple[int, int, Job, QueueState]] = []
        self.unmarked: list[Job] = []  # waiting jobs whose record does not say why yet
        self.pump: asyncio.Task[None] | None = None
        self.sleeper: asyncio.Future[None] | None = None
        self.failing = False  # the backend could not answer the last ask

    def push(self, job: Job, queue: QueueState) -> None:
        entry = (-(job.record.priority or 0), next(self.gates.sequence), job, queue)
        heapq.heappush(self.waiting, entry)
        self.unmarked.append(job)
        if self.pump is None:
            self.pump = asyncio.get_running_loop().create_task(self._run())

    def _drop_withdrawn(self) -> None:
        while self.waiting and self.waiting[0][2].state != "rate_waiting":
            heapq.heappop(self.waiting)

    async def _run(self) -> None:
        try:
            while not self.gates.stopping:
                self._drop_withdrawn()
                if not self.waiting:
                    self.unmarked = []
                    return
                try:
                    wait = await self.gates.backend.take_rate_token(self.key, self.limit)
                except NotImplementedError as exc:
                    self._refuse_all(f"cannot start: {exc}")  # never left PENDING
                    return
                except BackendError as exc:
                    # Logged once per outage, not on every retry; the records say it meanwhile.
                    if not self.failing:
                        logger.error(
                            "rate limit %s: the backend cannot answer; its tasks wait",
                            self.key,
                            exc_info=True,
                        )
                    self.failing = True
                    self._mark(f"waiting for rate limit {self.key}: backend unavailable ({exc})")
                    await self._sleep(BACKEND_RETRY)
                    continue
                if self.failing:
                    self.failing = False
                    self.unmarked = [job for _, _, job, _ in self.waiting]
                    logger.info("rate limit %s: the backend answers again", self.key)
                if wait == 0.0:
                    self._let_one_through()
                else:
                    self._mark(f"waiting for rate limit {self.limit} ({self.key})")
                    await self._sleep(wait)
        finally:
            self.pump = None

    def _let_one_through(self) -> None:
        self._drop_withdrawn()
        if not self.waiting:
            return  # the job it was taken for was cancelled meanwhile
        _, _, job, queue = heapq.heappop(self.waiting)
        if len(self.unmarked) > 2 * len(self.waiting) + 16:
            # Jobs that went through without waiting: never let this list outgrow the heap.
            self.unmarked = [e[2] for e in self.waiting if e[2].record.waiting_reason is None]
        if job.record.waiting_reason is not None:
            job.record.waiting_reason = None
            self.gates.store.touch(job.record)
        self.gates.passed(job, queue)

    def _refuse_all(self, reason: str) -> None:
        """The backend has no rate limits: every waiting job ends FAILED with the reason."""
        logger.error("rate limit %s: %s", self.key, reason)
        waiting, self.waiting, self.unmarked = self.waiting, [], []
        for _, _, job, _ in waiting:
            if job.state == "rate_waiting":
                self.gates.refuse(job, reason)

    def _mark(self, reason: str) -> None:
        """Say why in the records of waiting jobs (once per job, not on every wait)."""
        for job in self.unmarked:
            if self._holds(job) and job.record.waiting_reason != reason:
                job.record.waiting_reason = reason
                self.gates.store.touch(job.record)
        self.unmarked = []

    def _holds(self, job: Job) -> bool:
        """``job`` waits in this gate now (it may have passed since it was listed)."""
        step = job.rate_step
        return (
            job.state == "rate_waiting"
            and step < len(job.rate_limits)
            and job.rate_limits[step][0] == self.key
        )

    async def _sleep(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self.sleeper = loop.create_future()
        timer = loop.call_later(seconds, _resolve, self.sleeper)
        try:
            await self.sleeper
        finally:
            timer.cancel()
            self.sleeper = None

    def wake(self) -> None:
        if self.sleeper is not None:
            _resolve(self.sleeper)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class RateGates:
    """Every gate of one dispatcher; ``admit`` is where a rate-limited job enters."""

    def __init__(
        self,
        *,
        store: TaskStore,
        admit: Admit,
        refuse: Refuse,
        shared_backend: Callable[[], TaskBackend | None] = lambda: None,
    ) -> None:
        self.store = store
        self._admit = admit
        self.refuse = refuse
        # The running manager's backend (shared with the instances on it) exists only between
        # startup and shutdown, so it is asked for; without one, this process's own counts.
        self._shared_backend = shared_backend
        self._local_backend = MemoryBackend()
        self.sequence = itertools.count()
        self.stopping = False
        self._gates: dict[str, _Gate] = {}

    @property
    def backend(self) -> TaskBackend:
        """Where starts are taken from: the shared backend while running with one."""
        shared = self._shared_backend()
        return shared if shared is not None else self._local_backend

    def start(self) -> None:
        """At startup: pumps may run again (``stop`` ended them at the last shutdown)."""
        self.stopping = False

    def enter(self, job: Job, queue: QueueState, limits: tuple[tuple[str, RateLimit], ...]) -> None:
        """``job`` waits for each of ``limits`` in turn, then joins ``queue``."""
        job.move("rate_waiting")
        job.rate_limits = limits
        job.rate_step = 0
        self._next(job, queue)

    def _next(self, job: Job, queue: QueueState) -> None:
        if job.rate_step >= len(job.rate_limits):
            self._admit(job, queue)
            return
        key, limit = job.rate_limits[job.rate_step]
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = _Gate(self, key, limit)
        gate.limit = limit  # a queue's limit may have changed since the gate was made
        gate.push(job, queue)

    def passed(self, job: Job, queue: QueueState) -> None:
        job.rate_step += 1
        if job.state == "rate_waiting":
            self._next(job, queue)

    async def stop(self) -> None:
        """Shutdown: pumps end (their waiting jobs were kept or settled by the dispatcher)."""
        self.stopping = True
        pumps = [g.pump for g in self._gates.values() if g.pump is not None]
        for gate in self._gates.values():
            gate.wake()
        if pumps:
            await asyncio.gather(*pumps, return_exceptions=True)
        self._gates.clear()
