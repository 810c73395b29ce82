"""Task results: a return value kept on its record, sealed when encryption is on, size-capped,
dropped after ``result_ttl``; and the way callers read it back.

A task that returns None keeps nothing and pays nothing. Any other value is encoded once with
the lossless codec (``serialization.encode_result``); a value over ``max_result_bytes`` or one
the codec cannot carry is not stored, and ``record.result_note`` says why (the task still
succeeded). Expired results are dropped from memory by one timer, rewritten in the backend
(the record stays), and never returned by a reader even before the timer fires (a row read
from the backend after a restart included).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .errors import ArgumentDecryptionError, TaskFailedError
from .models import TaskRecord, TaskStatus, utcnow
from .serialization import decode_result, encode_result

if TYPE_CHECKING:
    from .crypto import ArgumentCipher
    from .registry import TaskOptions
    from .settings import ResultSettings

logger = logging.getLogger("fastapi_taskflow")

EXPIRED_NOTE = "dropped after its result_ttl"


class ResultKeeper:
    """Turns return values into record fields and back; drops them when they expire."""

    def __init__(
        self,
        *,
        cipher: ArgumentCipher | None,
        settings: ResultSettings,
        lookup: Callable[[str], TaskRecord | None] | None = None,
        tracked_limit: int = 100_000,
        on_dropped: Callable[[TaskRecord], None] | None = None,
    ) -> None:
        self.cipher = cipher
        self.max_result_bytes = settings.max_result_bytes
        self.result_ttl = settings.result_ttl
        # Expiring results are tracked by task id and found again in memory (``lookup``):
        # a record that left memory expires on read, and is not kept alive by this heap.
        self._lookup = lookup
        self._tracked_limit = tracked_limit
        # Told when an expired result left a record (the persister rewrites its row).
        self._on_dropped = on_dropped
        self._expiring: list[tuple[float, int, str]] = []
        self._sequence = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self.not_stored = 0

    # ---- writing -------------------------------------------------------------------------

    def keep(self, record: TaskRecord, options: TaskOptions, value: Any) -> None:
        """Store ``value`` (not None) on ``record``, or note why not. Event-loop thread."""
        if not options.store_result:
            record.result_note = "not stored: the task has store_result=False"
            return
        try:
            data = encode_result(value)
        except Exception as exc:  # whatever the value's own pickling raised
            self._not_stored(record, f"cannot be encoded ({type(value).__name__}: {exc})")
            return
        limit = options.max_result_bytes
        if limit is None:
            limit = self.max_result_bytes
        if len(data) > limit:
            self._not_stored(record, f"{len(data)} bytes encoded, over max_result_bytes ({limit})")
            return
        if self.cipher is not None:
            record.encrypted_result = self.cipher.encrypt(data)
        else:
            record.result_data = data
        ttl = options.result_ttl if options.result_ttl is not None else self.result_ttl
        if ttl is not None:
            record.result_expires_at = utcnow() + timedelta(seconds=ttl)
            self._expire_later(record, ttl)

    def _not_stored(self, record: TaskRecord, why: str) -> None:
        self.not_stored += 1
        record.result_note = f"not stored: {why}"
        logger.warning("task %s (%s): result %s", record.task_id, record.func_name, why)

    # ---- expiry --------------------------------------------------------------------------

    def _expire_later(self, record: TaskRecord, ttl: float) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + ttl
        if len(self._expiring) >= self._tracked_limit:
            self._forget_evicted()
        heapq.heappush(self._expiring, (due, next(self._sequence), record.task_id))
        if self._timer is None or self._timer.when() > due:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(due, self._sweep)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = None
        now = loop.time()
        while self._expiring and self._expiring[0][0] <= now:
            _, _, task_id = heapq.heappop(self._expiring)
            record = self._lookup(task_id) if self._lookup is not None else None
            if record is not None and self.drop_if_expired(record) and self._on_dropped:
                self._on_dropped(record)
        if self._expiring:
            self._timer = loop.call_at(self._expiring[0][0], self._sweep)

    def _forget_evicted(self) -> None:
        """Keep only the ids still in memory (the others expire when read)."""
        if self._lookup is not None:
            lookup = self._lookup
            self._expiring = [e for e in self._expiring if lookup(e[2]) is not None]
            heapq.heapify(self._expiring)
        if len(self._expiring) >= self._tracked_limit:
            self._expiring = heapq.nsmallest(self._tracked_limit // 2, self._expiring)

    def drop_if_expired(self, record: TaskRecord) -> bool:
        """Drop ``record``'s result if its ``result_ttl`` is over; True when it did."""
        expires = record.result_expires_at
        if expires is None or not record.has_result or utcnow() < expires:
            return False
        record.result_data = record.encrypted_result = None
        record.result_note = EXPIRED_NOTE
        return True

    def stop(self) -> None:
        """Shutdown: no more timers (records read later still expire on read)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._expiring.clear()

    # ---- reading -------------------------------------------------------------------------

    def value(self, record: TaskRecord) -> Any:
        """The kept value of a finished record (None when nothing is kept; see result_note).

        Raises ``ValueError`` for a corrupt payload, ``ArgumentDecryptionError`` when no key
        opens a sealed one.
        """
        self.drop_if_expired(record)
        if record.encrypted_result is not None:
            if self.cipher is None:
                raise ArgumentDecryptionError(
                    "the task's result is encrypted but no encryption key is configured"
                )
            return decode_result(self.cipher.decrypt(record.encrypted_result))
        if record.result_data is not None:
            return decode_result(record.result_data)
        return None

    def outcome(self, record: TaskRecord) -> Any:
        """What ``handle.result()`` answers for a finished record: the value, or
        :class:`TaskFailedError` for a task that did not succeed."""
        if record.status is not TaskStatus.SUCCESS:
            raise TaskFailedError(record)
        return self.value(record)
