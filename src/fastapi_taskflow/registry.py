"""TaskRegistry: which functions are tasks, under which stable name, with which options.

A registry exists on its own so a module can declare tasks before any manager is built (the DI
container builds the manager later). Tasks are found by qualified name (``module:qualname``) or
the ``name=`` given, never by bare ``__name__``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar, get_args

from .errors import UnknownTaskError
from .models import ExecutorKind
from .ratelimit import RateLimit, parse_rate_limit
from .schedules import check_schedule

logger = logging.getLogger("fastapi_taskflow")

EXECUTOR_KINDS: tuple[ExecutorKind, ...] = get_args(ExecutorKind)
F = TypeVar("F", bound=Callable[..., Any])
# Definitions kept for plain functions passed to add_task: enough for every function an app
# names, bounded so a new lambda or closure per request cannot grow it without end.
UNREGISTERED_CACHE_SIZE = 1024


def _check_number(name: str, value: Any, *, minimum: float, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """How a task runs. Validated on construction, so a bad option fails where it is written."""

    retries: int = 0
    delay: float = 0.0
    backoff: float = 1.0
    max_delay: float | None = None
    jitter: float = 0.0
    timeout: float | None = None
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    persist: bool = False
    name: str | None = None
    requeue_on_interrupt: bool = False
    eager: bool = False
    priority: int | None = None
    queue: str | None = None
    executor: ExecutorKind | None = None
    # Results: kept unless ``store_result=False``; None below means the manager's setting.
    store_result: bool = True
    max_result_bytes: int | None = None
    result_ttl: float | None = None
    # At most so many starts per period, across every instance sharing the backend.
    rate_limit: RateLimit | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate_limit", parse_rate_limit(self.rate_limit))
        if not isinstance(self.store_result, bool):
            raise ValueError(f"store_result must be True or False, got {self.store_result!r}")
        if self.max_result_bytes is not None and (
            isinstance(self.max_result_bytes, bool)
            or not isinstance(self.max_result_bytes, int)
            or self.max_result_bytes < 0
        ):
            raise ValueError(
                f"max_result_bytes must be an int >= 0 or None, got {self.max_result_bytes!r}"
            )
        _check_number("result_ttl", self.result_ttl, minimum=0, allow_none=True)
        if self.result_ttl == 0:
            raise ValueError("result_ttl must be > 0 seconds, or None to keep results")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {self.retries!r}")
        _check_number("delay", self.delay, minimum=0)
        _check_number("backoff", self.backoff, minimum=1)
        _check_number("max_delay", self.max_delay, minimum=0, allow_none=True)
        _check_number("jitter", self.jitter, minimum=0)
        _check_number("timeout", self.timeout, minimum=0, allow_none=True)
        if self.timeout == 0:
            raise ValueError("timeout must be > 0 seconds, or None for no timeout")
        if self.priority is not None and (
            isinstance(self.priority, bool) or not isinstance(self.priority, int)
        ):
            raise ValueError(f"priority must be an int or None, got {self.priority!r}")
        if self.executor is not None and self.executor not in EXECUTOR_KINDS:
            raise ValueError(
                f"executor must be one of {', '.join(EXECUTOR_KINDS)} or None, "
                f"got {self.executor!r}"
            )
        if self.name is not None and (not isinstance(self.name, str) or not self.name.strip()):
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if self.queue is not None and (not isinstance(self.queue, str) or not self.queue):
            raise ValueError(f"queue must be a non-empty string, got {self.queue!r}")
        retry_on = self.retry_on if isinstance(self.retry_on, tuple) else (self.retry_on,)
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in retry_on):
            raise ValueError(f"retry_on must be exception types, got {self.retry_on!r}")
        object.__setattr__(self, "retry_on", retry_on)

    def retry_delay(self, retry_number: int) -> float:
        """Seconds to wait before retry number ``retry_number`` (1-based), before jitter."""
        wait = self.delay * (self.backoff ** (retry_number - 1))
        return wait if self.max_delay is None else min(wait, self.max_delay)

    def merged(self, **overrides: Any) -> TaskOptions:
        """These options with the given non-None overrides applied (validated again)."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, **changes) if changes else self


def qualified_name(func: Callable[..., Any]) -> str:
    """``module:qualname``, the name a task is stored and found under unless ``name=`` is given."""
    module = getattr(func, "__module__", None) or "unknown"
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
    return f"{module}:{qualname}"


# What asyncio marks coroutine functions with on 3.11 (AsyncMock, pytest-mock spies of async
# functions carry it; inspect.iscoroutinefunction learns about them only in 3.12).
_COROUTINE_MARKER = getattr(asyncio.coroutines, "_is_coroutine", object())


