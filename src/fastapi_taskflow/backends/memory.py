"""A backend that keeps everything in this process: for tests and for apps that want no files.

It keeps the full contract (leases, expiry, atomic claims, idempotency, locks, stats and the
change feed kept with the rows), so a test written against it behaves the way the app will on
SQLite or Redis. Nothing survives the process, and nothing is shared with another one
(``shared = False``).
"""

from __future__ import annotations

import bisect
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..models import FINISHED_STATUSES
from ..ratelimit import gcra_step
from ..stats import StatInputs, batch_deltas, removal_deltas
from .base import COMMAND_TTL, RecordQuery, Row, TaskBackend

#: Change entries kept; a reader further behind than this sees a gap.
CHANGES_KEPT = 10_000

# Counters are keyed by client addresses and usernames, so a flood of new ones must not grow
# the process without bound.
MAX_COUNTERS = 100_000

_FINISHED = frozenset(s.value for s in FINISHED_STATUSES)


@dataclass(slots=True)
class _Stored:
    """One record row plus what the filters need, parsed once at write time."""

    row: Row
    tags: dict[str, Any]

    @property
    def key(self) -> tuple[float, str]:
        return (float(self.row["created_at"]), str(self.row["task_id"]))

    @property
    def inputs(self) -> StatInputs:
        row = self.row
        return (str(row["status"]), str(row["queue"]), row.get("duration"))


def _tags_of(data: Any) -> dict[str, Any]:
    try:
        tags = json.loads(data).get("tags")
    except (AttributeError, TypeError, ValueError):
        return {}
    return tags if isinstance(tags, dict) else {}


def _row_matches(stored: _Stored, query: RecordQuery) -> bool:
    row = stored.row
    checks = (
        (query.status, row.get("status")),
        (query.func_name, row.get("func_name")),
        (query.queue, row.get("queue")),
    )
    if any(wanted is not None and wanted != actual for wanted, actual in checks):
        return False
    if query.tag is not None and stored.tags.get(query.tag[0]) != query.tag[1]:
        return False
    created = float(row["created_at"])
    if query.since is not None and created < query.since.timestamp():
        return False
    if query.until is not None and created >= query.until.timestamp():
        return False
    if query.text:
        haystack = f"{row.get('func_name')}\n{row.get('task_id')}\n{row.get('error') or ''}"
        return query.text.lower() in haystack.lower()
    return True


