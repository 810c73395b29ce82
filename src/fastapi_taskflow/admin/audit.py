"""The audit trail: who did what to which task, when, and how it went.

Entries live in memory (newest ``max_entries``) and, when the manager has a backend, in the
backend's metadata under one key, so they survive restarts and instances sharing the backend
see each other's actions (merged by entry id on every read and write: another instance may
have written since this one last looked).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..models import AuditEntry, utcnow

if TYPE_CHECKING:
    from ..manager import TaskManager

logger = logging.getLogger("fastapi_taskflow.admin")

META_KEY = "fastapi_taskflow:audit"


class AuditLog:
    """Bounded, persisted list of :class:`AuditEntry`."""

    def __init__(self, current_manager: Callable[[], TaskManager], max_entries: int = 1000) -> None:
        self._current_manager = current_manager
        self.max_entries = max_entries
        self._entries: deque[AuditEntry] = deque(maxlen=max_entries)
        self._lock = asyncio.Lock()

    @property
    def manager(self) -> TaskManager:
        """The manager now (a lazily given one changes between app runs)."""
        return self._current_manager()

    async def record(
        self, action: str, task_id: str, actor: str, result: str, **detail: Any
    ) -> AuditEntry:
        """Append one entry and persist the trail; a backend failure only logs."""
        entry = AuditEntry(
            entry_id=uuid.uuid4().hex,
            action=action,
            task_id=task_id,
            actor=actor,
            timestamp=utcnow(),
            detail={"result": result, **detail},
        )
        async with self._lock:
            self._entries.append(entry)
            await self._save()
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
        """Newest first."""
        async with self._lock:
            backend = self._backend()
            if backend is not None:
                self._merge(await self._read(backend))
            return list(reversed(self._entries))[:limit]

    def _backend(self) -> Any:
        manager = self.manager
        return manager.backend if manager.started else None

    async def _save(self) -> None:
        backend = self._backend()
        if backend is None:
            return
        self._merge(await self._read(backend))  # actions other instances took meanwhile
        data = json.dumps([e.to_dict() for e in self._entries], separators=(",", ":"))
        try:
            await backend.set_meta(META_KEY, data)
        except Exception:
            logger.error("could not persist the audit trail; kept in memory", exc_info=True)

    async def _read(self, backend: Any) -> list[AuditEntry]:
        try:
            raw = await backend.get_meta(META_KEY)
        except Exception:
            logger.error("could not read the audit trail from the backend", exc_info=True)
            return []
        if not raw:
            return []
        try:
            return [_from_dict(item) for item in json.loads(raw)]
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring a corrupt audit trail in the backend")
            return []

    def _merge(self, stored: list[AuditEntry]) -> None:
        known = {e.entry_id for e in self._entries}
        fresh = [e for e in stored if e.entry_id not in known]
        if not fresh:
            return
        merged = sorted([*self._entries, *fresh], key=lambda e: e.timestamp)
        self._entries = deque(merged[-self.max_entries :], maxlen=self.max_entries)


def _from_dict(item: dict[str, Any]) -> AuditEntry:
    return AuditEntry(
        entry_id=str(item["entry_id"]),
        action=str(item["action"]),
        task_id=str(item["task_id"]),
        actor=str(item["actor"]),
        timestamp=datetime.fromisoformat(item["timestamp"]),
        detail=dict(item.get("detail") or {}),
    )