def is_async_callable(func: Callable[..., Any]) -> bool:
    while isinstance(func, functools.partial):
        func = func.func
    if inspect.iscoroutinefunction(func):
        return True
    if getattr(func, "_is_coroutine", None) is _COROUTINE_MARKER:
        return True
    # An object whose class defines ``async def __call__``.
    return callable(func) and inspect.iscoroutinefunction(type(func).__call__)


def resolve_executor(func: Callable[..., Any], requested: ExecutorKind | None) -> ExecutorKind:
    """The executor a function runs on; raises ``ValueError`` for an impossible combination."""
    is_async = is_async_callable(func)
    if requested is None:
        return "async" if is_async else "thread"
    if requested == "async" and not is_async:
        raise ValueError(
            f"executor='async' needs an 'async def' function; {qualified_name(func)} is a "
            "plain def "
            "(use executor='thread' or leave executor unset)"
        )
    if requested in ("thread", "process") and is_async:
        raise ValueError(
            f"executor={requested!r} needs a plain 'def' function; {qualified_name(func)} is async"
        )
    if requested == "process":
        _check_importable(func)
    return requested


def _check_importable(func: Callable[..., Any]) -> None:
    """Process tasks are found again by module and name (in the worker and after a restart)."""
    qualname = getattr(func, "__qualname__", "")
    if getattr(func, "__name__", "") == "<lambda>" or "<locals>" in qualname:
        raise ValueError(
            f"executor='process' needs a module-level function; {qualified_name(func)} is a "
            "lambda or a nested function, which a worker process cannot import"
        )


def _unwrap(func: Callable[..., Any]) -> Callable[..., Any]:
    """The function behind ``functools.wraps`` chains and pytest-mock spies."""
    spied = getattr(func, "side_effect", None)
    if callable(spied) and hasattr(spied, "__wrapped__"):
        func = spied
    try:
        unwrapped: Callable[..., Any] = inspect.unwrap(func)
    except ValueError:  # a cycle of __wrapped__
        return func
    return unwrapped


@dataclass(frozen=True, slots=True)
class TaskDefinition:
    """A function together with its options and the name it is known by."""

    func: Callable[..., Any]
    options: TaskOptions
    name: str
    executor: ExecutorKind
    registered: bool = True


