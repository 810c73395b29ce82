"""Rate limits: parsing, spacing, waiting without a slot, priority, retries, cancel, shutdown."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from control_helpers import running, wait_until

from fastapi_taskflow import (
    BackendError,
    ConfigurationError,
    MemoryBackend,
    QueueConfig,
    RateLimit,
    TaskManager,
    TaskStatus,
)
from fastapi_taskflow.backends.base import TaskBackend
from fastapi_taskflow.di.settings import TaskflowSettings
from fastapi_taskflow.ratelimit import gcra_step, parse_rate_limit

# Slack for the event loop between a start being granted and the task's first line.
SLACK = 0.02


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10/s", RateLimit(10, per=1.0)),
        ("100/m", RateLimit(100, per=60.0)),
        ("5/h", RateLimit(5, per=3600.0)),
        ("3/10s", RateLimit(3, per=10.0)),
        (" 2 / minute ", RateLimit(2, per=60.0)),
    ],
)
def test_text_forms_parse(text: str, expected: RateLimit) -> None:
    """'N/s', 'N/m', 'N/h' and 'N/<seconds>s' become the matching RateLimit."""
    assert parse_rate_limit(text) == expected


@pytest.mark.parametrize("bad", ["10", "ten/s", "0/s", "10/d", "10/0s", 10, 1.5, True])
def test_bad_limits_are_refused_at_decoration_with_the_form_explained(bad: object) -> None:
    """A bad rate_limit raises ValueError from @task, saying what a limit looks like."""
    manager = TaskManager()
    with pytest.raises(ValueError, match="rate_limit"):
        manager.task(rate_limit=bad)


def test_typed_limit_is_validated() -> None:
    """RateLimit refuses a zero limit, a zero period and a zero burst."""
    for args in ((0,), (1, 0.0), (1, 1.0, 0)):
        with pytest.raises(ValueError, match="rate limit"):
            RateLimit(*args)
    with pytest.raises(ValueError, match=r"QueueConfig\.rate_limit"):
        QueueConfig(rate_limit="fast")


def test_gcra_spaces_starts_and_allows_a_burst() -> None:
    """GCRA: one start per interval; with burst=3, three at once and then one per interval."""
    tat, wait = gcra_step(None, 100.0, 0.1, 1)
    assert wait == 0.0
    assert gcra_step(tat, 100.0, 0.1, 1)[1] == pytest.approx(0.1)
    tat = None
    for _ in range(3):
        tat, wait = gcra_step(tat, 100.0, 0.1, 3)
        assert wait == 0.0
    assert gcra_step(tat, 100.0, 0.1, 3)[1] == pytest.approx(0.1)


async def test_starts_are_spaced_by_the_limit() -> None:
    """Under '20/s' consecutive starts are at least 50 ms apart."""
    async with running() as manager:
        loop = asyncio.get_running_loop()
        starts: list[float] = []

        @manager.task(rate_limit="20/s")
        async def call_api() -> None:
            starts.append(loop.time())

        for _ in range(5):
            manager.add_task(call_api)
        await manager.join()
        assert len(starts) == 5
        assert min(gaps(starts)) >= 0.05 - SLACK


async def test_waiting_task_is_pending_with_a_reason_and_holds_no_slot() -> None:
    """A task waiting for its turn is PENDING with a reason, and others in its queue run."""
    async with running(queues={"default": QueueConfig(concurrency=1)}) as manager:

        @manager.task(rate_limit=RateLimit(1, per=0.5))
        async def limited() -> str:
            return "limited"

        @manager.task()
        async def free() -> str:
            return "free"

        first = manager.add_task(limited)
        second = manager.add_task(limited)
        assert await first.result() == "limited"
        await wait_until(lambda: second.record.waiting_reason is not None)
        assert second.status is TaskStatus.PENDING
        assert "rate limit 1/0.5s" in (second.record.waiting_reason or "")
        assert first.record.waiting_reason is None  # it went through before anyone waited
        assert manager.record_dict(second.record)["waiting_reason"] == second.record.waiting_reason
        other = manager.add_task(free)
        assert await other.result() == "free"
        assert second.status is TaskStatus.PENDING  # the free task ran while it waited
        assert await second.result() == "limited"
        assert second.record.waiting_reason is None


async def test_higher_priority_waiting_task_goes_first() -> None:
    """Among tasks waiting for one limit, the higher priority starts first."""
    async with running() as manager:
        order: list[str] = []

        @manager.task(rate_limit=RateLimit(1, per=0.1))
        async def job(name: str) -> None:
            order.append(name)

        manager.add_task(job, "first")
        await wait_until(lambda: order == ["first"])  # it took the only free start
        manager.add_task(job, "low", priority=0)
        manager.add_task(job, "high", priority=10)
        await manager.join()
        assert order == ["first", "high", "low"]


async def test_each_retry_takes_a_token() -> None:
    """A retry waits for the limit like a new start."""
    async with running() as manager:
        loop = asyncio.get_running_loop()
        starts: list[float] = []

        @manager.task(rate_limit=RateLimit(1, per=0.2), retries=2)
        async def flaky() -> None:
            starts.append(loop.time())
            if len(starts) < 3:
                raise RuntimeError("again")

        handle = manager.add_task(flaky)
        await handle.wait()
        assert handle.status is TaskStatus.SUCCESS
        assert len(starts) == 3
        assert min(gaps(starts)) >= 0.2 - SLACK


async def test_cancelled_waiting_task_never_runs() -> None:
    """Cancelling a task that waits for its limit makes it CANCELLED; it never starts."""
    async with running() as manager:
        ran: list[int] = []

        @manager.task(rate_limit=RateLimit(1, per=0.3))
        async def job(n: int) -> None:
            ran.append(n)

        manager.add_task(job, 1)
        waiting = manager.add_task(job, 2)
        assert waiting.cancel()
        record = await waiting.wait()
        assert record.status is TaskStatus.CANCELLED
        assert record.waiting_reason is None
        await manager.join()
        assert ran == [1]


async def test_shutdown_keeps_a_waiting_task_for_requeue() -> None:
    """At shutdown a task waiting for its limit is kept PENDING in the journal (requeue on)."""
    backend = MemoryBackend()
    manager = TaskManager(snapshot_backend=backend, requeue_pending=True, close_backend=False)
    ran: list[int] = []

    @manager.task(name="limited-job", rate_limit=RateLimit(1, per=60.0))
    async def job(n: int) -> None:
        ran.append(n)

    await manager.startup()
    manager.add_task(job, 1)
    waiting = manager.add_task(job, 2)
    await wait_until(lambda: ran == [1])
    await manager.shutdown()
    assert waiting.status is TaskStatus.PENDING
    entries, _ = await backend.journal_page()
    assert [e.task_id for e in entries] == [waiting.task_id]
    assert ran == [1]


async def test_shutdown_without_requeue_interrupts_a_waiting_task() -> None:
    """Without requeue a waiting task ends INTERRUPTED at shutdown, never left PENDING."""
    manager = TaskManager()

    @manager.task(rate_limit=RateLimit(1, per=60.0))
    async def job() -> None:
        return None

    await manager.startup()
    manager.add_task(job)
    waiting = manager.add_task(job)
    await manager.shutdown()
    assert waiting.status is TaskStatus.INTERRUPTED


async def test_queue_rate_limit_spaces_every_task_of_the_queue() -> None:
    """QueueConfig(rate_limit=...) spaces the starts of all the queue's tasks."""
    queues = {"mail": QueueConfig(rate_limit=RateLimit(1, per=0.1))}
    async with running(queues=queues) as manager:
        loop = asyncio.get_running_loop()
        starts: list[float] = []

        @manager.task(queue="mail")
        async def send() -> None:
            starts.append(loop.time())

        @manager.task(queue="mail")
        def send_sync() -> None:
            starts.append(loop.time())

        for func in (send, send_sync, send):
            manager.add_task(func)
        await manager.join()
        assert len(starts) == 3
        assert min(gaps(starts)) >= 0.1 - SLACK
        assert manager.queue_stats()["mail"]["rate_limit"] == "1/0.1s"


