"""fastapi-taskflow 0.12's names, so an app written for 0.12 imports and runs.

Renamed classes resolve to the new one with a ``DeprecationWarning`` naming it (see
docs/upgrading.md); :class:`ScheduledOnce` is 0.12's description of a one-off run, built from
what ``TaskManager.list_scheduled()`` returns now.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: 0.12 name -> (the public module of the new name, new name, why the new one).
RENAMED = {
    "SnapshotBackend": (
        "fastapi_taskflow",
        "TaskBackend",
        "backends hold live tasks and the journal, not only snapshots",
    ),
    "LoggerChain": (
        "fastapi_taskflow.loggers",
        "ObserverChain",
        "it delivers to every TaskObserver, not only loggers",
    ),
    "TaskConfig": (
        "fastapi_taskflow",
        "TaskOptions",
        "the same fields plus timeout, max_delay, jitter and retry_on",
    ),
}


#: 0.12 names with no counterpart, and what to do instead (the AttributeError says it).
REMOVED = {
    "SnapshotScheduler": (
        "the manager persists by itself now (journal at enqueue, history every"
        " snapshot_interval): drop it and pass snapshot_backend= to TaskManager"
    ),
    "TaskExecutionContext": (
        "executors are internal now; inside a task use get_task_context() for the task's id,"
        " name, attempt and tags"
    ),
}


def removed(name: str, where: str) -> AttributeError:
    """The error for a 0.12 name that is gone, saying what replaces it (docs/upgrading.md)."""
    return AttributeError(
        f"{where}.{name} was removed after fastapi-taskflow 0.12: {REMOVED[name]}"
    )


def renamed(name: str, where: str) -> Any:
    """The class 0.12 called ``name``, with a warning naming its new spelling."""
    module, new, why = RENAMED[name]
    warnings.warn(
        f"{where}.{name} is now {new} ({why}): from {module} import {new}",
        DeprecationWarning,
        stacklevel=3,
    )
    return getattr(importlib.import_module(module), new)


def renamed_keyword(owner: str, old: str, new: str, value: Any, current: Any) -> Any:
    """``value`` of 0.12's keyword ``old`` (with a warning), unless ``new`` was given too."""
    if current is not None:
        raise TypeError(f"{owner}: give {new}= only ({old}= is its 0.12 spelling)")
    warnings.warn(f"{owner}({old}=...) is now {new}=...", DeprecationWarning, stacklevel=3)
    return value


def no_effect(owner: str, old: str, why: str = "queries run on asyncio, not threads") -> None:
    """Warn that 0.12's keyword ``old`` is accepted but does nothing now."""
    warnings.warn(f"{owner}({old}=...) has no effect: {why}", DeprecationWarning, stacklevel=3)


@dataclass
class ScheduledOnce:
    """A one-off run waiting to fire (0.12's shape). ``list_scheduled()`` now returns plain
    dicts; ``ScheduledOnce.from_dict(d)`` gives this object for code written against 0.12.

    Arguments are not part of a listing (they may be sealed), so ``args`` and ``kwargs`` are
    empty unless given.
    """

    run_key: str
    func_name: str
    fire_at: datetime
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    encrypted_payload: bytes | None = None
    queue: str = "default"
    priority: int | None = None
    idempotency_key: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScheduledOnce:
        """From one item of ``TaskManager.list_scheduled()``."""
        return cls(
            run_key=str(data["run_key"]),
            func_name=str(data["func_name"]),
            fire_at=datetime.fromisoformat(str(data["run_at"])),
            queue=data.get("queue") or "default",
            priority=data.get("priority"),
            idempotency_key=data.get("idempotency_key"),
            tags=dict(data.get("tags") or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        """0.12's JSON for a one-off run."""
        return {
            "run_key": self.run_key,
            "func_name": self.func_name,
            "fire_at": self.fire_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "queue": self.queue,
            "priority": self.priority,
            "tags": dict(self.tags),
            "created_at": self.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        }
