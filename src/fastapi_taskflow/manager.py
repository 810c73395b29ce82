"""TaskManager: the facade users hold. It composes the parts and keeps none of their logic.

registry (what tasks exist) -> enqueuer (the one enqueue path) -> dispatcher (queues, attempts)
-> executors; the store keeps records and counters; the event hub feeds observers; the persister
talks to the backend.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

import anyio.from_thread
from fastapi import BackgroundTasks, FastAPI
from starlette.requests import HTTPConnection

from .backends.base import (
    Command,
    InstanceInfo,
    JournalEntry,
    RecordPage,
    RecordQuery,
    TaskBackend,
)
from .backends.factory import build_backend
from .cluster import Cluster, Load, local_instance
from .control import handle_command, load_queue_configs, share_queue_config
from .crypto import ArgumentCipher, KeyLike
from .dispatch.attempts import Dispatcher
from .dispatch.enqueue import Enqueuer, merge_task_kwargs
from .dispatch.events import EventHub
from .dispatch.hooks import AttemptHook
from .dispatch.job import Job
from .dispatch.keys import KeyGuard, KeyReservations
from .dispatch.queues import UNSET
from .errors import ArgumentDecryptionError, BackendError, ConfigurationError, UnknownTaskError
from .executors import ExecutorSet
from .fastapi_glue import (
    add_lifespan,
    remove_lifespan,
    route_background_params,
    unroute_background_params,
)
from .handles import ManagedBackgroundTasks, TaskHandle
from .journal_writes import Commit
from .legacy import import_legacy
from .loggers.base import TaskObserver
from .loggers.chain import ObserverChain
from .loopref import LoopRef
from .models import RETRYABLE_STATUSES, QueueConfig, TaskRecord, TaskSource, TaskStatus, utcnow
from .persistence import Persister
from .queries import merged_page, metrics_snapshot, queue_snapshot
from .recovery import Recovery
from .redaction import ErrorPolicy, RedactionHook, Redactor, RedactRule
from .registry import TaskDefinition, TaskOptions, TaskRegistry, resolve_executor
from .results import ResultKeeper
from .running import Durability
from .scheduling import Scheduler
from .serialization import decode_call, result_view
from .stats import ClusterStats
from .store import TaskStore
from .tracing import Tracing, TracingHook, build_tracing

if TYPE_CHECKING:
    from .executors.process import ProcessPool
    from .settings import LogFileSettings, ManagerKeywords, ManagerSettings

logger = logging.getLogger("fastapi_taskflow")
F = TypeVar("F", bound=Callable[..., Any])
# Seconds get_result looks for an id no shared backend knows yet (see _finished_elsewhere).
UNKNOWN_GRACE = 1.0


class TaskManager:
    """Tracks, runs, retries and persists background tasks of a FastAPI app."""

    def __init__(
        self,
        *,
        snapshot_db: str | None = None,
        snapshot_backend: TaskBackend | None = None,
        loggers: Sequence[TaskObserver] | None = None,
        encrypt_args_key: KeyLike | Sequence[KeyLike] | None = None,
        queues: dict[str, QueueConfig] | None = None,
        max_size: int | None = None,
        registry: TaskRegistry | None = None,
        store: TaskStore | None = None,
        cipher: ArgumentCipher | None = None,
        thread_pool: ThreadPoolExecutor | None = None,
        process_pool: ProcessPool | None = None,
        close_backend: bool = True,
        redact: RedactRule | None = None,
        encrypt_errors: bool = False,
        tracing: Any = False,
        settings: ManagerSettings | None = None,
        **settings_keywords: Unpack[ManagerKeywords],
    ) -> None:
        """Settings come as keywords (``snapshot_interval=...``; see docs/configuration.md
        for every one and its default) or ready-made as ``settings=``, not both."""
        self.settings = s = _settings(settings, queues, max_size, dict(settings_keywords))
        self.instance_id = f"{uuid.uuid4().hex[:12]}"
        self.registry = registry if registry is not None else TaskRegistry()
        self.store = store if store is not None else TaskStore(s.history.max_history)
        self.cipher = cipher or (
            ArgumentCipher(encrypt_args_key) if encrypt_args_key is not None else None
        )
        self.backend = snapshot_backend or (
            build_backend("sqlite", path=snapshot_db) if snapshot_db else None
        )
        self._close_backend = close_backend
        self.observers = ObserverChain(_observers(loggers, s.file_log))
        self.executors = ExecutorSet(
            s.execution, thread_pool=thread_pool, process_pool=process_pool
        )
        # Made only when the backend is open: startup() builds it whole, shutdown() drops it.
        self._durability: Durability | None = None
        self.privacy = _error_policy(redact, encrypt_errors, self.cipher)
        tracing_hooks = build_tracing(tracing)
        self._loop_ref = LoopRef()
        self.hub = EventHub(self.store, self.observers, self._loop_ref)
        self.results = ResultKeeper(
            cipher=self.cipher,
            settings=s.results,
            lookup=self.store.get,
            tracked_limit=2 * s.history.max_history + 1000,
            on_dropped=self._result_dropped,
        )
        self.dispatcher = Dispatcher(
            store=self.store,
            executors=self.executors,
            hub=self.hub,
            cipher=self.cipher,
            queues=s.queues,
            execution=s.execution,
            on_finished=self._on_finished,
            results=self.results,
            keeps=self._kept_at_shutdown,
            on_journaled_start=self._journaled_start,
            rate_backend=self._running_backend,
            hooks=_attempt_hooks(
                tracing_hooks, self.privacy, self._running_key_guard, self.backend
            ),
        )
        self.enqueuer = Enqueuer(
            store=self.store,
            dispatcher=self.dispatcher,
            cipher=self.cipher,
            requeue_pending=s.durability.requeue_pending,
            check_arguments=self.executors.check_arguments,
            persister=lambda: self.persister,
            tracing=tracing_hooks,
        )
        self.scheduler = Scheduler(self, sweep_interval=s.durability.heartbeat_interval)
        self._started = False
        self._started_at = utcnow()
        self._prestart: list[Job] = []
        self._waiters: dict[str, list[asyncio.Future[TaskRecord]]] = {}

    @property
    def persister(self) -> Persister | None:
        """Writes records and the journal to the backend: with a backend, while running."""
        durability = self._durability
        return durability.persister if durability is not None else None

    @property
    def recovery(self) -> Recovery | None:
        """Resumes or settles journaled tasks no live instance owns: with a backend, running."""
        durability = self._durability
        return durability.recovery if durability is not None else None

    @property
    def cluster(self) -> Cluster | None:
        """This instance among the others on the backend (presence, commands), while running."""
        durability = self._durability
        return durability.cluster if durability is not None else None

    def _running_key_guard(self) -> KeyGuard | None:
        durability = self._durability
        return durability.key_guard if durability is not None else None

    def _running_backend(self) -> TaskBackend | None:
        durability = self._durability
        return durability.persister.backend if durability is not None else None

    def _journaled_start(self, record: TaskRecord) -> None:
        # Only journaled jobs reach this, and they exist only while the persister does.
        persister = self.persister
        if persister is not None:
            persister.started(record)

    @property
    def started(self) -> bool:
        """True between a finished ``startup()`` and the start of ``shutdown()``'s last step."""
        return self._started

    # ---- declaring tasks -------------------------------------------------------------------

    def task(self, **options: Any) -> Callable[[F], F]:
        """Register a task; see :meth:`TaskRegistry.task` for the options."""
        return self.registry.task(**options)

    def schedule(self, **options: Any) -> Callable[[F], F]:
        """Register a periodic task (``every=`` seconds or ``cron=``)."""
        return self.registry.schedule(**options)

    async def schedule_once(
        self,
        func: Callable[..., Any],
        *args: Any,
        run_at: datetime | timedelta,
        run_key: str | None = None,
        tags: dict[str, str] | None = None,
        priority: int | None = None,
        queue: str | None = None,
        idempotency_key: str | None = None,
        task_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> str:
        """Run ``func(*args, **kwargs)`` once at ``run_at``; returns the run key."""
        return await self.scheduler.schedule_once(
            func,
            args,
            merge_task_kwargs(kwargs, task_kwargs),
            run_at=run_at,
            run_key=run_key,
            tags=tags,
            priority=priority,
            queue=queue,
            idempotency_key=idempotency_key,
        )

    async def cancel_scheduled(self, run_key: str) -> bool:
        """Forget a one-off run that has not fired; False when no such run is waiting."""
        return await self.scheduler.cancel_once(run_key)

    async def list_scheduled(self, before: datetime | None = None) -> list[dict[str, Any]]:
        """One-off runs still waiting (due before ``before`` if given), soonest first."""
        return await self.scheduler.list_once(before)

    # ---- enqueueing ------------------------------------------------------------------------

    def add_task(
        self,
        func: Callable[..., Any],
        *args: Any,
        idempotency_key: str | None = None,
        tags: dict[str, str] | None = None,
        eager: bool | None = None,
        priority: int | None = None,
        queue: str | None = None,
        task_options: TaskOptions | None = None,
        task_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> TaskHandle:
        """Enqueue outside a request (scripts, startup code, other tasks). Starts at once.

        ``task_options`` replaces the registered options for this call; ``task_kwargs`` passes
        keyword arguments whose names ``add_task`` itself takes (see docs/task-control.md).
        """
        return self.enqueue(
            func,
            args,
            merge_task_kwargs(kwargs, task_kwargs),
            idempotency_key=idempotency_key,
            tags=tags,
            eager=eager,
            priority=priority,
            queue=queue,
            task_options=task_options,
        )

    def enqueue(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        tags: dict[str, str] | None = None,
        eager: bool | None = None,
        priority: int | None = None,
        queue: str | None = None,
        task_options: TaskOptions | None = None,
        defer: Callable[[Job], None] | None = None,
        source: TaskSource = "manual",
    ) -> TaskHandle:
        """The one entry point behind every ``add_task``. ``defer`` delays the start."""
        if eager is not None and not isinstance(eager, bool):
            raise ValueError(f"eager must be True, False or None, got {eager!r}")
        definition = self.registry.definition_for(func)
        if task_options is not None:
            definition = _with_options(definition, task_options)
        options = definition.options
        run_now = defer is None or (eager if eager is not None else options.eager)
        submit = self._submit_now if run_now or defer is None else defer
        record, _ = self.enqueuer.enqueue(
            definition,
            args,
            kwargs,
            submit=submit,
            idempotency_key=idempotency_key,
            tags=tags,
            priority=priority,
            queue=queue,
            source=source,
            options=task_options,
        )
        return TaskHandle(record, self)

    def discard_held(self, jobs: list[Job], reason: str) -> None:
        """Held jobs that will never start (their request failed): CANCELLED with ``reason``."""
        for job in jobs:
            self._loop_ref.call(self.dispatcher.finish_waiting, job, TaskStatus.CANCELLED, reason)

    def submit_many(self, jobs: list[Job]) -> None:
        """Start jobs that were held (until a response was sent), in their order."""
        loop_ref = self._loop_ref
        if loop_ref.loop is not None and loop_ref.on_loop_thread():
            submit = self.dispatcher.submit  # the usual case: straight in, no per-job hand-off
            for job in jobs:
                submit(job)
            return
        for job in jobs:
            self._submit_now(job)

    @property
    def _loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop this manager runs on (None before startup and after shutdown)."""
        return self._loop_ref.loop

    def _submit_now(self, job: Job) -> None:
        if self._loop is None and self._bind_running_loop() is None:
            self._prestart.append(job)  # runs at startup()
        else:
            self._loop_ref.call(self.dispatcher.submit, job)

    def _bind_running_loop(self) -> asyncio.AbstractEventLoop | None:
        """Used before startup(): run tasks anyway, like FastAPI would, and say what is off."""
        try:
            self._bind(asyncio.get_running_loop())
        except RuntimeError:
            # A sync (``def``) route runs in an AnyIO worker thread: bind the app's loop from
            # its own thread instead of failing with "no running event loop".
            try:
                anyio.from_thread.run_sync(self._bind_here)
            except RuntimeError:
                return None  # no loop anywhere: the task waits for startup()
        logger.warning(
            "TaskManager used before startup(): tasks run, but persistence and observers are "
            "off. Wire the lifecycle with TaskAdmin, init_app(app) or startup()/shutdown()."
        )
        return self._loop

    def _bind_here(self) -> None:
        self._bind(asyncio.get_running_loop())

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop_ref.bind(loop)
        self.dispatcher.bind(loop)

    # ---- FastAPI ---------------------------------------------------------------------------

    async def get_tasks(
        self, connection: HTTPConnection, background_tasks: BackgroundTasks
    ) -> ManagedBackgroundTasks:
        """FastAPI dependency: ``tasks = Depends(task_manager.get_tasks)``.

        Async on purpose (a sync dependency costs a threadpool hop per request). Deferred tasks
        ride on the request's own ``BackgroundTasks``, so they start after the response.
        """
        # HTTPConnection, not Request: the same dependency serves websocket routes.
        return ManagedBackgroundTasks(self, background_tasks, request_scope=connection.scope)

    background_tasks = get_tasks

    def install(self, app: FastAPI) -> None:
        """Give every ``BackgroundTasks`` parameter of ``app``'s routes a managed instance."""
        route_background_params(app, self.get_tasks)
        app.state._taskflow_install = self
        self.init_app(app)

    def init_app(self, app: FastAPI) -> None:
        """Run startup/shutdown around the app's lifespan (its own ``lifespan=`` included)."""

        async def start() -> None:
            if getattr(app.state, "_taskflow_install", None) is self:
                route_background_params(app, self.get_tasks)  # routes added after install()
            await self.startup()

        added = add_lifespan(app, self, start, self.shutdown)
        if added is not None and self.backend is not None:
            self._add_journal_barrier(app)

    def detach(self, app: FastAPI) -> None:
        """Undo :meth:`init_app` and :meth:`install` for ``app``, before another manager takes
        its place: the app's lifespan no longer starts or stops this manager, and the
        ``BackgroundTasks`` parameters ``install()`` rewired get FastAPI's own again.

        The app then holds this manager only through routes that name it themselves
        (``Depends(task_manager.get_tasks)``) and, once the app has started, the journal
        barrier of a manager with a backend (a built middleware stack is fixed). A lifespan
        under way still shuts it down.
        """
        remove_lifespan(app, self)
        unroute_background_params(app, self.get_tasks)
        if getattr(app.state, "_taskflow_install", None) is self:
            delattr(app.state, "_taskflow_install")
        if app.middleware_stack is None:  # not started: the barrier can still go
            app.user_middleware[:] = [  # only the barrier is given manager=self
                entry for entry in app.user_middleware if entry.kwargs.get("manager") is not self
            ]

    def _add_journal_barrier(self, app: FastAPI) -> None:
        """Responses wait for their request's journal writes (see barrier.py)."""
        from .barrier import JournalBarrier

        try:
            app.add_middleware(JournalBarrier, manager=self)
        except RuntimeError:  # the app already started: its middleware stack is fixed
            logger.warning(
                "init_app() after the app started: responses will not wait for "
                "their tasks' journal writes (see docs/durability.md)"
            )

    # ---- lifecycle -------------------------------------------------------------------------

    async def startup(self) -> None:
        """Open the backend, recover unfinished work, start observers. Safe on a bare manager."""
        if self._started:
            return
        self._bind(asyncio.get_running_loop())
        self._started_at = utcnow()
        await self.hub.start()
        if self.backend is not None:
            await self._start_persistence(self.backend)
        self.dispatcher.rates.start()
        self._started = True
        prestart, self._prestart = self._prestart, []
        for job in prestart:
            self.dispatcher.submit(job)
        await self.scheduler.start()

    async def _start_persistence(self, backend: TaskBackend) -> None:
        await backend.open()
        # Before the first claim, so 0.12's waiting tasks are among what it takes.
        try:
            await import_legacy(backend, self.cipher)
        except BackendError:
            # Nothing is marked imported: the next start (or `taskflow migrate`) tries again.
            logger.error("could not import fastapi-taskflow 0.12 data", exc_info=True)
        if not backend.system_of_record:
            logger.warning(
                "backend %s implements the older contract (system_of_record=False): metrics "
                "and the live dashboard cover this instance only (see docs/backends.md)",
                backend.describe(),
            )
        await load_queue_configs(self)
        durable = self.settings.durability
        persister = Persister(
            backend,
            self.store,
            self.instance_id,
            durable,
            loop_ref=self._loop_ref,
            on_claim=self._recover_all,
        )
        key_guard = None
        if backend.shared:
            key_guard = KeyGuard(backend, self.instance_id, durable.retention_seconds)
        self._durability = durability = Durability(
            persister=persister,
            recovery=Recovery(
                registry=self.registry,
                store=self.store,
                persister=persister,
                dispatcher=self.dispatcher,
                cipher=self.cipher,
                settings=durable,
                submit=self._submit_if_running,
            ),
            cluster=Cluster(
                backend,
                self.instance_id,
                settings=durable,
                load=self._load,
                handler=self._on_command,
            ),
            key_guard=key_guard,
        )
        await persister.start()  # claims orphans: recovery is there to take them
        await durability.cluster.start()

    def _load(self) -> Load:
        return Load(len(self.dispatcher.running_jobs()), self.dispatcher.queues.waiting_count())

    async def _on_command(self, command: Command) -> dict[str, Any] | None:
        return await handle_command(self, command)

    def _recover_all(self, entries: list[JournalEntry]) -> None:
        """Claimed journal entries (at startup, or from a dead instance while running)."""
        recovery = self.recovery
        if recovery is not None:
            recovery.recover_all(entries)

    def _submit_if_running(self, job: Job) -> None:
        if self._loop is not None:
            self._submit_now(job)

    async def shutdown(self) -> None:
        """Settle every task (finished, kept for requeue, or INTERRUPTED), then close parts."""
        if self._loop is None:
            return
        durability = self._durability
        if durability is not None:
            durability.persister.stop_claiming()
        await self.scheduler.stop()
        self._settle_waiting()
        await self.dispatcher.rates.stop()
        await self._drain_running()
        self.results.stop()
        if durability is not None:
            await durability.cluster.stop()
        await self.hub.stop()
        if durability is not None:
            if durability.key_guard is not None:
                await durability.key_guard.drain()
            await durability.persister.stop()
        self._durability = None
        await self.executors.close()
        if self.backend is not None and self._close_backend:
            await self.backend.close()
        self._started = False
        self._loop_ref.clear()

    def _settle_waiting(self) -> None:
        """Waiting tasks: kept in the journal (requeue) or recorded INTERRUPTED, never dropped."""
        for job in self.dispatcher.waiting_jobs():
            if job.survives_shutdown:
                self.dispatcher.withdraw(job)  # its entry stays in the journal for the next start
                if self.persister is not None:
                    self.persister.keep(job.record)  # and its PENDING record is saved
            else:
                self.dispatcher.finish_waiting(
                    job, TaskStatus.INTERRUPTED, "the app shut down before the task started"
                )

    async def _drain_running(self) -> None:
        running = [j.task for j in self.dispatcher.running_jobs() if j.task is not None]
        if running:
            _, late = await asyncio.wait(running, timeout=self.settings.execution.drain_timeout)
            for job in self.dispatcher.running_jobs():
                self.dispatcher.stop_attempt(job, "shutdown")
            if late:
                await asyncio.wait(late)

    async def join(self, timeout: float | None = None) -> None:
        """Return when no task is pending or running and observers have seen every event."""
        async with asyncio.timeout(timeout):
            while True:
                if self.store.active == 0:
                    await self.hub.drain()
                    if self.store.active == 0:
                        return
                await self.store.when_idle()

    # ---- one task ----------------------------------------------------------------------------

    def _kept_at_shutdown(self, job: Job) -> bool:
        return self.persister is not None and job.survives_shutdown

    def _on_finished(self, job: Job) -> None:
        record = job.record
        if self.persister is not None:
            if not record.status.finished:  # kept at shutdown: PENDING, the entry stays
                self.persister.keep(record)
                return  # its waiters resolve when it finishes after the next start
            self.persister.finished(record, job.journaled)
        for waiter in self._waiters.pop(record.task_id, ()):
            if not waiter.done():
                waiter.set_result(record)

    async def wait_for(self, record: TaskRecord, timeout: float | None = None) -> TaskRecord:
        if record.status.finished:
            return record
        waiter: asyncio.Future[TaskRecord] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(record.task_id, []).append(waiter)
        async with asyncio.timeout(timeout):
            return await waiter

    def _result_dropped(self, record: TaskRecord) -> None:
        """An expired result left a record: the backend row loses it too (the record stays)."""
        self.store.touch(record)
        if self.persister is not None:
            self.persister.finished(record, journaled=False)

    async def result_of(self, record: TaskRecord, timeout: float | None = None) -> Any:
        """The return value of ``record``'s task once it has finished (see TaskHandle.result)."""
        if not record.status.finished and self.store.get(record.task_id) is not record:
            # A handle on a backend row (another instance runs it): follow the backend.
            return await self.get_result(record.task_id, timeout)
        return self.results.outcome(await self.wait_for(record, timeout))

    async def get_result(self, task_id: str, timeout: float | None = None) -> Any:
        """The return value of the task ``task_id``, waiting until it has finished.

        Works for a task of this instance, of another one sharing the backend, or of an
        earlier run (from the backend). Raises ``UnknownTaskError`` for an unknown id,
        ``TaskFailedError`` when the task did not succeed, ``TimeoutError`` after ``timeout``.
        """
        async with asyncio.timeout(timeout):
            record = self.store.get(task_id)
            if record is not None:
                return self.results.outcome(await self.wait_for(record))
            record = await self._finished_elsewhere(task_id)
            return self.results.outcome(record)

    async def _finished_elsewhere(self, task_id: str) -> TaskRecord:
        """The backend's record of ``task_id`` once it is finished (polled: another instance
        runs it, and its row changes when it finishes)."""
        shared = self.backend is not None and self.backend.shared and self._started
        # Another instance writes a new task's row in its next batch, just after add_task
        # returned there: an id not found at once is looked for a little longer.
        unknown_until = asyncio.get_running_loop().time() + (UNKNOWN_GRACE if shared else 0.0)
        pause = 0.05
        while True:
            record = await self.get_record(task_id)
            if record is None:
                if asyncio.get_running_loop().time() >= unknown_until:
                    raise UnknownTaskError(f"no task with id {task_id!r}")
            elif record.status.finished:
                return record
            elif self.store.get(task_id) is record:  # it came to this instance meanwhile
                return await self.wait_for(record)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)

    def cancel(self, task_id: str) -> bool:
        """Cancel a pending or running task; False if it is finished or unknown."""
        loop = self._loop
        if loop is None or self._loop_ref.on_loop_thread():
            return self.dispatcher.cancel(task_id)
        done: concurrent.futures.Future[bool] = concurrent.futures.Future()
        loop.call_soon_threadsafe(lambda: done.set_result(self.dispatcher.cancel(task_id)))
        return done.result(timeout=5)

    @property
    def barrier_timeout(self) -> float:
        """Seconds a response waits for its request's journal commit (see barrier.py)."""
        return self.settings.durability.barrier_timeout

    async def wait_journaled(self, seq: int, timeout: float) -> Commit:
        """How waiting for journal write ``seq`` ended; committed at once with no persister
        (a write noted before the backend went away has nothing left to wait for)."""
        persister = self.persister
        if persister is None:
            return Commit.COMMITTED
        return await persister.wait_written(seq, timeout)

    def withdraw_tasks(self, task_ids: Sequence[str], reason: str) -> int:
        """Cancel tasks whose enqueue the client was told failed (the response barrier's 503);
        returns how many were still unfinished. Event-loop thread only."""
        return sum(self.dispatcher.cancel(task_id, reason) for task_id in task_ids)

    async def get_task(self, task_id: str) -> TaskHandle | None:
        """A handle for a known task id (memory first, then the backend), else None."""
        record = await self.get_record(task_id)
        return TaskHandle(record, self) if record is not None else None

    async def get_record(self, task_id: str) -> TaskRecord | None:
        """A task by id, whichever instance runs it.

        With a backend, memory answers only for what it knows best (this instance's active
        tasks and changes not written yet); everything else is read from the backend, so a
        record deleted by another instance is gone here too.
        """
        record = self.store.get(task_id)
        backend, persister = self.backend, self.persister
        if backend is None or not self._started or persister is None:
            return record
        if record is not None and (not record.status.finished or persister.unwritten(task_id)):
            return record
        try:
            stored = await backend.get_record(task_id)
        except BackendError:
            if record is None:
                raise
            logger.warning(
                "reading task %s from %s failed; answering from memory",
                task_id,
                backend.describe(),
                exc_info=True,
            )
            return record
        if stored is not None and self.results.drop_if_expired(stored):
            # An expired result in a row no timer of this process knew of: drop it at rest
            # too, now that it is seen (the record stays).
            await backend.update_records([stored])
        return stored

    async def retry(self, task_id: str, *, source: TaskSource = "retry") -> TaskHandle:
        """Run a failed, interrupted or cancelled task again with the same arguments."""
        record = await self.get_record(task_id)
        if record is None:
            raise UnknownTaskError(f"no task with id {task_id!r}")
        if record.status not in RETRYABLE_STATUSES:
            raise ValueError(
                f"only failed, interrupted or cancelled tasks can be retried; "
                f"{task_id} is {record.status.value}"
            )
        definition = self.registry.get(record.func_name)
        args, kwargs = self._clear_arguments(record)
        handle = self.enqueue_definition(
            definition,
            args,
            kwargs,
            source=source,
            tags=record.tags,
            priority=record.priority,
            queue=record.queue,
        )
        if self.settings.history.retry_replaces_original:
            self.store.remove(task_id)
            if self.persister is not None:
                self.persister.forget([task_id])
            if self.backend is not None and self._started:
                await self.backend.delete_records([task_id])
            if self.cluster is not None:  # the instance that ran it still holds the original
                await self.cluster.tell_others("forget", task_id=task_id)
        return handle

    def _clear_arguments(self, record: TaskRecord) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if record.encrypted_payload is None:
            return record.args, record.kwargs
        if self.cipher is None:
            raise ArgumentDecryptionError("the task's arguments are encrypted; no key configured")
        return decode_call(self.cipher.decrypt(record.encrypted_payload))

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
    ) -> TaskHandle:
        """Enqueue a known definition now (API retries, schedules): the same single path."""
        record, _ = self.enqueuer.enqueue(
            definition,
            args,
            kwargs,
            submit=self._submit_now,
            tags=tags,
            priority=priority,
            queue=queue,
            source=source,
            idempotency_key=idempotency_key,
        )
        return TaskHandle(record, self)

    # ---- reading -----------------------------------------------------------------------------

    def record_dict(
        self,
        record: TaskRecord,
        *,
        include_args: bool = False,
        reveal_errors: bool = False,
        include_result: bool = False,
    ) -> dict[str, Any]:
        """A record's JSON for people: arguments redacted; sealed errors opened if ``reveal``;
        with ``include_result``, ``"result"`` (see :meth:`result_json`).

        The task API calls this (``reveal_errors`` only for an authenticated user).
        """
        if self.privacy is None:
            data = record.to_dict(include_args=include_args)
        else:
            definition = self.registry.find(record.func_name)
            data = self.privacy.view(
                record,
                definition.func if definition is not None else None,
                include_args=include_args,
                reveal=reveal_errors,
            )
        if include_result:
            data["result"] = self.result_json(record)
            data["has_result"] = record.has_result  # an expired one was dropped just now
            data["result_note"] = record.result_note
        return data

    def result_json(self, record: TaskRecord) -> Any:
        """A kept result for people: its JSON form (a short description such as
        ``{"type": "bytes", "size": 1234}`` for what JSON cannot carry), redacted like
        arguments; None when nothing is kept."""
        try:
            value = self.results.value(record)
        except (ValueError, ArgumentDecryptionError) as exc:
            return {"type": "unreadable", "error": str(exc)}
        return self.shown_result(result_view(value))

    def shown_result(self, value: Any) -> Any:
        """``value`` with keys the ``redact`` rule names masked (nothing to do without one)."""
        redactor = self.privacy.redactor if self.privacy is not None else None
        return redactor.value("", value) if redactor is not None else value

    def reveal_error(self, record: TaskRecord) -> tuple[str | None, str | None]:
        """(error, stack trace) in clear for a sealed error (``encrypt_errors``); else as stored."""
        if self.privacy is None:
            return record.error, record.stacktrace
        return self.privacy.reveal(record)

    async def list_records(self, query: RecordQuery) -> RecordPage:
        """One page of tasks, newest first, from memory and the backend together."""
        persister = self.persister if self._started else None
        if persister is None:
            return await merged_page(self.store, None, query)
        return await merged_page(self.store, persister.backend, query, persister.unwritten_records)

    def metrics(self) -> dict[str, Any]:
        """This instance's numbers from memory (no I/O); see :meth:`read_metrics`."""
        return self.metrics_from(ClusterStats.from_store(self.store))

    async def read_metrics(self, *, throughput: bool = False) -> dict[str, Any]:
        """The metrics of every instance on the backend (what the API serves).

        With a backend that keeps stats (``system_of_record``), counts, queue counts and the
        duration histogram are read from it: the same on every instance, kept across
        restarts. Otherwise (no backend, an older custom one, or a failed read) this
        instance's own counters. ``throughput`` adds the cluster's throughput samples.
        """
        stats = await self.read_stats(throughput=throughput)
        return self.metrics_from(stats)

    async def read_stats(self, *, throughput: bool = False) -> ClusterStats:
        """Counters and histogram of every instance (see :meth:`read_metrics`)."""
        backend = self.backend
        if backend is not None and self._started and backend.system_of_record:
            try:
                return await backend.read_stats(throughput=throughput)
            except BackendError:
                logger.warning(
                    "reading stats from %s failed; answering with this instance's counters",
                    backend.describe(),
                    exc_info=True,
                )
        return ClusterStats.from_store(self.store)

    def metrics_from(self, stats: ClusterStats) -> dict[str, Any]:
        """The metrics JSON from ``stats`` plus this instance's health counters."""
        data = metrics_snapshot(stats, self.dispatcher.queues)
        data["unknown_queue_fallbacks"] = self.dispatcher.queues.unknown_queue_fallbacks
        data["schedule_failures"] = self.scheduler.failures
        data["observer_events_dropped"] = self.hub.dropped_events
        data.update(self._durability_metrics())
        if stats.throughput:
            data["throughput"] = [list(sample) for sample in stats.throughput]
        return data

    def _durability_metrics(self) -> dict[str, Any]:
        """Backend health: corrupt rows skipped, writes waiting or dropped, lease trouble."""
        backend_corrupt = self.backend.corrupt_rows if self.backend is not None else 0
        persister = self.persister
        stats = persister.stats if persister is not None else None
        return {
            "corrupt_rows": backend_corrupt + (self.recovery.problems if self.recovery else 0),
            "buffered_writes": persister.buffered() if persister is not None else 0,
            "dropped_writes": stats.dropped_writes if stats else 0,
            "backend_write_failures": stats.write_failures if stats else 0,
            "lease_failures": stats.lease_failures if stats else 0,
            "lease_expirations": stats.lease_expirations if stats else 0,
            "refused_tasks": stats.refused_tasks if stats else 0,
            "claimed_tasks": stats.claimed if stats else 0,
            "barrier_timeouts": stats.barrier_timeouts if stats else 0,
        }

    def queue_stats(self) -> dict[str, dict[str, Any]]:
        """This instance's queues, counts from its memory (no I/O); see :meth:`read_queue_stats`."""
        return queue_snapshot(ClusterStats.from_store(self.store), self.dispatcher.queues)

    async def read_queue_stats(self) -> dict[str, dict[str, Any]]:
        """The queues as the API serves them: counts of every instance from the backend's
        stats (as :meth:`read_stats`), running and waiting slots of this instance."""
        return queue_snapshot(await self.read_stats(), self.dispatcher.queues)

    def update_queue_config(
        self, name: str, *, concurrency: Any = UNSET, max_size: Any = UNSET
    ) -> QueueConfig:
        """Change a queue's caps live; ``ValueError`` (nothing changed) on bad values."""
        try:
            return self.dispatcher.queues.reconfigure(
                name, concurrency=concurrency, max_size=max_size
            )
        except KeyError:
            raise UnknownTaskError(f"no queue named {name!r}") from None

    async def change_queue(
        self, name: str, *, concurrency: Any = UNSET, max_size: Any = UNSET
    ) -> QueueConfig:
        """``update_queue_config`` on every instance: applied here, saved in the backend for
        instances started later, and sent to the running ones (see control.py)."""
        config = self.update_queue_config(name, concurrency=concurrency, max_size=max_size)
        await share_queue_config(self, name, config)
        return config

    @property
    def queue_scope(self) -> str:
        """Which instances a queue change reaches: "all instances" with a backend."""
        return "all instances" if self.cluster is not None else "this instance"

    async def instances(self) -> list[InstanceInfo]:
        """Every live instance on the backend; without one (or before startup), this one."""
        if self.cluster is not None:
            return await self.cluster.backend.live_instances()
        load = self._load()
        return [local_instance(self.instance_id, self._started_at, load)]

    async def clear_history(self, before: datetime | None = None) -> dict[str, int]:
        """Delete finished records (all, or those that ended before ``before``) everywhere.

        Pending and running tasks are never touched. Returns how many went from memory and
        from the backend. Counters follow: the backend's stats lose the deleted rows' share in
        the delete's own transaction; this instance's memory counters restart from memory (all
        history gone) or are read back from the backend (a partial delete).
        """

        def keep(record: TaskRecord) -> bool:
            return before is not None and (record.end_time is None or record.end_time >= before)

        backend = self.backend if self._started else None
        if backend is not None and self.persister is not None:
            # Writes still on their way would land after the delete and bring rows back.
            await self.persister.flush_journal()
            await self.persister.flush_history()
        dropped = self.store.clear_finished(keep if before is not None else None)
        if self.persister is not None:
            self.persister.forget(dropped)
        deleted = 0
        if backend is not None:
            cutoff = before if before is not None else utcnow() + timedelta(days=36_500)
            deleted = await backend.delete_records_before(cutoff)
        if before is None:
            self.store.reset_finished_counts()
        elif backend is not None:
            self.store.set_finished_counts(await backend.status_counts())
        return {"store": len(dropped), "backend": deleted}


