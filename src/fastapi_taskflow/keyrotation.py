"""Key rotation: re-encrypt every stored payload with the first key, in resumable batches.

``encrypt_args_key=[new, old]`` already lets an app run through a rotation: new tasks use the
first key, stored ones decrypt with any. :func:`rotate_keys` (``taskflow keys rotate``) then
rewrites what is stored under an older key (journal entries, history records' arguments,
sealed errors and results) so the old key can be dropped.

* Batches of ``batch_size``; after each, the position is saved in the backend's metadata
  (``keys.rotate.cursor``), so an interrupted run resumes where it stopped (with the same
  first key; a different first key starts over).
* Values already under the first key are left alone, so running it twice is cheap and safe.
* Rewrites touch only rows that still exist: a task that finished, or a record deleted,
  while the rotation ran is not brought back.
* Payloads no configured key can decrypt are counted (and a few ids listed), never changed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from .backends.base import JournalEntry, RecordQuery, TaskBackend
from .crypto import ArgumentCipher
from .errors import ArgumentDecryptionError
from .models import TaskRecord

logger = logging.getLogger("fastapi_taskflow.keys")

CURSOR_KEY = "keys.rotate.cursor"
MAX_LISTED = 20
#: (phase, items examined in that phase so far, phase total if known)
Progress = Callable[[str, int, int | None], None]


@dataclass(slots=True)
class RotationReport:
    """What a rotation did. ``total`` counts stored items that carry encrypted data."""

    rotated: int = 0
    unchanged: int = 0
    skipped_undecryptable: int = 0
    vanished: int = 0
    total: int = 0
    resumed: bool = False
    undecryptable_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def _note_undecryptable(self, task_id: str) -> None:
        self.skipped_undecryptable += 1
        if len(self.undecryptable_ids) < MAX_LISTED:
            self.undecryptable_ids.append(task_id)


async def rotate_keys(
    backend: TaskBackend,
    cipher: ArgumentCipher,
    *,
    batch_size: int = 500,
    progress: Progress | None = None,
    restart: bool = False,
) -> RotationReport:
    """Re-encrypt the journal, then the history, with ``cipher``'s first key."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    state = None if restart else await _load_state(backend, cipher)
    report = RotationReport(resumed=state is not None)
    if state is not None:
        for name in ("rotated", "unchanged", "skipped_undecryptable", "vanished", "total"):
            setattr(report, name, int(state["counts"].get(name, 0)))
    phase = state["phase"] if state is not None else "journal"
    after = state["after"] if state is not None else None
    rotation = _Rotation(backend, cipher, report, batch_size, progress)
    if phase == "journal":
        await rotation.journal(after)
        after = None
    await rotation.records(after)
    await backend.set_meta(CURSOR_KEY, "")
    logger.info("key rotation finished: %s", report.to_dict())
    return report


async def _load_state(backend: TaskBackend, cipher: ArgumentCipher) -> dict[str, Any] | None:
    raw = await backend.get_meta(CURSOR_KEY)
    if not raw:
        return None
    try:
        state = json.loads(raw)
    except ValueError:
        logger.warning("ignoring an unreadable %s; starting over", CURSOR_KEY)
        return None
    if not isinstance(state, dict) or state.get("key") != cipher.key_id:
        return None  # a rotation to another key: start over
    return state


class _Rotation:
    """One run: walks both phases and saves its position after every batch."""

    def __init__(
        self,
        backend: TaskBackend,
        cipher: ArgumentCipher,
        report: RotationReport,
        batch_size: int,
        progress: Progress | None,
    ) -> None:
        self.backend = backend
        self.cipher = cipher
        self.report = report
        self.batch_size = batch_size
        self.progress = progress

    async def journal(self, after: str | None) -> None:
        done = 0
        while True:
            entries, cursor = await self.backend.journal_page(after, self.batch_size)
            changed = [e for e in entries if self._entry(e)]
            self._count_written(len(changed), await self.backend.journal_update(changed))
            done += len(entries)
            self._tell("journal", done, None)
            if cursor is None:
                return
            after = cursor
            await self._save("journal", after)

    async def records(self, cursor: str | None) -> None:
        counts = await self.backend.count_by_status()
        total = sum(counts.values())
        done = 0
        while True:
            page = await self.backend.query_records(
                RecordQuery(limit=self.batch_size, cursor=cursor)
            )
            changed = [r for r in page.records if self._record(r)]
            self._count_written(len(changed), await self.backend.update_records(changed))
            done += len(page.records)
            self._tell("history", done, max(total, done))
            if page.next_cursor is None:
                return
            cursor = page.next_cursor
            await self._save("records", cursor)

    def _entry(self, entry: JournalEntry) -> bool:
        """True when ``entry`` was re-encrypted (and must be written)."""
        if not entry.encrypted:
            return False
        self.report.total += 1
        new = self._token(entry.task_id, entry.payload)
        if new is None:
            return False
        entry.payload = new
        return True

    def _record(self, record: TaskRecord) -> bool:
        sealed = (record.encrypted_payload, record.encrypted_error, record.encrypted_result)
        if all(token is None for token in sealed):
            return False
        self.report.total += 1
        try:
            payload, error, result = (_rotate(self.cipher, token) for token in sealed)
        except ArgumentDecryptionError:
            self.report._note_undecryptable(record.task_id)
            return False
        if payload is None and error is None and result is None:
            self.report.unchanged += 1
            return False
        record.encrypted_payload = payload or record.encrypted_payload
        record.encrypted_error = error or record.encrypted_error
        record.encrypted_result = result or record.encrypted_result
        return True

    def _token(self, task_id: str, token: bytes) -> bytes | None:
        try:
            new = _rotate(self.cipher, token)
        except ArgumentDecryptionError:
            self.report._note_undecryptable(task_id)
            return None
        if new is None:
            self.report.unchanged += 1
        return new

    def _count_written(self, wanted: int, written: int) -> None:
        self.report.rotated += written
        self.report.vanished += wanted - written

    def _tell(self, phase: str, done: int, total: int | None) -> None:
        if self.progress is not None:
            self.progress(phase, done, total)

    async def _save(self, phase: str, after: str) -> None:
        counts = {
            name: getattr(self.report, name)
            for name in ("rotated", "unchanged", "skipped_undecryptable", "vanished", "total")
        }
        state = {"key": self.cipher.key_id, "phase": phase, "after": after, "counts": counts}
        await self.backend.set_meta(CURSOR_KEY, json.dumps(state))


def _rotate(cipher: ArgumentCipher, token: bytes | None) -> bytes | None:
    """``token`` under the first key, or None when there is nothing to do."""
    if token is None or cipher.is_current(token):
        return None
    return cipher.rotate(token)
