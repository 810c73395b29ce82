"""SQLite on aiosqlite: one file, shared by the processes of one host.

WAL mode lets readers go on while one writer commits. Every write is one short
``BEGIN IMMEDIATE`` transaction: it takes the file's write lock before reading, so a claim
or a reservation decides on the latest data, and two processes wait for each other (up to
``busy_timeout``) instead of both taking the same entry.

Stats (``tf_stats``), throughput (``tf_throughput``) and the change feed (``tf_changes``, a
log with an increasing ``seq`` as the cursor, pruned to the newest ``CHANGES_KEPT`` entries)
are written in the transaction of the record rows they describe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from os import PathLike
from pathlib import Path
from typing import Any

import aiosqlite

from ..compat import no_effect, renamed_keyword
from ..errors import BackendError, ConfigurationError, DamagedDatabaseError
from ..models import FINISHED_STATUSES
from ..ratelimit import gcra_step
from ..stats import THROUGHPUT_POINTS, StatInputs, batch_deltas, removal_deltas
from .base import COMMAND_TTL, RecordQuery, Row, TaskBackend
from .sql import LEGACY_TABLES, like_pattern, record_filter, where_sql
from .sqlite_check import INTEGRITY_CHECKS, integrity_problems

DEFAULT_PATH = "tasks.db"
SCHEMA_VERSION = 2
CHANGES_KEPT = 10_000
_CHUNK = 500  # ids per IN (...) list: under SQLite's variable limit
SYNCHRONOUS_LEVELS = ("OFF", "NORMAL", "FULL", "EXTRA")
# Retention deletes this many rows per transaction: the write-ahead log holds one batch, not
# the whole delete (a 300,000-row DELETE grew it to 300 MB), and other writers get turns.
DELETE_BATCH = 1000
# Pages returned to the file system per step of the incremental vacuum after a delete.
VACUUM_STEP_PAGES = 256
_FINISHED = tuple(sorted(s.value for s in FINISHED_STATUSES))

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tf_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tf_records (
    task_id TEXT PRIMARY KEY,
    func_name TEXT NOT NULL,
    status TEXT NOT NULL,
    queue TEXT NOT NULL,
    created_at REAL NOT NULL,
    end_time REAL,
    error TEXT,
    data TEXT NOT NULL,
    duration REAL
);
CREATE INDEX IF NOT EXISTS tf_records_page ON tf_records (created_at DESC, task_id DESC);
CREATE INDEX IF NOT EXISTS tf_records_status_page
    ON tf_records (status, created_at DESC, task_id DESC);
CREATE INDEX IF NOT EXISTS tf_records_func_page
    ON tf_records (func_name, created_at DESC, task_id DESC);
CREATE INDEX IF NOT EXISTS tf_records_queue_page
    ON tf_records (queue, created_at DESC, task_id DESC);
CREATE INDEX IF NOT EXISTS tf_records_end ON tf_records (end_time);
CREATE TABLE IF NOT EXISTS tf_journal (task_id TEXT PRIMARY KEY, owner TEXT, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS tf_journal_owner ON tf_journal (owner);
CREATE TABLE IF NOT EXISTS tf_owners (owner TEXT PRIMARY KEY, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tf_keys (key TEXT PRIMARY KEY, task_id TEXT NOT NULL, expires_at REAL);
CREATE TABLE IF NOT EXISTS tf_locks (name TEXT PRIMARY KEY, owner TEXT NOT NULL,
                                     expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tf_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tf_stats (key TEXT PRIMARY KEY, value REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tf_throughput (
    bucket INTEGER NOT NULL, status TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (bucket, status)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tf_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, origin TEXT NOT NULL, ids TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tf_instances (instance_id TEXT PRIMARY KEY,
                                         expires_at REAL NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tf_commands (position INTEGER PRIMARY KEY AUTOINCREMENT,
                                        sent_at REAL NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tf_schedules (run_key TEXT PRIMARY KEY, run_at REAL NOT NULL,
                                         data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS tf_schedules_due ON tf_schedules (run_at);
CREATE TABLE IF NOT EXISTS tf_rates (key TEXT PRIMARY KEY, tat REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tf_counters (key TEXT PRIMARY KEY, value INTEGER NOT NULL,
                                        expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS tf_counters_expiry ON tf_counters (expires_at);
CREATE TABLE IF NOT EXISTS tf_audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, data TEXT NOT NULL);
"""

