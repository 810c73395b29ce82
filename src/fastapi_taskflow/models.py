"""Plain data: statuses, task records, context, queue settings and observer events."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Literal, NoReturn, overload

from .ratelimit import RateLimit, parse_rate_limit

#: Where a task's function runs: on the event loop, in a thread, or in a worker process.
ExecutorKind = Literal["async", "thread", "process"]
#: Why a running attempt's asyncio task was cancelled: a user cancel, or the manager stopping.
StopReason = Literal["cancel", "shutdown"]
#: What created a task; stored as this string in its record and journal entry.
TaskSource = Literal["manual", "retry", "replay", "requeue", "scheduled"]


class TaskStatus(str, Enum):
    """Where a task is in its life.

    PENDING -> RUNNING -> SUCCESS | FAILED; a retry goes RUNNING -> PENDING (waiting out its
    backoff) -> RUNNING. CANCELLED, INTERRUPTED and REJECTED end a task that did not finish.
    """

    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    # True for the statuses that end a task; a plain attribute set below, not a property,
    # because it is read several times per task on the hot path.
    finished: bool

    def __str__(self) -> str:
        return str(self.value)


_ACTIVE = frozenset({TaskStatus.PENDING, TaskStatus.RUNNING})
for _status in TaskStatus:
    _status.finished = _status not in _ACTIVE
FINISHED_STATUSES = frozenset(s for s in TaskStatus if s not in _ACTIVE)
ACTIVE_STATUSES = _ACTIVE
# A key held by a task in one of these statuses blocks a second task with the same key.
IDEMPOTENCY_BLOCKING = frozenset({TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.SUCCESS})
# A task in one of these statuses can be retried (API, CLI, ``TaskManager.retry``).
RETRYABLE_STATUSES = frozenset({TaskStatus.FAILED, TaskStatus.INTERRUPTED, TaskStatus.CANCELLED})


# The current time, timezone-aware. A partial, not a def: a partial reaches datetime.now
# without a Python frame.
utcnow: Callable[[], datetime] = functools.partial(datetime.now, UTC)
# The current time as epoch seconds: what a record keeps on the hot path. A float is one C call
# to make (a datetime is ~2,800 instructions) and half the bytes; ``TaskRecord`` turns it into a
# datetime only when one is read.
clock: Callable[[], float] = time.time
_from_timestamp: Callable[[float], datetime] = functools.partial(datetime.fromtimestamp, tz=UTC)

#: A moment as a record keeps it: epoch seconds from :data:`clock`, or a datetime as given
#: (loaded from a backend, set by a caller), kept as it is.
Moment = float | datetime


def as_datetime(moment: Moment) -> datetime:
    """The moment as a datetime: epoch seconds become an aware UTC datetime, to the microsecond."""
    return _from_timestamp(moment) if isinstance(moment, float) else moment


def _micros(seconds: float) -> int:
    """Microseconds since the epoch, rounded as ``datetime.fromtimestamp`` rounds them."""
    fraction, whole = math.modf(seconds)
    return int(whole) * 1_000_000 + round(fraction * 1e6)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


class _SharedEmptyDict(dict[Any, Any]):
    """The empty ``tags``/``kwargs`` of every record that has none: most tasks have neither,
    and two dicts per record are ~130 bytes and two objects for every garbage collection to
    walk, for all of history. Shared, so it refuses changes (assign a new dict instead); a copy
    or a pickle of it is a plain empty dict."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("a record's empty tags and kwargs are shared: assign a new dict instead")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> tuple[type[dict[Any, Any]], tuple[()]]:
        return (dict, ())


#: The one empty dict records share (see ``_SharedEmptyDict``).
EMPTY: dict[Any, Any] = _SharedEmptyDict()


class _OptionalTime:
    """A record's moment read as a datetime (None until there is one); set with either."""

    __slots__ = ("_slot",)

    def __init__(self, slot: str) -> None:
        self._slot = slot

    @overload
    def __get__(self, record: None, owner: type[Any]) -> _OptionalTime: ...

    @overload
    def __get__(self, record: TaskRecord, owner: type[Any]) -> datetime | None: ...

    def __get__(
        self, record: TaskRecord | None, owner: type[Any]
    ) -> datetime | _OptionalTime | None:
        if record is None:
            return self
        moment: Moment | None = getattr(record, self._slot)
        return None if moment is None else as_datetime(moment)

    def __set__(self, record: TaskRecord, value: Moment | None) -> None:
        setattr(record, self._slot, value)


