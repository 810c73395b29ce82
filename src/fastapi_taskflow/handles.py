"""What routes and callers hold: ``TaskHandle`` and the request's ``ManagedBackgroundTasks``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Protocol

from starlette.background import BackgroundTasks

from .compat import renamed_keyword
from .dispatch.enqueue import merge_task_kwargs
from .fastapi_glue import request_exit_stack
from .models import TaskRecord, TaskStatus

# Held tasks started per turn of the event loop when a request's response has gone out.
START_SLICE = 256

if TYPE_CHECKING:
    from .dispatch.job import Job
    from .models import TaskSource
    from .registry import TaskOptions


class TaskControl(Protocol):
    """What handles use of their manager: wait for, read the result of or cancel a task,
    enqueue one, and start or settle the jobs a request held until its response went out."""

    async def wait_for(self, record: TaskRecord, timeout: float | None = None) -> TaskRecord: ...

    async def result_of(self, record: TaskRecord, timeout: float | None = None) -> Any: ...

    def cancel(self, task_id: str) -> bool: ...

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
    ) -> TaskHandle: ...

    def submit_many(self, jobs: list[Job]) -> None: ...

    def discard_held(self, jobs: list[Job], reason: str) -> None: ...


class TaskHandle(str):
    """A task id (it *is* the id string, so code that expects an id keeps working) with helpers.

    ``status`` and ``record`` read the live record; ``await wait()`` returns the final record;
    ``cancel()`` stops a pending or running task.
    """

    _manager: TaskControl
    _record: TaskRecord

    def __new__(cls, record: TaskRecord, manager: TaskControl) -> TaskHandle:
        handle = str.__new__(cls, record.task_id)
        handle._manager = manager
        handle._record = record
        return handle

    @property
    def task_id(self) -> str:
        return str.__str__(self)

    @property
    def record(self) -> TaskRecord:
        return self._record

    @property
    def status(self) -> TaskStatus:
        return self._record.status

    async def wait(self, timeout: float | None = None) -> TaskRecord:
        """The final record once the task is finished; ``TimeoutError`` after ``timeout``."""
        return await self._manager.wait_for(self._record, timeout)

    async def result(self, timeout: float | None = None) -> Any:
        """The task's return value once it has finished.

        ``TaskFailedError`` (holding the record) when it failed, was cancelled, rejected or
        interrupted; ``TimeoutError`` after ``timeout``. None when the task returned None or
        its value was not kept (``record.result_note`` says why).
        """
        return await self._manager.result_of(self._record, timeout)

    def cancel(self) -> bool:
        """Cancel the task; False when it had already finished."""
        return self._manager.cancel(self.task_id)

    def __repr__(self) -> str:
        return f"TaskHandle({self.task_id!r}, status={self._record.status.value!r})"

    def __reduce__(self) -> tuple[type[str], tuple[str]]:
        # Crossing a process boundary (or pickling) degrades to the plain id.
        return (str, (self.task_id,))


class ManagedBackgroundTasks(BackgroundTasks):
    """FastAPI's ``BackgroundTasks`` whose ``add_task`` returns a tracked ``TaskHandle``.

    Tasks start after the response is sent, like FastAPI's, unless ``eager=True``.
    """

    def __init__(
        self,
        manager: TaskControl | None = None,
        request_tasks: BackgroundTasks | None = None,
        *,
        request_scope: MutableMapping[str, Any] | None = None,
        task_manager: TaskControl | None = None,
        background_tasks: BackgroundTasks | None = None,
    ) -> None:
        super().__init__()
        owner = "ManagedBackgroundTasks"
        if task_manager is not None:
            manager = renamed_keyword(owner, "task_manager", "manager", task_manager, manager)
        if background_tasks is not None:
            request_tasks = renamed_keyword(
                owner, "background_tasks", "request_tasks", background_tasks, request_tasks
            )
        if manager is None:
            raise TypeError("ManagedBackgroundTasks() needs the TaskManager (manager=)")
        self._manager = manager
        # The request's own BackgroundTasks (the one FastAPI runs after the response), if any.
        self._request_tasks = request_tasks
        # Read when the first task is held: its exit stack closes after the response and its
        # background tasks, which is where held tasks that nothing started are settled.
        self._request_scope = request_scope
        # Jobs held until the response is sent, then started together by ``__call__``.
        self._held: list[Job] = []
        # The response was sent (``__call__`` ran): later tasks start at once, never held.
        self._released = False

    def add_task(  # type: ignore[override]
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
        """Track ``func(*args, **kwargs)``; see :meth:`TaskManager.add_task` for the options."""
        return self._manager.enqueue(
            func,
            args,
            merge_task_kwargs(kwargs, task_kwargs),
            idempotency_key=idempotency_key,
            tags=tags,
            eager=eager,
            priority=priority,
            queue=queue,
            task_options=task_options,
            defer=self._after_response,
        )

    def _after_response(self, job: Job) -> None:
        if self._released:
            self._manager.submit_many([job])
            return
        if not self._held:
            # This object joins the request's own background tasks once (it is a Starlette
            # BackgroundTask): Starlette awaits ``self()`` after the response. No BackgroundTask
            # per task: each costs an inspect call and a coroutine.
            request_tasks = self._request_tasks
            if request_tasks is not None and request_tasks is not self:
                request_tasks.tasks.append(self)
            scope = self._request_scope
            stack = request_exit_stack(scope) if scope is not None else None
            if stack is not None:
                stack.push(self._request_ended)
            # The request now holds this object until it ends; references back to it would
            # make cycles that only the garbage collector frees, one per request.
            self._request_tasks = self._request_scope = None
        self._held.append(job)

    # What a Starlette BackgroundTask exposes (FastAPI's runner names its telemetry after
    # ``func``): a property, so no per-request bound method and reference cycle is made.
    is_async = True

    @property
    def func(self) -> Callable[[], Any]:  # type: ignore[override]
        return self.__call__

    async def __call__(self) -> None:
        """Run by Starlette after the response is sent: start the held tasks.

        A large burst starts in slices with a turn of the event loop between them, so the
        tasks already started run (and short ones finish) while the rest are started: the loop
        never stalls for the whole burst, and fewer objects are alive at once.
        """
        held = self._take_held()
        first = 0
        try:
            while first < len(held):
                self._manager.submit_many(held[first : first + START_SLICE])
                first += START_SLICE
                if first < len(held):
                    await asyncio.sleep(0)
        finally:
            if first < len(held):  # cancelled between slices: start the rest now, never drop them
                self._manager.submit_many(held[first:])

    def _take_held(self) -> list[Job]:
        """The held jobs, once; from now on tasks added here start at once."""
        self._released = True
        held, self._held = self._held, []
        return held

    def _request_ended(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> bool:
        """The request is over and held tasks never started: never leave them PENDING.

        A request that raised runs no background tasks, as in FastAPI: they are CANCELLED with
        the reason. A response with its own ``background=`` replaced the request's tasks: they
        start now.
        """
        if self._held and not self._released:
            held = self._take_held()
            if exc_type is None:
                self._manager.submit_many(held)
            else:
                reason = (
                    f"not started: the request ended with {exc_type.__name__} "
                    "before its background tasks ran"
                )
                self._manager.discard_held(held, reason)
        return False  # never swallows the request's exception