class MemoryBackend(TaskBackend):
    """Everything in dictionaries of this process, with the same rules as the shared backends.

    Expiry uses the wall clock (``time.time``) like SQLite and Redis do, so tests that move
    the clock see the same behaviour everywhere.
    """

    shared = False
    system_of_record = True

    def __init__(self) -> None:
        super().__init__()
        # A thread lock, not an asyncio one: no primitive awaits while holding it, so it never
        # blocks the loop for long, and it also covers apps whose sync routes or TestClient
        # threads reach the backend from another thread (an asyncio.Lock is bound to one loop).
        self._mutex = threading.Lock()
        self._rows: dict[str, _Stored] = {}
        self._order: list[tuple[float, str]] = []  # (created_at, task_id), ascending
        self._journal: dict[str, tuple[str | None, str]] = {}  # task_id -> (owner, data)
        self._leases: dict[str, float] = {}  # owner -> expires_at
        self._keys: dict[str, tuple[str, float | None]] = {}  # key -> (task_id, expires_at)
        self._locks: dict[str, tuple[str, float]] = {}  # name -> (owner, expires_at)
        self._meta: dict[str, str] = {}
        self._stats: dict[str, float] = {}
        self._throughput: dict[tuple[int, str], int] = {}
        self._changes: deque[tuple[int, str, list[str]]] = deque(maxlen=CHANGES_KEPT)
        self._change_seq = 0
        self._instances: dict[str, tuple[str, float]] = {}  # id -> (data, expires_at)
        self._commands: list[tuple[int, float, str]] = []  # (position, sent_at, data)
        self._command_seq = 0
        self._schedules: dict[str, tuple[float, str]] = {}  # run_key -> (run_at, data)
        self._counters: dict[str, tuple[int, float]] = {}  # key -> (value, expires_at)
        self._rates: dict[str, float] = {}  # rate limit key -> theoretical arrival time
        self._audit: list[str] = []  # oldest first

    def describe(self) -> str:
        return "memory"

    # ---- records ---------------------------------------------------------------------------

    def _put_stored(self, stored: _Stored) -> None:
        old = self._rows.get(str(stored.row["task_id"]))
        if old is not None:
            self._remove_order(old.key)
        self._rows[str(stored.row["task_id"])] = stored
        bisect.insort(self._order, stored.key)

    def _remove_order(self, key: tuple[float, str]) -> None:
        index = bisect.bisect_left(self._order, key)
        if index < len(self._order) and self._order[index] == key:
            del self._order[index]

    async def _write_rows(self, rows: list[Row], origin: str = "") -> None:
        with self._mutex:
            old = {
                tid: stored.inputs
                for row in rows
                if (stored := self._rows.get(tid := str(row["task_id"]))) is not None
            }
            deltas, throughput = batch_deltas(old, rows)
            for row in rows:
                self._put_stored(_Stored(dict(row), _tags_of(row["data"])))
            self._apply(deltas)
            for key, count in throughput.items():
                self._throughput[key] = self._throughput.get(key, 0) + count
            self._change_seq += 1
            self._changes.append((self._change_seq, origin, [str(r["task_id"]) for r in rows]))

    def _apply(self, deltas: dict[str, float]) -> None:  # under the mutex
        for key, delta in deltas.items():
            self._stats[key] = self._stats.get(key, 0) + delta

    async def _read_rows(self, task_ids: list[str]) -> list[tuple[str, str | bytes]]:
        with self._mutex:
            return [(t, self._rows[t].row["data"]) for t in task_ids if t in self._rows]

    async def _read_stats(self) -> dict[str, float]:
        with self._mutex:
            return dict(self._stats)

    async def _read_throughput(self, first_bucket: int) -> list[tuple[int, int, int]]:
        with self._mutex:
            buckets = sorted({b for b, _ in self._throughput if b >= first_bucket})
            return [
                (b, self._throughput.get((b, "success"), 0), self._throughput.get((b, "failed"), 0))
                for b in buckets
            ]

    async def _changes_after(
        self, cursor: str | None, limit: int
    ) -> tuple[list[tuple[str, list[str]]], str, bool]:
        with self._mutex:
            if cursor is None:
                return [], str(self._change_seq), False
            after = int(cursor)
            first = self._changes[0][0] if self._changes else self._change_seq + 1
            start = max(0, after + 1 - first)  # seqs in the deque are consecutive
            picked = list(itertools.islice(self._changes, start, start + limit))
            gap = bool(picked) and picked[0][0] > after + 1
            last = picked[-1][0] if picked else max(after, 0)
            return [(o, list(ids)) for _, o, ids in picked], str(last), gap

    async def _read_row(self, task_id: str) -> str | bytes | None:
        with self._mutex:
            stored = self._rows.get(task_id)
            return stored.row["data"] if stored is not None else None

    def _newest_first(self, after: tuple[float, str] | None) -> Iterator[_Stored]:
        # Positions strictly below the cursor, walked from the top of the sorted keys down.
        end = bisect.bisect_left(self._order, after) if after is not None else len(self._order)
        for index in range(end - 1, -1, -1):
            yield self._rows[self._order[index][1]]

    async def _query_rows(
        self, query: RecordQuery, after: tuple[float, str] | None, limit: int
    ) -> list[tuple[str, str | bytes]]:
        out: list[tuple[str, str | bytes]] = []
        with self._mutex:
            for stored in self._newest_first(after):
                if len(out) >= limit:
                    break
                if _row_matches(stored, query):
                    out.append((str(stored.row["task_id"]), stored.row["data"]))
        return out

    def _delete_where(self, task_ids: list[str]) -> int:
        removed: list[StatInputs] = []
        for task_id in task_ids:
            stored = self._rows.pop(task_id, None)
            if stored is not None:
                self._remove_order(stored.key)
                removed.append(stored.inputs)
        self._apply(removal_deltas(removed))
        return len(removed)

    async def _delete_rows_before(self, cutoff: float) -> int:
        with self._mutex:
            doomed = [
                task_id
                for task_id, stored in self._rows.items()
                if stored.row.get("status") in _FINISHED
                and stored.row.get("end_time") is not None
                and float(stored.row["end_time"]) < cutoff
            ]
            return self._delete_where(doomed)

    async def _delete_rows(self, task_ids: list[str]) -> int:
        with self._mutex:
            return self._delete_where(task_ids)

    async def _count_rows(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        with self._mutex:
            for stored in self._rows.values():
                status = str(stored.row.get("status"))
                counts[status] = counts.get(status, 0) + 1
        return counts

    # ---- journal and leases ------------------------------------------------------------------

    async def _journal_write(self, items: list[tuple[str, str]], owner: str) -> None:
        with self._mutex:
            for task_id, data in items:
                self._journal[task_id] = (owner, data)

    async def _journal_delete(self, task_ids: list[str]) -> None:
        with self._mutex:
            for task_id in task_ids:
                self._journal.pop(task_id, None)

    async def _journal_release(self, owner: str) -> int:
        with self._mutex:
            mine = [tid for tid, (holder, _) in self._journal.items() if holder == owner]
            for task_id in mine:
                self._journal[task_id] = (None, self._journal[task_id][1])
            return len(mine)

    def _lease_alive(self, owner: str | None, now: float) -> bool:
        return owner is not None and self._leases.get(owner, 0.0) > now

    async def _journal_claim(self, owner: str, limit: int) -> list[tuple[str, str]]:
        claimed: list[tuple[str, str]] = []
        with self._mutex:
            now = time.time()
            for task_id, (holder, data) in self._journal.items():
                if len(claimed) >= limit:
                    break
                if not self._lease_alive(holder, now):
                    claimed.append((task_id, data))
            for task_id, data in claimed:
                self._journal[task_id] = (owner, data)
        return claimed

    async def _journal_list(self, owner: str) -> list[tuple[str, str]]:
        with self._mutex:
            return [(tid, data) for tid, (holder, data) in self._journal.items() if holder == owner]

    async def _journal_page(
        self, after: str | None, limit: int
    ) -> list[tuple[str, str | None, str]]:
        with self._mutex:
            ids = sorted(t for t in self._journal if after is None or t > after)[:limit]
            return [(t, *self._journal[t]) for t in ids]

    async def _journal_update(self, items: list[tuple[str, str]]) -> int:
        with self._mutex:
            updated = 0
            for task_id, data in items:
                if task_id in self._journal:
                    self._journal[task_id] = (self._journal[task_id][0], data)
                    updated += 1
            return updated

    async def _update_rows(self, items: list[tuple[str, str]]) -> int:
        with self._mutex:
            updated = 0
            for task_id, data in items:
                stored = self._rows.get(task_id)
                if stored is not None:
                    stored.row["data"] = data
                    updated += 1
            return updated

    async def _heartbeat(self, owner: str, ttl: float) -> None:
        with self._mutex:
            self._leases[owner] = time.time() + ttl

    async def _drop_owner(self, owner: str) -> None:
        with self._mutex:
            self._leases.pop(owner, None)

    # ---- idempotency, locks, metadata --------------------------------------------------------

    async def _reserve_key(self, key: str, task_id: str, ttl: float | None) -> str | None:
        with self._mutex:
            now = time.time()
            held = self._keys.get(key)
            if held is not None and held[0] != task_id and (held[1] is None or held[1] > now):
                return held[0]
            self._keys[key] = (task_id, now + ttl if ttl is not None else None)
            return None

    async def _release_key(self, key: str, task_id: str) -> None:
        with self._mutex:
            if self._keys.get(key, (None,))[0] == task_id:
                del self._keys[key]

    async def _acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        with self._mutex:
            now = time.time()
            held = self._locks.get(name)
            if held is not None and held[0] != owner and held[1] > now:
                return False
            self._locks[name] = (owner, now + ttl)
            return True

    async def _get_meta(self, key: str) -> str | None:
        with self._mutex:
            return self._meta.get(key)

    async def _set_meta(self, key: str, value: str) -> None:
        with self._mutex:
            self._meta[key] = value

    # ---- instances, commands, one-off schedules ------------------------------------------------

    # Commands only travel between managers of this process that share this backend object.
    command_poll_interval = 0.02

    async def _put_instance(self, instance_id: str, data: str, ttl: float) -> None:
        with self._mutex:
            self._instances[instance_id] = (data, time.time() + ttl)

    async def _list_instances(self) -> list[tuple[str, str]]:
        with self._mutex:
            now = time.time()
            return [(i, data) for i, (data, until) in self._instances.items() if until > now]

    async def _remove_instance(self, instance_id: str) -> None:
        with self._mutex:
            self._instances.pop(instance_id, None)

    async def _send_command(self, data: str) -> None:
        with self._mutex:
            now = time.time()
            self._command_seq += 1
            self._commands.append((self._command_seq, now, data))
            horizon = now - COMMAND_TTL
            while self._commands and self._commands[0][1] < horizon:
                self._commands.pop(0)

    async def _command_position(self) -> str:
        with self._mutex:
            return str(self._command_seq)

    async def _read_commands(self, after: str, wait: float) -> list[tuple[str, str]]:
        position = int(after)
        with self._mutex:
            return [(str(seq), data) for seq, _, data in self._commands if seq > position]

    async def _put_schedule(self, run_key: str, run_at: float, data: str) -> bool:
        with self._mutex:
            if run_key in self._schedules:
                return False
            self._schedules[run_key] = (run_at, data)
            return True

    async def _take_schedule(self, run_key: str) -> tuple[float, str] | None:
        with self._mutex:
            return self._schedules.pop(run_key, None)

    async def _list_schedules(self, before: float | None) -> list[tuple[str, float, str]]:
        with self._mutex:
            rows = [
                (key, run_at, data)
                for key, (run_at, data) in self._schedules.items()
                if before is None or run_at < before
            ]
        return sorted(rows, key=lambda row: (row[1], row[0]))

    async def _counter_add(self, key: str, amount: int, ttl: float) -> int:
        with self._mutex:
            now = time.time()
            value, expires = self._counters.pop(key, (0, 0.0))
            value = (value if expires > now else 0) + amount
            self._counters[key] = (value, now + ttl)
            if len(self._counters) > MAX_COUNTERS:
                self._shed_counters(now)
            return value

    def _shed_counters(self, now: float) -> None:
        """Drop expired counters, then the tenth with the lowest values: a flood of one-off
        keys (value 1) goes before the counters that block someone (they hold higher values)."""
        live = {k: v for k, v in self._counters.items() if v[1] > now}
        if len(live) > MAX_COUNTERS * 0.9:
            lowest = sorted(live, key=lambda k: live[k][0])[: len(live) // 10]
            for key in lowest:
                del live[key]
        self._counters = live

    async def _counter_get(self, key: str) -> tuple[int, float]:
        with self._mutex:
            value, expires = self._counters.get(key, (0, 0.0))
            left = expires - time.time()
            return (value, left) if left > 0 else (0, 0.0)

    async def _counter_delete(self, key: str) -> None:
        with self._mutex:
            self._counters.pop(key, None)

    async def _append_audit(self, data: str, keep: int) -> None:
        with self._mutex:
            self._audit.append(data)
            del self._audit[: max(0, len(self._audit) - keep)]

    async def _read_audit(self, limit: int) -> Sequence[str | bytes]:
        with self._mutex:
            return list(reversed(self._audit[-limit:])) if limit > 0 else []

    async def _take_rate_token(self, key: str, interval: float, burst: int) -> float:
        with self._mutex:
            tat, wait = gcra_step(self._rates.get(key), time.time(), interval, burst)
            if wait == 0.0:
                self._rates[key] = tat
            return wait
