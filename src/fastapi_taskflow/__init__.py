"""fastapi-taskflow: FastAPI background tasks with retries, status, persistence and a dashboard."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .backends.base import TaskBackend
from .compat import REMOVED, RENAMED, ScheduledOnce, removed, renamed
from .context import get_task_context, set_progress, task_log
from .errors import (
    BackendError,
    ConfigProblem,
    ConfigurationError,
    InvalidConfigurationError,
    QueueFullError,
    TaskArgumentError,
    TaskFailedError,
    TaskflowError,
    TaskTimeoutError,
    UnknownTaskError,
    WorkerCrashedError,
    WriteBufferFullError,
)
from .handles import ManagedBackgroundTasks, TaskHandle
from .loggers import (
    FileLogger,
    InMemoryLogger,
    LifecycleEvent,
    LogEvent,
    LoggingObserver,
    StdoutLogger,
    TaskObserver,
)
from .manager import TaskManager
from .models import QueueConfig, TaskContext, TaskRecord, TaskStatus
from .ratelimit import RateLimit
from .registry import TaskOptions, TaskRegistry

if TYPE_CHECKING:
    from .admin import TaskAdmin, TaskAuthBackend
    from .backends.memory import MemoryBackend
    from .backends.mysql import MySQLBackend
    from .backends.postgres import PostgresBackend
    from .backends.redis import RedisBackend
    from .backends.sqlite import SqliteBackend

__version__ = "0.1.0"

__all__ = [
    # core
    "ManagedBackgroundTasks",
    "QueueConfig",
    "RateLimit",
    "TaskAdmin",
    "TaskAuthBackend",
    "TaskContext",
    "TaskHandle",
    "TaskManager",
    "TaskOptions",
    "TaskRecord",
    "TaskRegistry",
    "TaskStatus",
    "ScheduledOnce",
    # inside a task
    "get_task_context",
    "set_progress",
    "task_log",
    # backends
    "MemoryBackend",
    "MySQLBackend",
    "PostgresBackend",
    "RedisBackend",
    "SqliteBackend",
    "TaskBackend",
    # observers
    "FileLogger",
    "InMemoryLogger",
    "LifecycleEvent",
    "LogEvent",
    "LoggingObserver",
    "StdoutLogger",
    "TaskObserver",
    # errors
    "BackendError",
    "ConfigProblem",
    "ConfigurationError",
    "InvalidConfigurationError",
    "QueueFullError",
    "TaskArgumentError",
    "TaskFailedError",
    "TaskTimeoutError",
    "TaskflowError",
    "UnknownTaskError",
    "WorkerCrashedError",
    "WriteBufferFullError",
]


def __getattr__(name: str) -> Any:
    # The admin pulls in the web layer and each backend its driver (redis, aiosqlite): import
    # them only when asked for, so ``import fastapi_taskflow`` stays cheap.
    if name == "TaskAdmin":
        from .admin import TaskAdmin

        return TaskAdmin
    if name == "TaskAuthBackend":
        from .admin.auth import TaskAuthBackend

        return TaskAuthBackend
    if name in (
        "MemoryBackend",
        "RedisBackend",
        "SqliteBackend",
        "PostgresBackend",
        "MySQLBackend",
    ):
        from . import backends

        return getattr(backends, name)
    if name in RENAMED:
        return renamed(name, __name__)
    if name in REMOVED:
        raise removed(name, __name__)
    raise AttributeError(f"module 'fastapi_taskflow' has no attribute {name!r}")
