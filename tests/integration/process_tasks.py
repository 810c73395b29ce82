"""Task functions for the process pool tests.

They live at module level in their own module so a spawned worker can import them by name.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from fastapi_taskflow.context import get_task_context, set_progress, task_log


class ReportError(Exception):
    """An ordinary exception: it pickles, so its type must survive the trip back."""


class HoldsLock(Exception):
    """An exception whose state cannot be pickled."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class NeedsTwoArgs(Exception):
    """Pickles fine but cannot be rebuilt: unpickling calls __init__ with one argument."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")


def add(a: int, b: int) -> int:
    return a + b


def echo(value: Any) -> Any:
    return value


def apply(func: Any, value: Any) -> Any:
    return func(value)


def whoami() -> int:
    return os.getpid()


def context() -> Any:
    return get_task_context()


def send_report(recipient: Any, conn: Any = None) -> None:
    """Stands for a real task in the argument checks; never run."""


def fail_with(message: str) -> None:
    raise ReportError(message)


def fail_unpicklable() -> None:
    raise HoldsLock("disk quota exceeded")


def fail_unloadable() -> None:
    raise NeedsTwoArgs(7, "bad row")


def fail_timeout() -> None:
    raise TimeoutError("the remote API timed out")


def return_unpicklable() -> Any:
    return threading.Lock()


def log_then_wait(event: Any) -> str:
    """Logs (with its pid) and reports progress, then blocks until the test sets ``event``."""
    task_log("started", pid=os.getpid())
    set_progress(0.25, "waiting for the test")
    if not event.wait(30):
        raise RuntimeError("the test never set the event")
    set_progress(1.0, "released")
    return "released"


def exit_now(code: int) -> None:
    task_log("started", pid=os.getpid())
    os._exit(code)


def sleep_for(seconds: float) -> float:
    task_log("started", pid=os.getpid())
    time.sleep(seconds)
    return seconds