# An expired counter starts again from the amount instead of adding to its old value.
_COUNTER_ADD = """
INSERT INTO tf_counters (key, value, expires_at) VALUES (?, ?, ?)
ON CONFLICT (key) DO UPDATE SET
    value = CASE WHEN tf_counters.expires_at > ? THEN tf_counters.value + excluded.value
                 ELSE excluded.value END,
    expires_at = excluded.expires_at
RETURNING value
"""

_ADD_STAT = """
INSERT INTO tf_stats (key, value) VALUES (?, ?)
ON CONFLICT (key) DO UPDATE SET value = value + excluded.value
"""

_ADD_THROUGHPUT = """
INSERT INTO tf_throughput (bucket, status, count) VALUES (?, ?, ?)
ON CONFLICT (bucket, status) DO UPDATE SET count = count + excluded.count
"""

_UPSERT_RECORD = """
INSERT OR REPLACE INTO tf_records
    (task_id, func_name, status, queue, created_at, end_time, error, data, duration)
VALUES (:task_id, :func_name, :status, :queue, :created_at, :end_time, :error, :data, :duration)
"""

# Entries with no owner, or whose owner holds no live lease. The LEFT JOIN finds live leases.
_CLAIM = """
UPDATE tf_journal SET owner = ? WHERE task_id IN (
    SELECT j.task_id FROM tf_journal AS j
    LEFT JOIN tf_owners AS o ON o.owner = j.owner AND o.expires_at > ?
    WHERE j.owner IS NULL OR o.owner IS NULL
    ORDER BY j.rowid LIMIT ?
) RETURNING task_id, data
"""

# A reservation wins when the key is free, expired, or already held by the same task.
_RESERVE = """
INSERT INTO tf_keys (key, task_id, expires_at) VALUES (?, ?, ?)
ON CONFLICT (key) DO UPDATE SET task_id = excluded.task_id, expires_at = excluded.expires_at
WHERE tf_keys.task_id = excluded.task_id
   OR (tf_keys.expires_at IS NOT NULL AND tf_keys.expires_at <= ?)
"""

_LOCK = """
INSERT INTO tf_locks (name, owner, expires_at) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
WHERE tf_locks.owner = excluded.owner OR tf_locks.expires_at <= ?
"""


# CASE first: json_each on a corrupt row would abort the whole query, not skip the row.
_TAG_SQL = (
    "CASE WHEN json_valid(data) THEN EXISTS (SELECT 1 FROM json_each(data, '$.tags')"
    " WHERE key = ? AND value = ?) ELSE 0 END"
)
# SQLite's LIKE already ignores ASCII case: the pattern keeps the text as typed.
_TEXT_SQL = (
    "(func_name LIKE ? ESCAPE '\\' OR task_id LIKE ? ESCAPE '\\' OR error LIKE ? ESCAPE '\\')"
)


def _where(query: RecordQuery, after: tuple[float, str] | None) -> tuple[str, list[Any]]:
    """The WHERE clause of a page query and its parameters."""
    clauses, params = record_filter(
        query, tag_sql=_TAG_SQL, text_sql=_TEXT_SQL, pattern=_unfolded_pattern
    )
    if after is not None:
        clauses.append("(created_at, task_id) < (?, ?)")
        params.extend(after)
    return where_sql(clauses), params


def _unfolded_pattern(text: str) -> str:
    return like_pattern(text, fold=False)


def _probe(path: Path) -> None:
    """Open the file once in a plain thread, so what cannot be opened fails here: a failed
    ``aiosqlite.connect`` leaves its worker thread to report to an event loop that may be gone
    by then ("Event loop is closed" after the clear error)."""
    if path.is_dir():
        raise BackendError(f"cannot open SQLite database {path}: it is a directory, not a file")
    path.parent.mkdir(parents=True, exist_ok=True)
    sqlite3.connect(path).close()