def _with_options(definition: TaskDefinition, options: TaskOptions | None) -> TaskDefinition:
    """``definition`` with per-call options (``task_options=``); its name never changes."""
    if options is None:
        return definition
    if not isinstance(options, TaskOptions):
        raise ValueError(f"task_options must be a TaskOptions, got {options!r}")
    executor = definition.executor
    if options.executor is not None and options.executor != executor:
        executor = resolve_executor(definition.func, options.executor)
    return replace(definition, options=options, executor=executor)


def _attempt_hooks(
    tracing: Tracing | None,
    privacy: ErrorPolicy | None,
    key_guard: Callable[[], KeyGuard | None],
    backend: TaskBackend | None,
) -> tuple[AttemptHook, ...]:
    """The attempt hooks of the features that are on (none: the attempt's plain path)."""
    hooks: list[AttemptHook] = []
    if tracing is not None:
        hooks.append(TracingHook(tracing))
    if privacy is not None:
        hooks.append(RedactionHook(privacy))
    if backend is not None and backend.shared:  # keys across instances (dispatch/keys.py)
        hooks.append(KeyReservations(key_guard))
    return tuple(hooks)


def _error_policy(
    redact: RedactRule | None, encrypt_errors: bool, cipher: ArgumentCipher | None
) -> ErrorPolicy | None:
    if encrypt_errors and cipher is None:
        raise ConfigurationError("encrypt_errors=True needs encrypt_args_key (the key seals them)")
    redactor = Redactor(redact) if redact else None
    if redactor is None and not encrypt_errors:
        return None
    return ErrorPolicy(redactor, cipher if encrypt_errors else None)


def _settings(
    settings: ManagerSettings | None,
    queues: dict[str, QueueConfig] | None,
    max_size: int | None,
    keywords: dict[str, Any],
) -> ManagerSettings:
    """The tree given as ``settings=``, or built from the keywords; never both."""
    if settings is None:
        # Imported on first use: declaring the settings models is most of their cost.
        from .settings import ManagerSettings

        return ManagerSettings.from_keywords(queues=queues, max_size=max_size, **keywords)
    given = [*keywords, *(["queues"] if queues is not None else [])]
    given += ["max_size"] if max_size is not None else []
    if given:
        raise TypeError(f"TaskManager() takes settings= or {', '.join(given)}, not both")
    return settings


def _observers(
    loggers: Sequence[TaskObserver] | None, file_log: LogFileSettings
) -> list[TaskObserver]:
    observers = list(loggers or [])
    for observer in observers:
        if not isinstance(observer, TaskObserver):
            raise TypeError(f"loggers must be TaskObserver instances, got {observer!r}")
    if file_log.log_file is not None:
        from .loggers.file import FileLogger

        observers.append(FileLogger.from_settings(file_log))
    return observers
