"""The audit trail: who did what to which task, when, and how it went.

With a started manager on a backend (every built-in one keeps an audit trail), the trail is the
backend's: each entry is appended there and the trail trimmed to the newest ``max_entries`` in
one atomic step, so instances sharing the backend record at the same moment without
overwriting one another, and any instance lists every instance's entries.

Otherwise (no backend, a manager not started yet, a custom backend without the audit
primitives) the trail lives in this process. So does an entry the backend failed to take: it is
logged and still listed here, next to the backend's.

Older versions kept the trail as one JSON document in the backend's metadata (``META_KEY``);
the first use of a backend moves that document's entries into the trail, once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
import weakref
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..backends.memory import MemoryBackend
from ..models import AuditEntry, utcnow

if TYPE_CHECKING:
    from ..backends.base import TaskBackend
    from ..manager import TaskManager

logger = logging.getLogger("fastapi_taskflow.admin")

#: The metadata key where older versions kept the whole trail as one JSON list.
META_KEY = "fastapi_taskflow:audit"
# Held by the instance moving that document, so two starting at once do not both move it.
MOVE_LOCK_TTL = 60.0


class AuditLog:
    """Append-only, bounded list of :class:`AuditEntry`, newest first."""

    def __init__(self, current_manager: Callable[[], TaskManager], max_entries: int = 1000) -> None:
        self._current_manager = current_manager
        self.max_entries = max_entries
        self._local = MemoryBackend()
        self._without_trail: weakref.WeakSet[TaskBackend] = weakref.WeakSet()
        self._moved: weakref.WeakSet[TaskBackend] = weakref.WeakSet()
        self._move_lock = asyncio.Lock()

    @property
    def manager(self) -> TaskManager:
        """The manager now (a lazily given one changes between app runs)."""
        return self._current_manager()

    async def record(
        self, action: str, task_id: str, actor: str, result: str, **detail: Any
    ) -> AuditEntry:
        """Append one entry; a backend failure only logs (the entry stays in this process)."""
        entry = AuditEntry(
            entry_id=uuid.uuid4().hex,
            action=action,
            task_id=task_id,
            actor=actor,
            timestamp=utcnow(),
            detail={"result": result, **detail},
        )
        backend = self._backend()
        if backend is None or not await self._store(backend, entry):
            await self._local.append_audit(entry.to_dict(), self.max_entries)
        logger.info(
            "audit: %s %s by %s: %s",
            action,
            task_id,
            actor,
            result,
            extra={"audit": entry.to_dict()},
        )
        return entry

    async def entries(self, limit: int = 100) -> list[AuditEntry]:
        """The newest ``limit`` entries, newest first."""
        here = await _read(self._local, limit)
        backend = self._backend()
        if backend is None:
            return here
        try:
            await self._move_old_document(backend)
            stored = await _read(backend, limit)
        except NotImplementedError:
            self._give_up_on(backend)
            return here
        except Exception:
            logger.error("could not read the audit trail from the backend", exc_info=True)
            return here
        if not here:
            return stored
        # Entries the backend could not take, placed among its own by time.
        merged = {e.entry_id: e for e in (*stored, *here)}
        return sorted(merged.values(), key=lambda e: e.timestamp, reverse=True)[:limit]

    def _backend(self) -> TaskBackend | None:
        manager = self.manager
        backend = manager.backend if manager.started else None
        return None if backend is None or backend in self._without_trail else backend

    async def _store(self, backend: TaskBackend, entry: AuditEntry) -> bool:
        try:
            await self._move_old_document(backend)
            await backend.append_audit(entry.to_dict(), self.max_entries)
        except NotImplementedError:
            self._give_up_on(backend)
            return False
        except Exception:
            logger.error("could not persist the audit entry; kept in this process", exc_info=True)
            return False
        return True

    def _give_up_on(self, backend: TaskBackend) -> None:
        self._without_trail.add(backend)
        logger.warning(
            "%s keeps no audit trail: TaskAdmin keeps it in this process only, so other "
            "instances do not see these entries",
            backend.describe(),
        )

    async def _move_old_document(self, backend: TaskBackend) -> None:
        if backend in self._moved:
            return
        async with self._move_lock:
            if backend not in self._moved and await move_meta_document(
                backend, self.manager.instance_id, self.max_entries
            ):
                self._moved.add(backend)


async def move_meta_document(backend: TaskBackend, owner: str, keep: int) -> bool:
    """Append the entries of the trail an older version kept in ``META_KEY`` to the backend's
    trail (oldest first, so the newest lists first) and empty the document. False when another
    instance is moving it now (its entries arrive with that move)."""
    if not await backend.get_meta(META_KEY):
        return True
    if not await backend.acquire_lock(f"{META_KEY}:move", owner, MOVE_LOCK_TTL):
        return False
    raw = await backend.get_meta(META_KEY)  # read again: a move that just ended emptied it
    old = _parse_document(raw or "[]")
    for entry in old[-keep:]:
        await backend.append_audit(entry.to_dict(), keep)
    await backend.set_meta(META_KEY, "")
    if old:
        logger.info("moved %d audit entries from the backend's metadata to its trail", len(old))
    return True


def _parse_document(raw: str) -> list[AuditEntry]:
    try:
        items = json.loads(raw)
        if not isinstance(items, list):
            raise ValueError("not a JSON list")
    except ValueError:
        logger.warning("ignoring a corrupt audit trail in the backend's metadata")
        return []
    entries = [e for e in map(_entry, items) if e is not None]
    return sorted(entries, key=lambda e: e.timestamp)


async def _read(backend: TaskBackend, limit: int) -> list[AuditEntry]:
    return [e for e in map(_entry, await backend.read_audit(limit)) if e is not None]


def _entry(item: Any) -> AuditEntry | None:
    """The entry a stored JSON object describes; None (logged) when it describes none."""
    try:
        if not isinstance(item, Mapping):
            raise TypeError("not a JSON object")
        return AuditEntry(
            entry_id=str(item["entry_id"]),
            action=str(item["action"]),
            task_id=str(item["task_id"]),
            actor=str(item["actor"]),
            timestamp=datetime.fromisoformat(item["timestamp"]),
            detail=dict(item.get("detail") or {}),
        )
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("skipping an unreadable audit entry: %s", exc)
        return None