# TaskRecord's attributes in constructor order, and the ones its repr leaves out.
_FIELDS = (
    "task_id",
    "func_name",
    "status",
    "args",
    "kwargs",
    "created_at",
    "start_time",
    "end_time",
    "retries_used",
    "error",
    "logs",
    "stacktrace",
    "idempotency_key",
    "tags",
    "source",
    "priority",
    "executor",
    "queue",
    "progress",
    "progress_message",
    "encrypted_payload",
    "requeue_count",
    "trace_context",
    "encrypted_error",
    "encoded_call",
    "result_data",
    "encrypted_result",
    "result_note",
    "result_expires_at",
    "waiting_reason",
)
_NOT_IN_REPR = frozenset({"encoded_call", "result_data", "encrypted_result"})
# The attributes read as datetimes, and the slots that keep them.
_SLOT_OF = {"created_at": "created_moment", "start_time": "start_moment", "end_time": "end_moment"}


class TaskRecord:
    """Everything known about one task: what it runs, with what, and how it went.

    ``encrypted_payload`` holds the arguments when encryption is on; ``args``/``kwargs`` are then
    empty so the clear values exist only inside the executor.

    ``created_at``, ``start_time`` and ``end_time`` read as datetimes; the record keeps them as
    ``*_moment`` (see :data:`Moment`), so the task's own path never builds a datetime.
    Equality is identity.
    """

    # The moments' slots hold epoch seconds or a datetime (see :data:`Moment`).
    __slots__ = tuple(_SLOT_OF.get(name, name) for name in _FIELDS)

    def __init__(
        self,
        task_id: str,
        func_name: str,
        status: TaskStatus = TaskStatus.PENDING,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        created_at: Moment | None = None,
        start_time: Moment | None = None,
        end_time: Moment | None = None,
        retries_used: int = 0,
        error: str | None = None,
        logs: Sequence[str] = (),
        stacktrace: str | None = None,
        idempotency_key: str | None = None,
        tags: dict[str, str] | None = None,
        source: TaskSource = "manual",
        priority: int | None = None,
        executor: ExecutorKind = "async",
        queue: str = "default",
        progress: float | None = None,
        progress_message: str | None = None,
        encrypted_payload: bytes | None = None,
        requeue_count: int = 0,
        trace_context: dict[str, str] | None = None,
        encrypted_error: bytes | None = None,
        encoded_call: bytes | None = None,
        result_data: bytes | None = None,
        encrypted_result: bytes | None = None,
        result_note: str | None = None,
        result_expires_at: datetime | None = None,
        waiting_reason: str | None = None,
    ) -> None:
        self.task_id = task_id
        self.func_name = func_name
        self.status = status
        self.args = args
        self.kwargs: dict[str, Any] = kwargs or EMPTY
        self.created_moment: Moment = clock() if created_at is None else created_at
        self.start_moment: Moment | None = start_time
        self.end_moment: Moment | None = end_time
        self.retries_used = retries_used
        self.error = error
        # An empty tuple until the first line (see add_log): most tasks never log, and a list
        # per record would be one more object for every garbage collection to walk.
        self.logs = logs
        self.stacktrace = stacktrace
        self.idempotency_key = idempotency_key
        self.tags: dict[str, str] = tags or EMPTY
        self.source = source
        self.priority = priority
        self.executor = executor
        self.queue = queue
        self.progress = progress
        self.progress_message = progress_message
        self.encrypted_payload = encrypted_payload
        self.requeue_count = requeue_count
        # W3C trace context captured at enqueue (tracing on), carried into the attempts' spans.
        self.trace_context = trace_context
        # ``encrypt_errors``: the real error and stack trace, sealed; ``error`` is a placeholder.
        self.encrypted_error = encrypted_error
        # The arguments' lossless encoding, made once and shared by the journal and the row.
        self.encoded_call = encoded_call
        # The return value's lossless encoding (serialization.encode_result); None: no value
        # kept (the task returned None, or see ``result_note``). ``encrypted_result``: the
        # same, sealed with the argument key (encryption on), and ``result_data`` is then None.
        self.result_data = result_data
        self.encrypted_result = encrypted_result
        # Why a value the task returned is not kept (too large, not encodable, expired, ...).
        self.result_note = result_note
        # When a kept result is dropped (``result_ttl``); the record itself stays.
        self.result_expires_at = result_expires_at
        # Why a PENDING task has not started yet (e.g. waiting for its rate limit).
        self.waiting_reason = waiting_reason

    @property
    def created_at(self) -> datetime:
        return as_datetime(self.created_moment)

    @created_at.setter
    def created_at(self, value: Moment) -> None:
        self.created_moment = value

    start_time = _OptionalTime("start_moment")
    end_time = _OptionalTime("end_moment")

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={getattr(self, name)!r}" for name in _FIELDS if name not in _NOT_IN_REPR
        )
        return f"TaskRecord({shown})"

    def add_log(self, line: str) -> None:
        """Append one line to the task's log."""
        if isinstance(self.logs, list):
            self.logs.append(line)
        else:
            self.logs = [*self.logs, line]

    @property
    def encrypted(self) -> bool:
        return self.encrypted_payload is not None

    @property
    def has_result(self) -> bool:
        """A return value is kept (it may be None only when the task returned None)."""
        return self.result_data is not None or self.encrypted_result is not None

    @property
    def duration(self) -> float | None:
        """Seconds from the first start to the end; None until the task has both. Always
        ``(end_time - start_time).total_seconds()``: to the microsecond, like the times shown."""
        start, end = self.start_moment, self.end_moment
        if start is None or end is None:
            return None
        if isinstance(start, float) and isinstance(end, float):
            return (_micros(end) - _micros(start)) / 1_000_000
        return (as_datetime(end) - as_datetime(start)).total_seconds()

    def to_dict(self, *, include_args: bool = False) -> dict[str, Any]:
        """The JSON shape of the HTTP API. Arguments only on request, never when encrypted."""
        data: dict[str, Any] = {
            "task_id": self.task_id,
            "func_name": self.func_name,
            "status": self.status.value,
            "created_at": _iso(self.created_at),
            "start_time": _iso(self.start_time),
            "end_time": _iso(self.end_time),
            "duration": self.duration,
            "retries_used": self.retries_used,
            "error": self.error,
            "logs": list(self.logs),
            "stacktrace": self.stacktrace,
            "idempotency_key": self.idempotency_key,
            "tags": dict(self.tags),
            "source": self.source,
            "priority": self.priority,
            "executor": self.executor,
            "queue": self.queue,
            "progress": self.progress,
            "progress_message": self.progress_message,
            "encrypted": self.encrypted,
            "error_encrypted": self.encrypted_error is not None,
            "has_result": self.has_result,
            "result_note": self.result_note,
            "result_expires_at": _iso(self.result_expires_at),
            "waiting_reason": self.waiting_reason,
        }
        if include_args and not self.encrypted:
            data["args"] = [_display(a) for a in self.args]
            data["kwargs"] = {k: _display(v) for k, v in self.kwargs.items()}
        return data


