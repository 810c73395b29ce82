"""ManagerSettings: the typed form of ``TaskManager``'s long keyword list, validated once."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .models import QueueConfig

MiB = 1024 * 1024


def _positive(
    name: str,
    value: Any,
    *,
    allow_none: bool = True,
    integer: bool = False,
    allow_zero: bool = False,
) -> None:
    if value is None and allow_none:
        return
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if (
        isinstance(value, bool)
        or not isinstance(value, kinds)
        or (isinstance(value, float) and not math.isfinite(value))
    ):
        kind = "an int" if integer else "a number"
        raise ValueError(f"{name} must be {kind}{' or None' if allow_none else ''}, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):  # type: ignore[operator]
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def check_merged_list_ttl(value: float) -> None:
    """0.12's ``merged_list_ttl``: accepted and unused (each page of the task list is one indexed
    backend query, so there is no merged list to cache), and still refused when invalid."""
    _positive("merged_list_ttl", value, allow_none=False, allow_zero=True)


@dataclass(slots=True)
class ManagerSettings:
    """Validated manager settings (everything but the injected parts)."""

    snapshot_interval: float = 60.0
    requeue_pending: bool = False
    max_concurrent_tasks: int | None = None
    max_sync_threads: int | None = None
    max_process_workers: int | None = None
    process_shutdown_timeout: float = 30.0
    retention_days: float | None = None
    retry_replaces_original: bool = True
    queues: dict[str, QueueConfig] = field(default_factory=dict)
    max_history: int = 10_000
    default_timeout: float | None = None
    drain_timeout: float = 30.0
    heartbeat_interval: float = 10.0
    lease_ttl: float = 30.0
    max_requeues: int = 3
    # How often finished records older than retention_days are deleted (seconds).
    prune_interval: float = 3600.0
    # How long a response waits for its request's journal commit before the request's tasks
    # are withdrawn and it becomes a 503 (seconds; see barrier.py).
    barrier_timeout: float = 30.0
    # Writes waiting for the backend (batches being written included) before the oldest
    # finished-record writes are dropped.
    max_buffered: int = 100_000
    # Past max_buffered journal changes, refuse new journaled tasks (WriteBufferFullError)
    # instead of keeping every journal change in memory.
    journal_backpressure: bool = False
    max_result_bytes: int = MiB
    result_ttl: float | None = None

    def __post_init__(self) -> None:
        _positive("snapshot_interval", self.snapshot_interval, allow_none=False)
        _positive("max_concurrent_tasks", self.max_concurrent_tasks, integer=True)
        _positive("max_sync_threads", self.max_sync_threads, integer=True)
        _positive("max_process_workers", self.max_process_workers, integer=True)
        _positive(
            "process_shutdown_timeout",
            self.process_shutdown_timeout,
            allow_none=False,
            allow_zero=True,
        )
        _positive("retention_days", self.retention_days)
        _positive("max_history", self.max_history, allow_none=False, integer=True, allow_zero=True)
        _positive("default_timeout", self.default_timeout)
        _positive("drain_timeout", self.drain_timeout, allow_none=False, allow_zero=True)
        _positive("heartbeat_interval", self.heartbeat_interval, allow_none=False)
        _positive("lease_ttl", self.lease_ttl, allow_none=False)
        _positive(
            "max_requeues", self.max_requeues, allow_none=False, integer=True, allow_zero=True
        )
        _positive("prune_interval", self.prune_interval, allow_none=False)
        _positive("barrier_timeout", self.barrier_timeout, allow_none=False)
        _positive("max_buffered", self.max_buffered, allow_none=False, integer=True)
        _positive(
            "max_result_bytes",
            self.max_result_bytes,
            allow_none=False,
            integer=True,
            allow_zero=True,
        )
        _positive("result_ttl", self.result_ttl)
        if self.lease_ttl <= self.heartbeat_interval:
            raise ValueError(
                f"lease_ttl ({self.lease_ttl}) must be longer than heartbeat_interval "
                f"({self.heartbeat_interval}), or live instances lose their tasks"
            )
        for name, config in self.queues.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"queue names must be non-empty strings, got {name!r}")
            if not isinstance(config, QueueConfig):
                raise ValueError(f"queues[{name!r}] must be a QueueConfig, got {config!r}")