class SqliteBackend(TaskBackend):
    """Records, journal, leases, keys and locks in one SQLite file (WAL mode).

    ``synchronous`` is SQLite's own setting: with WAL, ``NORMAL`` survives a crash of the
    process (every committed transaction is kept) but may lose the last commits on a power
    cut; ``FULL`` also survives a power cut, at an fsync per commit.
    """

    shared = True
    system_of_record = True

    def __init__(
        self,
        path: str | PathLike[str] | None = None,
        *,
        synchronous: str = "NORMAL",
        busy_timeout: float = 5.0,
        integrity_check: str = "quick",
        db_path: str | PathLike[str] | None = None,
        max_workers: int | None = None,
    ) -> None:
        super().__init__()
        if db_path is not None:
            path = renamed_keyword("SqliteBackend", "db_path", "path", db_path, path)
        if max_workers is not None:
            no_effect("SqliteBackend", "max_workers")
        level = synchronous.upper()
        if level not in SYNCHRONOUS_LEVELS:
            raise ConfigurationError(
                f"SqliteBackend synchronous={synchronous!r}: must be one of {SYNCHRONOUS_LEVELS}"
            )
        if integrity_check not in INTEGRITY_CHECKS:
            raise ConfigurationError(
                f"SqliteBackend integrity_check={integrity_check!r}: must be one of "
                f"{INTEGRITY_CHECKS}"
            )
        if busy_timeout < 0:
            raise ConfigurationError(f"SqliteBackend busy_timeout={busy_timeout!r}: must be >= 0")
        self.path = Path(path if path is not None else DEFAULT_PATH)
        self.synchronous = level
        self.busy_timeout = busy_timeout
        self.integrity_check = integrity_check
        self._db: aiosqlite.Connection | None = None
        # One aiosqlite connection runs one statement at a time; the lock keeps one coroutine's
        # BEGIN ... COMMIT from interleaving with another's.
        self._lock = asyncio.Lock()

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    # ---- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._db is not None:
            return
        try:
            await asyncio.to_thread(_probe, self.path)
            db = await aiosqlite.connect(self.path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise BackendError(f"cannot open SQLite database {self.path}: {exc}") from None
        try:
            await self._prepare_when_free(db)
        except (OSError, sqlite3.Error, BackendError) as exc:
            await db.close()
            if isinstance(exc, BackendError):
                raise
            raise BackendError(f"cannot open SQLite database {self.path}: {exc}") from None
        self._db = db

    async def _prepare_when_free(self, db: aiosqlite.Connection) -> None:
        """``_prepare``, tried again while another connection holds the file.

        Switching a file to WAL fails at once with "database is locked" (SQLite does not call
        the busy handler there) when another process or connection opens the same file at that
        moment, as two workers starting together do: wait a little and try again, within
        ``busy_timeout``.
        """
        deadline = time.monotonic() + self.busy_timeout
        pause = 0.01
        while True:
            try:
                await self._prepare(db)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.2)

    async def _prepare(self, db: aiosqlite.Connection) -> None:
        await db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        # Takes effect only on a new file (before its first table): deleted rows' pages can then
        # be given back by the incremental vacuum after retention deletes. An older file keeps
        # its mode until a one-off VACUUM (see docs/durability.md).
        await db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute(f"PRAGMA synchronous = {self.synchronous}")
        # Keep the log file from staying at its high-water mark after checkpoints.
        await db.execute("PRAGMA journal_size_limit = 16777216")
        await db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    await db.execute(statement)
            await self._check_version(db)
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        if self.integrity_check != "off":
            problems = await integrity_problems(db, full=self.integrity_check == "full")
            if problems:
                raise DamagedDatabaseError(
                    str(self.path), problems, full=self.integrity_check == "full"
                )

    async def _check_version(self, db: aiosqlite.Connection) -> None:
        rows = list(await db.execute_fetchall("SELECT version FROM tf_schema"))
        if not rows:
            await db.execute("INSERT INTO tf_schema (version) VALUES (?)", (SCHEMA_VERSION,))
        elif int(rows[0][0]) > SCHEMA_VERSION:
            raise BackendError(
                f"{self.path} has schema version {rows[0][0]}; this fastapi-taskflow reads up to"
                f" {SCHEMA_VERSION}: upgrade fastapi-taskflow"
            )
        elif int(rows[0][0]) < 2:
            await self._add_stats(db)
            await db.execute("UPDATE tf_schema SET version = ?", (SCHEMA_VERSION,))

    async def _add_stats(self, db: aiosqlite.Connection) -> None:
        """Version 1 -> 2: a duration column and the stats of the rows already stored (once)."""
        columns = {row[1] for row in await db.execute_fetchall("PRAGMA table_info(tf_records)")}
        if "duration" not in columns:
            await db.execute("ALTER TABLE tf_records ADD COLUMN duration REAL")
        marks = ",".join("?" * len(_FINISHED))
        # julianday() reads the ISO start time; 2440587.5 is the Unix epoch as a Julian day.
        await db.execute(
            "UPDATE tf_records SET duration = end_time -"
            " (julianday(json_extract(data, '$.start_time')) - 2440587.5) * 86400.0"
            f" WHERE end_time IS NOT NULL AND status IN ({marks}) AND json_valid(data)"
            " AND json_extract(data, '$.start_time') IS NOT NULL",
            _FINISHED,
        )
        await db.execute("DELETE FROM tf_stats")
        deltas, _ = batch_deltas(
            {},
            (
                {"task_id": i, "status": row[0], "queue": row[1], "duration": row[2]}
                for i, row in enumerate(
                    await db.execute_fetchall("SELECT status, queue, duration FROM tf_records")
                )
            ),
        )
        await db.executemany(_ADD_STAT, list(deltas.items()))

    async def compact(self) -> None:
        """Checkpoint the write-ahead log now, so close() (at shutdown) has little left to do."""
        if self._db is not None:
            async with self._lock, self._errors():
                # TRUNCATE, not PASSIVE: it also empties the file, which close() would otherwise
                # do at shutdown (80+ ms for a busy day's log).
                await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    # ---- plumbing --------------------------------------------------------------------------

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise BackendError(f"{self.describe()} is not open; call open() first")
        return self._db

    @asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise BackendError(f"{self.describe()}: {exc}") from exc

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""
        async with self._lock, self._errors():
            db = self._conn()
            try:
                await db.execute("BEGIN IMMEDIATE")
            except asyncio.CancelledError:
                # aiosqlite runs the BEGIN in its thread anyway: end that transaction (queued
                # after it) or every later one fails with "transaction within a transaction".
                with contextlib.suppress(sqlite3.Error):
                    await db.execute("ROLLBACK")
                raise
            try:
                yield db
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        async with self._lock, self._errors():
            return list(await self._conn().execute_fetchall(sql, params))

    async def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One write statement in its own transaction; returns the rows it changed."""
        async with self._transaction() as db:
            cursor = await db.execute(sql, params)
            changed = cursor.rowcount
            await cursor.close()
            return changed

    # ---- records ---------------------------------------------------------------------------

    async def _write_rows(self, rows: list[Row], origin: str = "") -> None:
        async with self._transaction() as db:
            old = await self._inputs_of(db, [str(r["task_id"]) for r in rows])
            deltas, throughput = batch_deltas(old, rows)
            await db.executemany(_UPSERT_RECORD, rows)
            await self._apply(db, deltas)
            if throughput:
                await db.executemany(
                    _ADD_THROUGHPUT, [(b, st, n) for (b, st), n in throughput.items()]
                )
                newest = max(b for b, _ in throughput)
                await db.execute(
                    "DELETE FROM tf_throughput WHERE bucket < ?", (newest - THROUGHPUT_POINTS,)
                )
            cursor = await db.execute(
                "INSERT INTO tf_changes (origin, ids) VALUES (?, ?)",
                (origin, json.dumps([r["task_id"] for r in rows])),
            )
            seq = cursor.lastrowid
            await cursor.close()
            if seq is not None and seq % 100 == 0:  # prune now and then, not every batch
                await db.execute("DELETE FROM tf_changes WHERE seq <= ?", (seq - CHANGES_KEPT,))

    @staticmethod
    async def _inputs_of(db: aiosqlite.Connection, task_ids: list[str]) -> dict[str, StatInputs]:
        """(status, queue, duration) of the stored rows among ``task_ids``."""
        found: dict[str, StatInputs] = {}
        for start in range(0, len(task_ids), _CHUNK):
            chunk = task_ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in await db.execute_fetchall(
                f"SELECT task_id, status, queue, duration FROM tf_records"
                f" WHERE task_id IN ({marks})",
                chunk,
            ):
                found[row[0]] = (row[1], row[2], row[3])
        return found

    @staticmethod
    async def _apply(db: aiosqlite.Connection, deltas: dict[str, float]) -> None:
        if deltas:
            await db.executemany(_ADD_STAT, list(deltas.items()))

    async def _read_rows(self, task_ids: list[str]) -> list[tuple[str, str | bytes]]:
        out: list[tuple[str, str | bytes]] = []
        for start in range(0, len(task_ids), _CHUNK):
            chunk = task_ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = await self._fetch(
                f"SELECT task_id, data FROM tf_records WHERE task_id IN ({marks})", chunk
            )
            out.extend((row[0], row[1]) for row in rows)
        return out

    async def _read_stats(self) -> dict[str, float]:
        rows = await self._fetch("SELECT key, value FROM tf_stats")
        return {row[0]: float(row[1]) for row in rows}

    async def _read_throughput(self, first_bucket: int) -> list[tuple[int, int, int]]:
        rows = await self._fetch(
            "SELECT bucket, SUM(CASE WHEN status = 'success' THEN count ELSE 0 END),"
            " SUM(CASE WHEN status = 'failed' THEN count ELSE 0 END)"
            " FROM tf_throughput WHERE bucket >= ? GROUP BY bucket ORDER BY bucket",
            (first_bucket,),
        )
        return [(int(r[0]), int(r[1]), int(r[2])) for r in rows]

    async def _changes_after(
        self, cursor: str | None, limit: int
    ) -> tuple[list[tuple[str, list[str]]], str, bool]:
        if cursor is None:
            rows = await self._fetch("SELECT COALESCE(MAX(seq), 0) FROM tf_changes")
            return [], str(rows[0][0]), False
        after = int(cursor)
        rows = await self._fetch(
            "SELECT seq, origin, ids FROM tf_changes WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        )
        # Seqs are consecutive (AUTOINCREMENT, and a rolled-back insert takes its seq back):
        # a hole right after the cursor is entries pruned before this reader got to them.
        gap = bool(rows) and int(rows[0][0]) > after + 1
        entries = [(str(r[1]), [str(t) for t in json.loads(r[2])]) for r in rows]
        return entries, str(rows[-1][0]) if rows else str(after), gap

    async def _read_row(self, task_id: str) -> str | bytes | None:
        rows = await self._fetch("SELECT data FROM tf_records WHERE task_id = ?", (task_id,))
        return rows[0][0] if rows else None

    async def _query_rows(
        self, query: RecordQuery, after: tuple[float, str] | None, limit: int
    ) -> list[tuple[str, str | bytes]]:
        where, params = _where(query, after)
        sql = (
            f"SELECT task_id, data FROM tf_records{where}"
            " ORDER BY created_at DESC, task_id DESC LIMIT ?"
        )
        return [(row[0], row[1]) for row in await self._fetch(sql, [*params, limit])]

    async def _delete_rows_before(self, cutoff: float) -> int:
        marks = ",".join("?" * len(_FINISHED))
        batch_sql = (
            "DELETE FROM tf_records WHERE rowid IN (SELECT rowid FROM tf_records"
            f" WHERE end_time < ? AND status IN ({marks}) LIMIT {DELETE_BATCH})"
            " RETURNING status, queue, duration"
        )
        deleted = 0
        while True:
            async with self._transaction() as db:
                removed = list(await db.execute_fetchall(batch_sql, (cutoff, *_FINISHED)))
                # The stats lose the batch's share in the batch's own transaction.
                await self._apply(db, removal_deltas((r[0], r[1], r[2]) for r in removed))
            deleted += len(removed)
            if len(removed) < DELETE_BATCH:
                break
            await self._checkpoint("PASSIVE")  # the next batch reuses the log from its start
        if deleted:
            await self._give_back_space()
        return deleted

    async def _checkpoint(self, mode: str) -> None:
        async with self._lock, self._errors():
            await self._conn().execute(f"PRAGMA wal_checkpoint({mode})")

    async def _give_back_space(self) -> None:
        """Incremental vacuum in steps (each one short transaction, checkpointed), so the file
        shrinks after a large delete without one long lock or a log as large as the delete.
        Files made before auto_vacuum was set have no free-page map: nothing to do there."""
        while True:
            async with self._lock, self._errors():
                db = self._conn()
                (mode,) = next(iter(await db.execute_fetchall("PRAGMA auto_vacuum")))
                (free,) = next(iter(await db.execute_fetchall("PRAGMA freelist_count")))
                if int(mode) != 2 or int(free) == 0:
                    break
                # It frees one page per step of the statement; execute() steps once, a script
                # runs it to its end.
                await db.executescript(f"PRAGMA incremental_vacuum({VACUUM_STEP_PAGES})")
            await self._checkpoint("PASSIVE")
        await self._checkpoint("TRUNCATE")

    async def _delete_rows(self, task_ids: list[str]) -> int:
        async with self._transaction() as db:
            removed: list[StatInputs] = []
            for task_id in task_ids:
                rows = await db.execute_fetchall(
                    "DELETE FROM tf_records WHERE task_id = ? RETURNING status, queue, duration",
                    (task_id,),
                )
                removed.extend((r[0], r[1], r[2]) for r in rows)
            await self._apply(db, removal_deltas(removed))
            return len(removed)

    async def _count_rows(self) -> dict[str, int]:
        rows = await self._fetch("SELECT status, COUNT(*) FROM tf_records GROUP BY status")
        return {row[0]: int(row[1]) for row in rows}

    # ---- journal and leases ------------------------------------------------------------------

    async def _journal_write(self, items: list[tuple[str, str]], owner: str) -> None:
        async with self._transaction() as db:
            await db.executemany(
                "INSERT OR REPLACE INTO tf_journal (task_id, owner, data) VALUES (?, ?, ?)",
                [(task_id, owner, data) for task_id, data in items],
            )

    async def _journal_delete(self, task_ids: list[str]) -> None:
        async with self._transaction() as db:
            await db.executemany(
                "DELETE FROM tf_journal WHERE task_id = ?", [(t,) for t in task_ids]
            )

    async def _journal_release(self, owner: str) -> int:
        return await self._run("UPDATE tf_journal SET owner = NULL WHERE owner = ?", (owner,))

    async def _journal_claim(self, owner: str, limit: int) -> list[tuple[str, str]]:
        async with self._transaction() as db:
            rows = await db.execute_fetchall(_CLAIM, (owner, time.time(), limit))
            return [(row[0], row[1]) for row in rows]

    async def _journal_list(self, owner: str) -> list[tuple[str, str]]:
        rows = await self._fetch(
            "SELECT task_id, data FROM tf_journal WHERE owner = ? ORDER BY rowid", (owner,)
        )
        return [(row[0], row[1]) for row in rows]

    async def _journal_page(
        self, after: str | None, limit: int
    ) -> list[tuple[str, str | None, str]]:
        rows = await self._fetch(
            "SELECT task_id, owner, data FROM tf_journal WHERE task_id > ?"
            " ORDER BY task_id LIMIT ?",
            (after or "", limit),
        )
        return [(row[0], row[1], row[2]) for row in rows]

    async def _journal_update(self, items: list[tuple[str, str]]) -> int:
        return await self._update_each("UPDATE tf_journal SET data = ? WHERE task_id = ?", items)

    async def _update_rows(self, items: list[tuple[str, str]]) -> int:
        return await self._update_each("UPDATE tf_records SET data = ? WHERE task_id = ?", items)

    async def _update_each(self, sql: str, items: list[tuple[str, str]]) -> int:
        async with self._transaction() as db:
            updated = 0
            for task_id, data in items:
                cursor = await db.execute(sql, (data, task_id))
                updated += cursor.rowcount
                await cursor.close()
            return updated

    async def _heartbeat(self, owner: str, ttl: float) -> None:
        await self._run(
            "INSERT INTO tf_owners (owner, expires_at) VALUES (?, ?)"
            " ON CONFLICT (owner) DO UPDATE SET expires_at = excluded.expires_at",
            (owner, time.time() + ttl),
        )

    async def _drop_owner(self, owner: str) -> None:
        await self._run("DELETE FROM tf_owners WHERE owner = ?", (owner,))

    # ---- idempotency, locks, metadata --------------------------------------------------------

    async def _reserve_key(self, key: str, task_id: str, ttl: float | None) -> str | None:
        now = time.time()
        expires = now + ttl if ttl is not None else None
        async with self._transaction() as db:
            cursor = await db.execute(_RESERVE, (key, task_id, expires, now))
            won = cursor.rowcount > 0
            await cursor.close()
            if won:
                return None
            rows = list(
                await db.execute_fetchall("SELECT task_id FROM tf_keys WHERE key = ?", (key,))
            )
            return str(rows[0][0]) if rows else None

    async def _release_key(self, key: str, task_id: str) -> None:
        await self._run("DELETE FROM tf_keys WHERE key = ? AND task_id = ?", (key, task_id))

    async def _acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        now = time.time()
        return await self._run(_LOCK, (name, owner, now + ttl, now)) > 0

    async def _get_meta(self, key: str) -> str | None:
        rows = await self._fetch("SELECT value FROM tf_meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    async def _set_meta(self, key: str, value: str) -> None:
        await self._run(
            "INSERT INTO tf_meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # ---- fastapi-taskflow 0.12's tables in the same file ---------------------------------------

    async def _legacy_page(self, table: str, after: str | None, limit: int) -> list[Row]:
        key = LEGACY_TABLES[table]
        async with self._lock, self._errors():
            db = self._conn()
            exists = await db.execute_fetchall(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
            )
            if not list(exists):
                return []
            cursor = await db.execute(
                f"SELECT * FROM {table} WHERE {key} > ? ORDER BY {key} LIMIT ?",
                (after or "", limit),
            )
            rows = await cursor.fetchall()
            names = [column[0] for column in cursor.description]
            await cursor.close()
        return [dict(zip(names, row, strict=True)) for row in rows]

    async def _legacy_delete(self, table: str, keys: list[str]) -> None:
        key = LEGACY_TABLES[table]
        async with self._transaction() as db:
            await db.executemany(f"DELETE FROM {table} WHERE {key} = ?", [(k,) for k in keys])

    # ---- instances, commands, one-off schedules ------------------------------------------------

    async def _put_instance(self, instance_id: str, data: str, ttl: float) -> None:
        await self._run(
            "INSERT INTO tf_instances (instance_id, expires_at, data) VALUES (?, ?, ?)"
            " ON CONFLICT (instance_id) DO UPDATE SET expires_at = excluded.expires_at,"
            " data = excluded.data",
            (instance_id, time.time() + ttl, data),
        )

    async def _list_instances(self) -> list[tuple[str, str]]:
        rows = await self._fetch(
            "SELECT instance_id, data FROM tf_instances WHERE expires_at > ?", (time.time(),)
        )
        return [(row[0], row[1]) for row in rows]

    async def _remove_instance(self, instance_id: str) -> None:
        await self._run("DELETE FROM tf_instances WHERE instance_id = ?", (instance_id,))

    async def _send_command(self, data: str) -> None:
        now = time.time()
        async with self._transaction() as db:
            await db.execute("INSERT INTO tf_commands (sent_at, data) VALUES (?, ?)", (now, data))
            await db.execute("DELETE FROM tf_commands WHERE sent_at < ?", (now - COMMAND_TTL,))

    async def _command_position(self) -> str:
        # sqlite_sequence, not MAX(position): pruning may have emptied the table, and
        # AUTOINCREMENT never hands out a position at or below the last one.
        rows = await self._fetch("SELECT seq FROM sqlite_sequence WHERE name = 'tf_commands'")
        return str(rows[0][0]) if rows else "0"

    async def _read_commands(self, after: str, wait: float) -> list[tuple[str, str]]:
        rows = await self._fetch(
            "SELECT position, data FROM tf_commands WHERE position > ? ORDER BY position LIMIT 500",
            (int(after),),
        )
        return [(str(row[0]), row[1]) for row in rows]

    async def _put_schedule(self, run_key: str, run_at: float, data: str) -> bool:
        inserted = await self._run(
            "INSERT INTO tf_schedules (run_key, run_at, data) VALUES (?, ?, ?)"
            " ON CONFLICT (run_key) DO NOTHING",
            (run_key, run_at, data),
        )
        return inserted > 0

    async def _take_schedule(self, run_key: str) -> tuple[float, str] | None:
        async with self._transaction() as db:
            rows = list(
                await db.execute_fetchall(
                    "DELETE FROM tf_schedules WHERE run_key = ? RETURNING run_at, data",
                    (run_key,),
                )
            )
        return (float(rows[0][0]), rows[0][1]) if rows else None

    async def _list_schedules(self, before: float | None) -> list[tuple[str, float, str]]:
        rows = await self._fetch(
            "SELECT run_key, run_at, data FROM tf_schedules WHERE run_at < ?"
            " ORDER BY run_at, run_key",
            (before if before is not None else float("inf"),),
        )
        return [(row[0], float(row[1]), row[2]) for row in rows]

    async def _counter_add(self, key: str, amount: int, ttl: float) -> int:
        now = time.time()
        async with self._transaction() as db:
            await db.execute("DELETE FROM tf_counters WHERE expires_at <= ?", (now,))
            rows = list(await db.execute_fetchall(_COUNTER_ADD, (key, amount, now + ttl, now)))
            return int(rows[0][0])

    async def _counter_get(self, key: str) -> tuple[int, float]:
        rows = await self._fetch(
            "SELECT value, expires_at FROM tf_counters WHERE key = ? AND expires_at > ?",
            (key, time.time()),
        )
        if not rows:
            return 0, 0.0
        return int(rows[0][0]), max(0.0, float(rows[0][1]) - time.time())

    async def _counter_delete(self, key: str) -> None:
        await self._run("DELETE FROM tf_counters WHERE key = ?", (key,))

    async def _append_audit(self, data: str, keep: int) -> None:
        # BEGIN IMMEDIATE: appends of every process take turns, so the newest ``keep`` sequence
        # numbers are exactly the entries kept.
        async with self._transaction() as db:
            cursor = await db.execute("INSERT INTO tf_audit (data) VALUES (?)", (data,))
            newest = cursor.lastrowid
            await cursor.close()
            await db.execute("DELETE FROM tf_audit WHERE seq <= ?", (int(newest or 0) - keep,))

    async def _read_audit(self, limit: int) -> Sequence[str | bytes]:
        rows = await self._fetch("SELECT data FROM tf_audit ORDER BY seq DESC LIMIT ?", (limit,))
        return [row[0] for row in rows]

    async def _take_rate_token(self, key: str, interval: float, burst: int) -> float:
        # BEGIN IMMEDIATE takes the write lock before the read: processes take turns.
        async with self._transaction() as db:
            rows = list(await db.execute_fetchall("SELECT tat FROM tf_rates WHERE key = ?", (key,)))
            stored = float(rows[0][0]) if rows else None
            tat, wait = gcra_step(stored, time.time(), interval, burst)
            if wait == 0.0:
                await db.execute(
                    "INSERT INTO tf_rates (key, tat) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET tat = excluded.tat",
                    (key, tat),
                )
            return wait