def _display(value: Any) -> Any:
    """A JSON-safe view of an argument for people; the lossless form lives in the codec."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, list | tuple):
        return [_display(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _display(v) for k, v in value.items()}
    return repr(value)


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a running task can learn about itself through ``get_task_context()``."""

    task_id: str
    func_name: str
    attempt: int
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class QueueConfig:
    """Settings of one named queue: how many of its tasks run at once, how many may wait,
    and how often they may start (``rate_limit``: ``"10/s"`` or a ``RateLimit``)."""

    concurrency: int | None = None
    max_size: int | None = None
    rate_limit: RateLimit | str | None = None

    def __post_init__(self) -> None:
        self.rate_limit = parse_rate_limit(self.rate_limit, what="QueueConfig.rate_limit")
        self._check_caps()

    @property
    def rate(self) -> RateLimit | None:
        """``rate_limit`` as parsed (text is turned into a ``RateLimit`` on construction)."""
        return self.rate_limit if isinstance(self.rate_limit, RateLimit) else None

    def _check_caps(self) -> None:
        for name in ("concurrency", "max_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"QueueConfig.{name} must be an int or None, got {value!r}")
            if value is not None and value < 1:
                raise ValueError(f"QueueConfig.{name} must be >= 1 or None, got {value}")


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One ``task_log()`` call, as observers receive it."""

    task_id: str
    func_name: str
    message: str
    level: str
    timestamp: datetime
    attempt: int
    tags: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    queue: str = "default"


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    """One status change of a task (RUNNING, SUCCESS, FAILED, CANCELLED, INTERRUPTED, retries)."""

    task_id: str
    func_name: str
    status: TaskStatus
    timestamp: datetime
    attempt: int
    retries_used: int = 0
    duration: float | None = None
    error: str | None = None
    stacktrace: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    queue: str = "default"
    retrying: bool = False


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One action a person took through the task API."""

    entry_id: str
    action: str
    task_id: str
    actor: str
    timestamp: datetime
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "entry_id": self.entry_id,
            "action": self.action,
            "task_id": self.task_id,
            "actor": self.actor,
            "timestamp": _iso(self.timestamp),
            "detail": dict(self.detail),
        }