def test_yaml_queue_rate_limit_reaches_the_queue() -> None:
    """queues.<name>.rate_limit in settings becomes the queue's RateLimit."""
    settings = TaskflowSettings.from_mapping({"queues": {"mail": {"rate_limit": "10/m"}}})
    queues = settings.manager_settings().queues
    assert queues["mail"].rate == RateLimit(10, per=60.0)


def test_bad_yaml_rate_limit_names_the_key() -> None:
    """A bad rate_limit in settings is a ConfigurationError naming the key."""
    with pytest.raises(ConfigurationError, match="rate_limit"):
        TaskflowSettings.from_mapping({"queues": {"mail": {"rate_limit": "lots"}}})


class CountingBackend(MemoryBackend):
    """A memory backend that counts how often a rate limit is asked."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.asked = 0
        self.fail = fail

    async def _take_rate_token(self, key: str, interval: float, burst: int) -> float:
        self.asked += 1
        if self.fail:
            raise BackendError("rates table is gone")
        return await super()._take_rate_token(key, interval, burst)


async def test_waiting_does_not_spin() -> None:
    """Tasks waiting for a limit ask the backend about once per start, not in a loop."""
    backend = CountingBackend()
    async with running(snapshot_backend=backend) as manager:

        @manager.task(rate_limit=RateLimit(1, per=0.3))
        async def job() -> None:
            return None

        handles = [manager.add_task(job) for _ in range(3)]
        await asyncio.gather(*(h.wait() for h in handles))
        assert backend.asked <= 6  # one grant per task, plus at most one refusal before each


async def test_backend_trouble_keeps_tasks_pending_with_the_reason() -> None:
    """When the backend cannot answer, a rate-limited task waits PENDING and says why."""
    async with running(snapshot_backend=CountingBackend(fail=True), drain_timeout=0.1) as manager:

        @manager.task(rate_limit="5/s")
        async def job() -> None:
            return None

        handle = manager.add_task(job)
        await wait_until(lambda: handle.record.waiting_reason is not None)
        assert handle.status is TaskStatus.PENDING
        assert "backend unavailable" in (handle.record.waiting_reason or "")
        assert "rates table is gone" in (handle.record.waiting_reason or "")


async def test_jobs_that_never_wait_are_not_retained_by_the_gate() -> None:
    """Tasks that pass an unmet limit at once leave nothing behind in the gate."""
    async with running() as manager:

        @manager.task(rate_limit=RateLimit(1_000_000, per=1.0))
        async def job() -> None:
            return None

        for _ in range(200):
            manager.add_task(job)
        await manager.join()
        gates = manager.dispatcher.rates._gates
        assert all(not g.waiting and len(g.unmarked) <= 16 for g in gates.values())


class NoRatesBackend(MemoryBackend):
    """A backend written before rate limits: the base class's primitive."""

    async def _take_rate_token(self, key: str, interval: float, burst: int) -> float:
        return await TaskBackend._take_rate_token(self, key, interval, burst)


async def test_backend_without_rate_limits_fails_the_task_with_the_reason() -> None:
    """On a backend that lacks the primitive a rate-limited task is FAILED, never left waiting."""
    async with running(snapshot_backend=NoRatesBackend()) as manager:

        @manager.task(rate_limit="5/s")
        async def job() -> None:
            return None

        record = await manager.add_task(job).wait(timeout=5)
        assert record.status is TaskStatus.FAILED
        assert "does not implement rate limits" in (record.error or "")
