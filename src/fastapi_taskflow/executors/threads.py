"""Sync tasks in threads: a dedicated pool (``max_sync_threads``) or ``asyncio.to_thread``."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def make_thread_pool(max_sync_threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max_sync_threads, thread_name_prefix="taskflow-sync")


async def run_in_thread(
    pool: ThreadPoolExecutor | None,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Run ``func`` in ``pool`` (or the loop's default) with the caller's context variables."""
    if pool is None:
        return await asyncio.to_thread(func, *args, **kwargs)
    context = contextvars.copy_context()
    call = functools.partial(context.run, func, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(pool, call)
