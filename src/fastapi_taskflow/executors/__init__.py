"""Where a task's function runs: the event loop, a thread, or a worker process."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..context import TaskSink
from ..errors import TaskTimeoutError
from .threads import make_thread_pool, run_in_thread

if TYPE_CHECKING:
    from ..settings import ExecutionSettings
    from .process import ProcessPool

__all__ = ["ExecutorSet"]


class ExecutorSet:
    """Runs one attempt on the right executor and enforces its timeout."""

    def __init__(
        self,
        settings: ExecutionSettings,
        *,
        thread_pool: ThreadPoolExecutor | None = None,
        process_pool: ProcessPool | None = None,
    ) -> None:
        threads = settings.max_sync_threads
        # A pool handed in belongs to whoever made it (the DI container): never shut it down here.
        self._owns_threads = thread_pool is None and threads is not None
        self.thread_pool = thread_pool or (
            make_thread_pool(threads) if threads is not None else None
        )
        self._owns_processes = process_pool is None
        self._process_pool = process_pool
        self._max_process_workers = settings.max_process_workers
        self._process_shutdown_timeout = settings.process_shutdown_timeout

    @property
    def process_pool(self) -> ProcessPool:
        """Created on first use, so apps without process tasks never start workers."""
        if self._process_pool is None:
            from .process import ProcessPool

            self._process_pool = ProcessPool(
                max_workers=self._max_process_workers or os.cpu_count() or 1,
                shutdown_timeout=self._process_shutdown_timeout,
            )
        return self._process_pool

    def check_arguments(
        self, kind: str, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        if kind == "process":
            self.process_pool.check_arguments(func, args, kwargs)

    async def run(
        self,
        kind: str,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        sink: TaskSink,
        timeout: float | None,
        trace_carrier: dict[str, str] | None = None,
    ) -> Any:
        if kind == "process":
            # The pool enforces the timeout itself: it must terminate the worker.
            return await self.process_pool.run(
                func,
                args,
                kwargs,
                context=sink.context,
                on_log=sink.log,
                on_progress=sink.progress,
                timeout=timeout,
                trace_carrier=trace_carrier,
            )
        if timeout is None:  # the common case skips the timeout machinery entirely
            if kind == "async":
                return await func(*args, **kwargs)
            return await run_in_thread(self.thread_pool, func, args, kwargs)
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                if kind == "async":
                    return await func(*args, **kwargs)
                return await run_in_thread(self.thread_pool, func, args, kwargs)
        except TimeoutError:
            if not deadline.expired():
                raise  # the task's own TimeoutError, not ours
            # A thread cannot be stopped: it is abandoned and its result ignored (documented).
            raise TaskTimeoutError(f"attempt exceeded its timeout of {timeout:g}s") from None

    async def close(self) -> None:
        if self._owns_processes and self._process_pool is not None:
            await self._process_pool.close()
        if self._owns_threads and self.thread_pool is not None:
            await asyncio.to_thread(self.thread_pool.shutdown, wait=True)
