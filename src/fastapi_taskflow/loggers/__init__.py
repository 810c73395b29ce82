"""Observers: everything that watches tasks' log lines and status changes.

:class:`TaskObserver` is the base class (every hook a no-op); :class:`ObserverChain` delivers
events to several observers, isolating their failures. The built-ins write lines to stdout
(:class:`StdoutLogger`), to a file (:class:`FileLogger`), keep them in memory for tests
(:class:`InMemoryLogger`) or forward them to a stdlib logger (:class:`LoggingObserver`).
"""

from typing import Any

from ..models import LifecycleEvent, LogEvent
from .base import TaskObserver
from .chain import ObserverChain
from .file import FileLogger
from .logging_observer import LoggingObserver
from .memory import InMemoryLogger
from .stdout import StdoutLogger

__all__ = [
    "FileLogger",
    "InMemoryLogger",
    "LifecycleEvent",
    "LogEvent",
    "LoggingObserver",
    "ObserverChain",
    "StdoutLogger",
    "TaskObserver",
]


def __getattr__(name: str) -> Any:
    if name == "LoggerChain":
        from ..compat import renamed

        return renamed(name, __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