@dataclass(frozen=True, slots=True)
class ScheduleDefinition:
    """A periodic task declared with ``@schedule``; the scheduler reads these at startup."""

    task: TaskDefinition
    every: float | None = None
    cron: str | None = None
    run_on_startup: bool = False
    timezone: str = "UTC"
    catch_up: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class TaskRegistry:
    """Holds task definitions by name and by function; safe to share between managers."""

    def __init__(self) -> None:
        self._by_name: dict[str, TaskDefinition] = {}
        self._by_func: dict[Any, TaskDefinition] = {}
        self._schedules: list[ScheduleDefinition] = []
        self._unregistered: OrderedDict[Any, TaskDefinition] = OrderedDict()
        self._lock = threading.Lock()

    def task(
        self,
        retries: int = 0,
        delay: float = 0.0,
        backoff: float = 1.0,
        persist: bool = False,
        name: str | None = None,
        requeue_on_interrupt: bool = False,
        eager: bool = False,
        priority: int | None = None,
        queue: str | None = None,
        executor: ExecutorKind | None = None,
        timeout: float | None = None,
        max_delay: float | None = None,
        jitter: float = 0.0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        store_result: bool = True,
        max_result_bytes: int | None = None,
        result_ttl: float | None = None,
        rate_limit: RateLimit | str | None = None,
    ) -> Callable[[F], F]:
        """Register a function as a task; returns it unchanged so it can still be called."""
        options = TaskOptions(
            retries=retries,
            delay=delay,
            backoff=backoff,
            max_delay=max_delay,
            jitter=jitter,
            timeout=timeout,
            retry_on=retry_on if isinstance(retry_on, tuple) else (retry_on,),
            persist=persist,
            name=name,
            requeue_on_interrupt=requeue_on_interrupt,
            eager=eager,
            priority=priority,
            queue=queue,
            executor=executor,
            store_result=store_result,
            max_result_bytes=max_result_bytes,
            result_ttl=result_ttl,
            rate_limit=rate_limit,  # type: ignore[arg-type]  # text is parsed on construction
        )

        def decorate(func: F) -> F:
            self.register(func, options)
            return func

        return decorate

    def register(self, func: Callable[..., Any], options: TaskOptions) -> TaskDefinition:
        if not callable(func):
            raise TypeError(f"a task must be callable, got {func!r}")
        definition = TaskDefinition(
            func=func,
            options=options,
            name=options.name or qualified_name(func),
            executor=resolve_executor(func, options.executor),
        )
        with self._lock:
            existing = self._by_name.get(definition.name)
            if existing is not None and existing.func is not func:
                # Re-running a module (reload, notebooks) replaces; two different functions
                # claiming one explicit name is a mistake worth a warning.
                logger.warning("task name %r now refers to %r", definition.name, func)
            self._by_name[definition.name] = definition
            self._by_func[func] = definition
        return definition

    def schedule(
        self,
        every: float | None = None,
        cron: str | None = None,
        retries: int = 0,
        delay: float = 0.0,
        backoff: float = 1.0,
        name: str | None = None,
        run_on_startup: bool = False,
        timezone: str = "UTC",
        queue: str | None = None,
        executor: ExecutorKind | None = None,
        catch_up: bool = False,
    ) -> Callable[[F], F]:
        """Declare a periodic task (``every=`` seconds or ``cron=``): the function becomes a
        task plus a schedule for it.

        Everything is validated here, at decoration time, with a message naming the bad
        option. See "Schedules" in docs/task-control.md.
        """
        check_schedule(every, cron, timezone, run_on_startup, catch_up)
        options = TaskOptions(
            retries=retries, delay=delay, backoff=backoff, name=name, queue=queue, executor=executor
        )

        def decorate(func: F) -> F:
            definition = self.register(func, options)
            self.add_schedule(
                ScheduleDefinition(
                    task=definition,
                    every=float(every) if every is not None else None,
                    cron=cron,
                    run_on_startup=run_on_startup,
                    timezone=timezone,
                    catch_up=catch_up,
                )
            )
            return func

        return decorate

    def add_schedule(self, schedule: ScheduleDefinition) -> None:
        with self._lock:
            self._schedules.append(schedule)

    @property
    def schedules(self) -> list[ScheduleDefinition]:
        return list(self._schedules)

    def get(self, name: str) -> TaskDefinition:
        """The definition registered under ``name``; raises ``UnknownTaskError``.

        A bare function name (``send_email``, as fastapi-taskflow 0.12 stored names) finds the
        one task of that function name (``app.mail:send_email``); several is an error.
        """
        found = self.find(name)
        if found is None:
            raise UnknownTaskError(self.why_unknown(name))
        return found

    def find(self, name: str) -> TaskDefinition | None:
        """Like :meth:`get`, but None when no task (or more than one) answers to ``name``."""
        definition = self._by_name.get(name)
        if definition is not None:
            return definition
        candidates = self._bare_matches(name)
        return candidates[0] if len(candidates) == 1 else None

    def why_unknown(self, name: str) -> str:
        """Why ``name`` finds no task, in a sentence that says what to do."""
        candidates = self._bare_matches(name)
        if len(candidates) > 1:
            listed = ", ".join(sorted(d.name for d in candidates))
            return (
                f"the bare task name {name!r} (stored by fastapi-taskflow 0.12) matches several"
                f" tasks: {listed}; give one of them @task(name={name!r})"
            )
        return f"no task is registered under the name {name!r}"

    def _bare_matches(self, name: str) -> list[TaskDefinition]:
        if not name or ":" in name:
            return []
        with self._lock:
            definitions = list(self._by_name.values())
        return [d for d in definitions if getattr(d.func, "__name__", None) == name]

    def definition_for(self, func: Callable[..., Any]) -> TaskDefinition:
        """The registered definition of ``func``, or default options for a plain function."""
        definition = self._by_func.get(func) or self._unregistered.get(func)
        if definition is not None:
            return definition
        registered = self._by_func.get(_unwrap(func))
        if registered is not None:
            # A wrapper of a registered task (a test spy, a decorator using functools.wraps):
            # call the wrapper so it sees the call, with the task's own name and options.
            definition = replace(registered, func=func)
            self._remember(func, definition)
            return definition
        definition = TaskDefinition(
            func=func,
            options=TaskOptions(),
            name=qualified_name(func),
            executor=resolve_executor(func, None),
            registered=False,
        )
        self._remember(func, definition)
        # Logged once per function while it stays in the cache (see UNREGISTERED_CACHE_SIZE).
        logger.info(
            "task %s is not registered with @task(); it runs with default options and "
            "cannot be requeued after a restart",
            definition.name,
        )
        return definition

    def _remember(self, func: Callable[..., Any], definition: TaskDefinition) -> None:
        """Cache ``definition``, letting go of the least recently added past the bound."""
        with self._lock:
            self._unregistered[func] = definition
            if len(self._unregistered) > UNREGISTERED_CACHE_SIZE:
                self._unregistered.popitem(last=False)

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self._by_name)

    def definitions(self) -> list[TaskDefinition]:
        return list(self._by_name.values())
