"""Every error fastapi-taskflow raises on purpose shares one root, :class:`TaskflowError`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models import TaskRecord


class TaskflowError(Exception):
    """Raised when fastapi-taskflow refuses an operation; the root of every error below."""


class QueueFullError(TaskflowError):
    """Raised when a task is added to a queue that already holds ``max_size`` waiting tasks."""

    def __init__(self, queue: str, max_size: int, task_id: str | None = None) -> None:
        super().__init__(f"queue {queue!r} is full ({max_size} tasks waiting)")
        self.queue = queue
        self.max_size = max_size
        self.task_id = task_id


class WriteBufferFullError(TaskflowError):
    """Raised when a task that must be journaled finds the write buffer at ``max_buffered``
    journal changes (the backend is down or slower than tasks arrive): try again later."""

    def __init__(self, max_buffered: int, backend: str) -> None:
        super().__init__(
            f"the journal write buffer is full ({max_buffered} changes waiting for {backend}): "
            "the task was not accepted; try again later"
        )
        self.max_buffered = max_buffered


class TaskArgumentError(TaskflowError, ValueError):
    """Raised when ``add_task`` gets arguments its executor cannot carry (e.g. unpicklable)."""


class TaskTimeoutError(TaskflowError, TimeoutError):
    """Raised when one attempt of a task runs longer than its ``timeout``."""


class UnknownTaskError(TaskflowError, LookupError):
    """Raised when a task id or a registered task name is not known."""


class ConfigurationError(TaskflowError, ValueError):
    """Raised when settings are invalid; the message names each bad key, its source and why."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One bad setting: where it is, where its value came from, and why it is refused."""

    path: str
    source: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{where}{self.reason} [from {self.source}]"


class InvalidConfigurationError(ConfigurationError):
    """Raised when settings are invalid; ``problems`` lists each bad key with source and reason."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"invalid taskflow configuration ({count} {noun}):\n{lines}")


class BackendError(TaskflowError):
    """Raised when a persistence backend cannot be reached or refuses an operation."""


class DamagedDatabaseError(BackendError):
    """Raised when SQLite's own integrity check finds damage in a database file."""

    def __init__(self, path: str, problems: list[str], *, full: bool = False) -> None:
        self.path = path
        self.problems = problems
        shown = "; ".join(problems[:5])
        if len(problems) > 5:
            shown += f" (and {len(problems) - 5} more)"
        pragma = "integrity_check" if full else "quick_check"
        super().__init__(
            f"SQLite database {path} is damaged (PRAGMA {pragma}): {shown}. Restore it from a "
            f"backup, or inspect it with `taskflow db check {path}`; taskflow does not start "
            "on a damaged file, whose journaled tasks could silently never run"
        )


class ArgumentDecryptionError(TaskflowError):
    """Raised when a task's encrypted arguments cannot be decrypted with any configured key."""


class TaskCancelledError(TaskflowError):
    """Raised inside a waiting caller when the task it waits for was cancelled."""


class WorkerCrashedError(TaskflowError):
    """Raised when the worker process running a task dies (signal or exit code in the message)."""

    def __init__(
        self,
        message: str,
        *,
        exitcode: int | None = None,
        pid: int | None = None,
        shutdown: bool = False,
    ) -> None:
        super().__init__(message)
        self.exitcode = exitcode
        self.pid = pid
        self.shutdown = shutdown


class IllegalTransitionError(TaskflowError, RuntimeError):
    """Raised when the dispatcher tries a move between job states that its diagram does not
    have (dispatch/job.py): a bug in taskflow, never something a task did."""

    def __init__(self, task_id: str, state: str, to: str) -> None:
        super().__init__(f"task {task_id}: a job cannot move from {state!r} to {to!r}")
        self.task_id = task_id
        self.state = state
        self.to = to


class TaskFailedError(TaskflowError):
    """Raised when a task whose result is awaited failed, was cancelled, rejected or interrupted."""

    def __init__(self, record: TaskRecord) -> None:
        error = record.error or "no error recorded"
        super().__init__(
            f"task {record.task_id} ({record.func_name}) is {record.status.value}: {error}"
        )
        self.record = record
        self.task_id = record.task_id
        self.status = record.status
