"""What PostgreSQL and MySQL share: the backend primitives written once, as SQL.

A dialect (``postgres.py``, ``mysql.py``) supplies a connection pool, a transaction
(:class:`SqlSession`), its DDL and a few fragments that differ between the two: the server's
clock, "insert or update", "insert unless present", the JSON tag lookup and the schema lock.
Statements here use ``?`` placeholders and ``{t}`` for the table prefix; the dialect turns
them into its own form.

Time is the database server's clock (``{now}``), not this process's: instances on several
machines then agree on when a lease or a reservation expires.

Claims lock the journal rows they take with ``FOR UPDATE SKIP LOCKED``: two instances claiming
at once each take different rows and never wait for each other.

Schema: one row in ``{t}schema`` holds the version. :data:`MIGRATIONS` maps a version to the
statements that bring a database from it to the next, so a later change of tables upgrades
existing databases in place (under the dialect's schema lock) instead of breaking them.
"""

from __future__ import annotations

import json
import logging
import re
from abc import abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

from ..compat import no_effect, renamed_keyword
from ..errors import BackendError, ConfigurationError
from ..models import FINISHED_STATUSES
from ..stats import THROUGHPUT_POINTS, StatInputs, batch_deltas, removal_deltas
from .base import COMMAND_TTL, RecordQuery, Row, TaskBackend

logger = logging.getLogger("fastapi_taskflow.backends")

SCHEMA_VERSION = 2
# 1 -> 2 added the audit table and its position row: the dialect's schema statements create
# them (they run whenever the stored version is older), so that step has no statements.
#: ``MIGRATIONS[v]``: the statements that take a version ``v`` database to ``v + 1``.
MIGRATIONS: dict[int, list[str]] = {}

FINISHED = tuple(sorted(s.value for s in FINISHED_STATUSES))
RECORD_COLUMNS = ("task_id", "func_name", "status", "queue", "created_at", "end_time", "error")
#: What a record write stores: the indexed columns, the duration the stats count, the JSON.
RECORD_WRITE_COLUMNS = (*RECORD_COLUMNS, "duration", "data")
#: Change-feed entries kept (readers are live dashboards, a second or so behind).
CHANGES_KEPT = 10_000
_CHUNK = 500
_PREFIX = re.compile(r"^[a-z_][a-z0-9_]{0,30}$")


def check_table_prefix(prefix: str) -> str:
    """``prefix`` if it is safe to put in SQL as part of a table name, else a clear error."""
    if not _PREFIX.match(prefix):
        raise ConfigurationError(
            f"table_prefix={prefix!r}: use lower-case letters, digits and underscores"
            " (at most 31, not starting with a digit)"
        )
    return prefix


def like_pattern(text: str, *, fold: bool = True) -> str:
    """A LIKE pattern matching ``text`` anywhere (case-folded unless ``fold=False``), with
    ``%`` and ``_`` literal."""
    text = text.lower() if fold else text
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def record_filter(
    query: RecordQuery,
    *,
    tag_sql: str,
    text_sql: str,
    pattern: Callable[[str], str] = like_pattern,
) -> tuple[list[str], list[Any]]:
    """The conditions of a record page and their parameters, in any SQL dialect: the equality
    filters, the tag (``tag_sql`` takes key and value), the text (``text_sql`` takes three
    ``pattern(text)``) and the ``created_at`` window. The page position is the caller's."""
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("status", query.status),
        ("func_name", query.func_name),
        ("queue", query.queue),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if query.tag is not None:
        clauses.append(tag_sql)
        params.extend(query.tag)
    if query.text:
        clauses.append(text_sql)
        params.extend([pattern(query.text)] * 3)
    if query.since is not None:
        clauses.append("created_at >= ?")
        params.append(query.since.timestamp())
    if query.until is not None:
        clauses.append("created_at < ?")
        params.append(query.until.timestamp())
    return clauses, params


def where_sql(clauses: list[str]) -> str:
    return " WHERE " + " AND ".join(clauses) if clauses else ""


def _float(value: Any) -> float | None:
    return float(value) if value is not None else None


def chunks(items: Sequence[Any], size: int = _CHUNK) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def marks(count: int) -> str:
    return ", ".join("?" * count)


class SqlSession(Protocol):
    """One transaction on one connection; statements use ``?`` placeholders."""

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]: ...

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the rows it changed."""
        ...

    async def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> None: ...

    async def fetch_dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows as column name -> value (for tables whose columns vary, such as 0.12's)."""
        ...


class SqlBackend(TaskBackend):
    """The primitives on any SQL server a dialect subclass connects to."""

    shared = True
    system_of_record = True

    #: The dialect's name in messages ("PostgreSQL", "MySQL").
    server = "SQL"
    #: An expression for the server's clock in epoch seconds.
    now_sql = ""
    #: What follows ``LIKE ?`` to make backslash the escape character.
    like_escape = ""

    def __init__(self, *, table_prefix: str = "tf_") -> None:
        super().__init__()
        self.table_prefix = check_table_prefix(table_prefix)

    # ---- what a dialect provides -----------------------------------------------------------

    @abstractmethod
    def session(self) -> AbstractAsyncContextManager[SqlSession]:
        """A transaction: committed when the block ends, rolled back when it raises."""

    @abstractmethod
    def schema_statements(self) -> list[str]:
        """``CREATE ... IF NOT EXISTS`` for every table and index (``{t}`` for the prefix)."""

    @abstractmethod
    def on_duplicate_sql(
        self, table: str, keys: Sequence[str], updates: Sequence[str], add: Sequence[str] = ()
    ) -> str:
        """What follows an INSERT into ``table`` so that a row with the same ``keys`` gets the
        new values of the ``updates`` columns, and the new values added to the ``add`` ones."""

    @abstractmethod
    def insert_absent_sql(self, table: str, columns: Sequence[str], values: str) -> str:
        """INSERT of ``columns`` (``values`` is the VALUES list) that does nothing on conflict."""

    @abstractmethod
    def tag_sql(self) -> str:
        """A condition true when the record's ``data`` has tag ``?`` equal to ``?``; false for
        a row whose ``data`` is not JSON (never an error that aborts the page)."""

    @abstractmethod
    def is_duplicate_key(self, error: BaseException | None) -> bool:
        """True when the driver's ``error`` is a unique-key violation."""

    @abstractmethod
    def table_exists_sql(self) -> str:
        """A query of one ``?`` (a table name) whose one value is true when the table exists."""

    @abstractmethod
    def schema_lock(self) -> AbstractAsyncContextManager[None]:
        """Held while the schema is created or migrated, so two instances starting at once do
        not both run the DDL."""

    # ---- SQL text ----------------------------------------------------------------------------

    def upsert_sql(
        self,
        table: str,
        columns: Sequence[str],
        keys: Sequence[str],
        values: str | None = None,
        add: Sequence[str] = (),
    ) -> str:
        """INSERT of ``columns`` (``values``: the VALUES list, default one ``?`` each) that,
        when a row with the same ``keys`` exists, replaces its other columns, or adds to them
        for the columns in ``add`` (counters)."""
        updates = [c for c in columns if c not in keys and c not in add]
        conflict = self.on_duplicate_sql(table, keys, updates, add)
        return (
            f"INSERT INTO {table} ({', '.join(columns)})"
            f" VALUES ({values or marks(len(columns))}) {conflict}"
        )

    def sql(self, text: str) -> str:
        """``text`` with the table prefix and the clock filled in."""
        return text.replace("{t}", self.table_prefix).replace("{now}", self.now_sql)

    async def fetch(self, text: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        async with self.session() as s:
            return await s.fetch(self.sql(text), params)

    async def execute(self, text: str, params: Sequence[Any] = ()) -> int:
        async with self.session() as s:
            return await s.execute(self.sql(text), params)

    # ---- schema ------------------------------------------------------------------------------

    async def create_schema(self) -> None:
        """Create missing tables, then bring an older schema up to :data:`SCHEMA_VERSION`."""
        # The usual start: everything is there. The version row is written after the DDL, so
        # it also says every table exists; no DDL runs (MySQL would log a warning per table).
        if await self._stored_version() == SCHEMA_VERSION:
            return
        async with self.schema_lock():
            async with self.session() as s:
                for statement in self.schema_statements():
                    await s.execute(self.sql(statement))
            async with self.session() as s:
                rows = await s.fetch(self.sql("SELECT version FROM {t}schema WHERE id = 1"))
                if not rows:
                    await s.execute(
                        self.sql("INSERT INTO {t}schema (id, version) VALUES (1, ?)"),
                        [SCHEMA_VERSION],
                    )
                    return
                version = int(rows[0][0])
            if version > SCHEMA_VERSION:
                raise BackendError(
                    f"{self.describe()} has schema version {version}; this fastapi-taskflow"
                    f" reads up to {SCHEMA_VERSION}: upgrade fastapi-taskflow"
                )
            for step in range(version, SCHEMA_VERSION):
                await self._migrate(step)

    async def _migrate(self, version: int) -> None:
        logger.info("migrating %s from schema %d to %d", self.describe(), version, version + 1)
        async with self.session() as s:
            for statement in MIGRATIONS.get(version, []):
                await s.execute(self.sql(statement))
            await s.execute(
                self.sql("UPDATE {t}schema SET version = ? WHERE id = 1"), [version + 1]
            )

    async def schema_version(self) -> int:
        rows = await self.fetch("SELECT version FROM {t}schema WHERE id = 1")
        return int(rows[0][0]) if rows else 0

    async def _stored_version(self) -> int | None:
        """The schema version, or None when there is no schema table yet."""
        async with self.session() as s:
            exists = await s.fetch(self.table_exists_sql(), [f"{self.table_prefix}schema"])
            if not exists or not exists[0][0]:
                return None
            rows = await s.fetch(self.sql("SELECT version FROM {t}schema WHERE id = 1"))
        return int(rows[0][0]) if rows else None

    # ---- records -----------------------------------------------------------------------------

    # ---- the system of record: stats, throughput and the change feed, with the rows ----------
    # Every transaction that changes records first locks the change feed's position row, so
    # record writes and deletes of all instances run one at a time. Row locks alone would not
    # do: a row that does not exist yet cannot be locked, and two writers of one new task
    # would both count it. After that lock, each reads the committed rows of every earlier
    # writer (READ COMMITTED), then locks in one order (records by id, stats by name,
    # throughput): no deadlock either.

    async def _write_rows(self, rows: list[Row], origin: str = "") -> None:
        ordered = sorted(rows, key=lambda row: str(row["task_id"]))
        upsert = self.sql(self.upsert_sql("{t}records", RECORD_WRITE_COLUMNS, ["task_id"]))
        async with self.session() as s:
            position = await self._next_position(s, "changes")  # the writers' lock, first
            old = await self._stat_inputs(s, [str(r["task_id"]) for r in ordered])
            deltas, throughput = batch_deltas(old, rows)
            await s.executemany(upsert, [[r.get(c) for c in RECORD_WRITE_COLUMNS] for r in ordered])
            await self._add_stats(s, deltas)
            if throughput:
                add = self.upsert_sql(
                    "{t}throughput",
                    ("bucket", "status", "count"),
                    ["bucket", "status"],
                    add=["count"],
                )
                await s.executemany(
                    self.sql(add), [[b, st, n] for (b, st), n in sorted(throughput.items())]
                )
                newest = max(bucket for bucket, _ in throughput)
                await s.execute(
                    self.sql("DELETE FROM {t}throughput WHERE bucket < ?"),
                    [newest - THROUGHPUT_POINTS],
                )
            await s.execute(
                self.sql("INSERT INTO {t}changes (position, origin, ids) VALUES (?, ?, ?)"),
                [position, origin, json.dumps([str(r["task_id"]) for r in rows])],
            )
            if position % 100 == 0:  # prune now and then, not at every batch
                await s.execute(
                    self.sql("DELETE FROM {t}changes WHERE position <= ?"),
                    [position - CHANGES_KEPT],
                )
            await self.notify(s, "changes")

    async def _stat_inputs(self, s: SqlSession, task_ids: Sequence[str]) -> dict[str, StatInputs]:
        """(status, queue, duration) of the stored rows among ``task_ids``, locked until the
        transaction ends (their stats contribution is about to change)."""
        found: dict[str, StatInputs] = {}
        for part in chunks(sorted(task_ids)):
            rows = await s.fetch(
                self.sql(
                    "SELECT task_id, status, queue, duration FROM {t}records"
                    f" WHERE task_id IN ({marks(len(part))}) ORDER BY task_id FOR UPDATE"
                ),
                part,
            )
            found.update({str(r[0]): (str(r[1]), str(r[2]), _float(r[3])) for r in rows})
        return found

    async def _add_stats(self, s: SqlSession, deltas: dict[str, float]) -> None:
        if deltas:
            add = self.upsert_sql("{t}stats", ("name", "value"), ["name"], add=["value"])
            await s.executemany(self.sql(add), [[k, v] for k, v in sorted(deltas.items())])

    async def _delete_where(self, where: str, params: Sequence[Any]) -> int:
        """Delete the records matching ``where`` and take their share out of the stats."""
        async with self.session() as s:
            await s.fetch(  # the writers' lock (see above): no write interleaves with this
                self.sql("SELECT value FROM {t}positions WHERE name = 'changes' FOR UPDATE")
            )
            rows = await s.fetch(
                self.sql(
                    "SELECT task_id, status, queue, duration FROM {t}records"
                    f" WHERE {where} ORDER BY task_id FOR UPDATE"
                ),
                params,
            )
            ids = [str(r[0]) for r in rows]
            for part in chunks(ids):
                await s.execute(
                    self.sql(f"DELETE FROM {{t}}records WHERE task_id IN ({marks(len(part))})"),
                    part,
                )
            inputs = [(str(r[1]), str(r[2]), _float(r[3])) for r in rows]
            await self._add_stats(s, removal_deltas(inputs))
        return len(ids)

    async def _read_rows(self, task_ids: list[str]) -> list[tuple[str, str | bytes]]:
        out: list[tuple[str, str | bytes]] = []
        for part in chunks(task_ids):
            rows = await self.fetch(
                f"SELECT task_id, data FROM {{t}}records WHERE task_id IN ({marks(len(part))})",
                part,
            )
            out.extend((row[0], row[1]) for row in rows)
        return out

    async def _read_stats(self) -> dict[str, float]:
        return {
            str(r[0]): float(r[1]) for r in await self.fetch("SELECT name, value FROM {t}stats")
        }

    async def _read_throughput(self, first_bucket: int) -> list[tuple[int, int, int]]:
        rows = await self.fetch(
            "SELECT bucket, SUM(CASE WHEN status = 'success' THEN count ELSE 0 END),"
            " SUM(CASE WHEN status = 'failed' THEN count ELSE 0 END)"
            " FROM {t}throughput WHERE bucket >= ? GROUP BY bucket ORDER BY bucket",
            [first_bucket],
        )
        return [(int(r[0]), int(r[1]), int(r[2])) for r in rows]

    async def _changes_after(
        self, cursor: str | None, limit: int
    ) -> tuple[list[tuple[str, list[str]]], str, bool]:
        if cursor is None:
            rows = await self.fetch("SELECT value FROM {t}positions WHERE name = 'changes'")
            return [], str(rows[0][0]) if rows else "0", False
        after = int(cursor)
        rows = await self.fetch(
            "SELECT position, origin, ids FROM {t}changes WHERE position > ?"
            " ORDER BY position LIMIT ?",
            [after, limit],
        )
        # Positions are consecutive (they commit in order, and a rolled-back write gives its
        # position back): a hole right after the cursor is entries pruned before this read.
        gap = bool(rows) and int(rows[0][0]) > after + 1
        entries = [(str(r[1]), [str(t) for t in json.loads(r[2])]) for r in rows]
        return entries, str(rows[-1][0]) if rows else str(after), gap

    async def _read_row(self, task_id: str) -> str | bytes | None:
        rows = await self.fetch("SELECT data FROM {t}records WHERE task_id = ?", [task_id])
        return rows[0][0] if rows else None

    def _where(self, query: RecordQuery, after: tuple[float, str] | None) -> tuple[str, list[Any]]:
        like = f"LIKE ?{self.like_escape}"
        clauses, params = record_filter(
            query,
            tag_sql=self.tag_sql(),
            text_sql=f"(LOWER(func_name) {like} OR LOWER(task_id) {like} OR LOWER(error) {like})",
        )
        if after is not None:
            clauses.append("(created_at < ? OR (created_at = ? AND task_id < ?))")
            params.extend([after[0], after[0], after[1]])
        return where_sql(clauses), params

    async def _query_rows(
        self, query: RecordQuery, after: tuple[float, str] | None, limit: int
    ) -> list[tuple[str, str | bytes]]:
        where, params = self._where(query, after)
        rows = await self.fetch(
            f"SELECT task_id, data FROM {{t}}records{where}"
            " ORDER BY created_at DESC, task_id DESC LIMIT ?",
            [*params, limit],
        )
        return [(row[0], row[1]) for row in rows]

    async def _delete_rows_before(self, cutoff: float) -> int:
        return await self._delete_where(
            f"end_time < ? AND status IN ({marks(len(FINISHED))})", [cutoff, *FINISHED]
        )

    async def _delete_rows(self, task_ids: list[str]) -> int:
        deleted = 0
        for part in chunks(task_ids):
            deleted += await self._delete_where(f"task_id IN ({marks(len(part))})", part)
        return deleted

    async def _delete_ids(
        self, table: str, task_ids: Sequence[str], column: str = "task_id"
    ) -> int:
        deleted = 0
        async with self.session() as s:
            for part in chunks(task_ids):
                deleted += await s.execute(
                    self.sql(f"DELETE FROM {table} WHERE {column} IN ({marks(len(part))})"), part
                )
        return deleted

    async def _count_rows(self) -> dict[str, int]:
        rows = await self.fetch("SELECT status, COUNT(*) FROM {t}records GROUP BY status")
        return {row[0]: int(row[1]) for row in rows}

    async def _update_rows(self, items: list[tuple[str, str]]) -> int:
        return await self._update_each("UPDATE {t}records SET data = ? WHERE task_id = ?", items)

    async def _update_each(self, text: str, items: list[tuple[str, str]]) -> int:
        updated = 0
        async with self.session() as s:
            for task_id, data in items:
                updated += await s.execute(self.sql(text), [data, task_id])
        return updated

    # ---- journal and leases ----------------------------------------------------------------

    async def _journal_write(self, items: list[tuple[str, str]], owner: str) -> None:
        statement = self.sql(
            self.upsert_sql("{t}journal", ("task_id", "owner", "data"), ["task_id"])
        )
        async with self.session() as s:
            await s.executemany(statement, [[task_id, owner, data] for task_id, data in items])

    async def _journal_delete(self, task_ids: list[str]) -> None:
        await self._delete_ids("{t}journal", task_ids)

    async def _journal_release(self, owner: str) -> int:
        return await self.execute("UPDATE {t}journal SET owner = NULL WHERE owner = ?", [owner])

    async def _journal_claim(self, owner: str, limit: int) -> list[tuple[str, str]]:
        async with self.session() as s:
            live = [
                row[0]
                for row in await s.fetch(
                    self.sql("SELECT owner FROM {t}owners WHERE expires_at > {now}")
                )
            ]
            # No live lease at all: every entry is free.
            free = f" WHERE owner IS NULL OR owner NOT IN ({marks(len(live))})" if live else ""
            # SKIP LOCKED: rows another claimer is taking right now are left to it.
            rows = await s.fetch(
                self.sql(
                    f"SELECT task_id, data FROM {{t}}journal{free}"
                    " ORDER BY seq LIMIT ? FOR UPDATE SKIP LOCKED"
                ),
                [*live, limit],
            )
            taken = [(row[0], row[1]) for row in rows]
            for part in chunks([task_id for task_id, _ in taken]):
                await s.execute(
                    self.sql(
                        f"UPDATE {{t}}journal SET owner = ? WHERE task_id IN ({marks(len(part))})"
                    ),
                    [owner, *part],
                )
        return taken

    async def _journal_list(self, owner: str) -> list[tuple[str, str]]:
        rows = await self.fetch(
            "SELECT task_id, data FROM {t}journal WHERE owner = ? ORDER BY seq", [owner]
        )
        return [(row[0], row[1]) for row in rows]

    async def _journal_page(
        self, after: str | None, limit: int
    ) -> list[tuple[str, str | None, str]]:
        rows = await self.fetch(
            "SELECT task_id, owner, data FROM {t}journal WHERE task_id > ?"
            " ORDER BY task_id LIMIT ?",
            [after or "", limit],
        )
        return [(row[0], row[1], row[2]) for row in rows]

    async def _journal_update(self, items: list[tuple[str, str]]) -> int:
        return await self._update_each("UPDATE {t}journal SET data = ? WHERE task_id = ?", items)

    async def _heartbeat(self, owner: str, ttl: float) -> None:
        upsert = self.upsert_sql("{t}owners", ("owner", "expires_at"), ["owner"], "?, {now} + ?")
        await self.execute(upsert, [owner, ttl])

    async def _drop_owner(self, owner: str) -> None:
        await self.execute("DELETE FROM {t}owners WHERE owner = ?", [owner])

    # ---- idempotency, locks, metadata --------------------------------------------------------

    async def _take(self, table: str, key: str, holder: str, ttl: float | None) -> str | None:
        """Give ``key`` to ``holder`` unless someone else holds it unexpired; that one's id.

        Expired holders are deleted first; the insert waits for a concurrent taker of the same
        key to commit and then does nothing, so the read after it sees the winner.
        """
        async with self.session() as s:
            await s.execute(
                self.sql(f"DELETE FROM {table} WHERE name = ? AND expires_at <= {{now}}"), [key]
            )
            await s.execute(
                self.sql(
                    self.insert_absent_sql(
                        table, ("name", "holder", "expires_at"), "?, ?, {now} + ?"
                    )
                ),
                [key, holder, ttl],
            )
            rows = await s.fetch(self.sql(f"SELECT holder FROM {table} WHERE name = ?"), [key])
            current = str(rows[0][0]) if rows else None
            if current != holder:
                return current
            await s.execute(
                self.sql(f"UPDATE {table} SET expires_at = {{now}} + ? WHERE name = ?"),
                [ttl, key],
            )
            return None

    async def _reserve_key(self, key: str, task_id: str, ttl: float | None) -> str | None:
        return await self._take("{t}keys", key, task_id, ttl)

    async def _release_key(self, key: str, task_id: str) -> None:
        await self.execute("DELETE FROM {t}keys WHERE name = ? AND holder = ?", [key, task_id])

    async def _acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        return await self._take("{t}locks", name, owner, ttl) is None

    async def _get_meta(self, key: str) -> str | None:
        rows = await self.fetch("SELECT value FROM {t}meta WHERE name = ?", [key])
        return str(rows[0][0]) if rows else None

    async def _set_meta(self, key: str, value: str) -> None:
        await self.execute(self.upsert_sql("{t}meta", ("name", "value"), ["name"]), [key, value])

    # ---- instances, commands, one-off schedules ---------------------------------------------

    async def _put_instance(self, instance_id: str, data: str, ttl: float) -> None:
        upsert = self.upsert_sql(
            "{t}instances",
            ("instance_id", "expires_at", "data"),
            ["instance_id"],
            "?, {now} + ?, ?",
        )
        await self.execute(upsert, [instance_id, ttl, data])
        # Its own transaction: two instances each holding their upserted row while their sweeps
        # scan for the other's would deadlock (MySQL reports it and refuses the heartbeat).
        await self.execute("DELETE FROM {t}instances WHERE expires_at <= {now}")

    async def _list_instances(self) -> list[tuple[str, str]]:
        rows = await self.fetch(
            "SELECT instance_id, data FROM {t}instances WHERE expires_at > {now}"
        )
        return [(row[0], row[1]) for row in rows]

    async def _remove_instance(self, instance_id: str) -> None:
        await self.execute("DELETE FROM {t}instances WHERE instance_id = ?", [instance_id])

    async def _next_position(self, s: SqlSession, name: str) -> int:
        """The next position of the log ``name``. The UPDATE locks its counter row until the
        transaction ends, so positions commit in order and a reader past one never misses an
        earlier one that committed late (a database sequence gives no such promise)."""
        await s.execute(
            self.sql("UPDATE {t}positions SET value = value + 1 WHERE name = ?"), [name]
        )
        rows = await s.fetch(self.sql("SELECT value FROM {t}positions WHERE name = ?"), [name])
        return int(rows[0][0])

    async def _send_command(self, data: str) -> None:
        async with self.session() as s:
            position = await self._next_position(s, "commands")
            await s.execute(
                self.sql("INSERT INTO {t}commands (position, sent_at, data) VALUES (?, {now}, ?)"),
                [position, data],
            )
            await s.execute(
                self.sql("DELETE FROM {t}commands WHERE sent_at < {now} - ?"), [COMMAND_TTL]
            )
            await self.notify(s, "commands")

    async def _command_position(self) -> str:
        rows = await self.fetch("SELECT value FROM {t}positions WHERE name = 'commands'")
        return str(rows[0][0]) if rows else "0"

    async def _read_commands(self, after: str, wait: float) -> list[tuple[str, str]]:
        query = (
            "SELECT position, data FROM {t}commands WHERE position > ? ORDER BY position LIMIT 500"
        )
        async with self.listening("commands", wait) as woken:
            rows = await self.fetch(query, [int(after)])
            if not rows and await woken():
                rows = await self.fetch(query, [int(after)])
        return [(str(row[0]), row[1]) for row in rows]

    async def notify(self, s: SqlSession, channel: str) -> None:
        """Tell listeners of ``channel`` that it has news (at commit). Default: nothing, the
        readers poll."""

    @asynccontextmanager
    async def listening(
        self, channel: str, wait: float
    ) -> AsyncIterator[Callable[[], Awaitable[bool]]]:
        """A wait for news on ``channel`` (armed before the caller reads, so nothing sent in
        between is missed): awaiting it returns True when news came within ``wait`` seconds.
        Default: returns False at once (the caller polls)."""

        async def nothing() -> bool:
            return False

        yield nothing

    async def _put_schedule(self, run_key: str, run_at: float, data: str) -> bool:
        try:
            async with self.session() as s:
                await s.execute(
                    self.sql("INSERT INTO {t}schedules (run_key, run_at, data) VALUES (?, ?, ?)"),
                    [run_key, run_at, data],
                )
        except BackendError as exc:
            if self.is_duplicate_key(exc.__cause__):
                return False
            raise
        return True

    async def _take_schedule(self, run_key: str) -> tuple[float, str] | None:
        async with self.session() as s:
            rows = await s.fetch(
                self.sql("SELECT run_at, data FROM {t}schedules WHERE run_key = ? FOR UPDATE"),
                [run_key],
            )
            if not rows:
                return None
            await s.execute(self.sql("DELETE FROM {t}schedules WHERE run_key = ?"), [run_key])
            return float(rows[0][0]), rows[0][1]

    async def _list_schedules(self, before: float | None) -> list[tuple[str, float, str]]:
        due = " WHERE run_at < ?" if before is not None else ""
        rows = await self.fetch(
            f"SELECT run_key, run_at, data FROM {{t}}schedules{due} ORDER BY run_at, run_key",
            [before] if before is not None else [],
        )
        return [(row[0], float(row[1]), row[2]) for row in rows]

    # ---- the audit trail ---------------------------------------------------------------------

    async def _append_audit(self, data: str, keep: int) -> None:
        # The position row's lock makes appends take turns: positions are then consecutive,
        # and the newest ``keep`` of them are exactly the entries kept.
        async with self.session() as s:
            position = await self._next_position(s, "audit")
            await s.execute(
                self.sql("INSERT INTO {t}audit (position, data) VALUES (?, ?)"), [position, data]
            )
            await s.execute(self.sql("DELETE FROM {t}audit WHERE position <= ?"), [position - keep])

    async def _read_audit(self, limit: int) -> Sequence[str | bytes]:
        rows = await self.fetch("SELECT data FROM {t}audit ORDER BY position DESC LIMIT ?", [limit])
        return [row[0] for row in rows]

    # ---- rate limits and counters ----------------------------------------------------------

    async def _take_rate_token(self, key: str, interval: float, burst: int) -> float:
        """GCRA with the server's clock; the row lock makes concurrent takers wait in turn."""
        async with self.session() as s:
            insert = self.insert_absent_sql("{t}rates", ("name", "tat"), "?, {now}")
            await s.execute(self.sql(insert), [key])
            rows = await s.fetch(
                self.sql("SELECT tat, {now} FROM {t}rates WHERE name = ? FOR UPDATE"), [key]
            )
            tat, now = float(rows[0][0]), float(rows[0][1])
            allowed_from = tat - (burst - 1) * interval
            if now < allowed_from:
                return allowed_from - now
            await s.execute(
                self.sql("UPDATE {t}rates SET tat = ? WHERE name = ?"),
                [max(tat, now) + interval, key],
            )
            return 0.0

    async def _counter_add(self, key: str, amount: int, ttl: float) -> int:
        upsert = self.upsert_sql(
            "{t}counters", ("name", "value", "expires_at"), ["name"], "?, ?, {now} + ?", ["value"]
        )
        async with self.session() as s:
            # An expired counter starts again from ``amount``.
            await s.execute(
                self.sql("DELETE FROM {t}counters WHERE name = ? AND expires_at <= {now}"), [key]
            )
            await s.execute(self.sql(upsert), [key, amount, ttl])
            rows = await s.fetch(self.sql("SELECT value FROM {t}counters WHERE name = ?"), [key])
            return int(rows[0][0])

    async def _counter_get(self, key: str) -> tuple[int, float]:
        rows = await self.fetch(
            "SELECT value, expires_at - {now} FROM {t}counters"
            " WHERE name = ? AND expires_at > {now}",
            [key],
        )
        return (int(rows[0][0]), max(0.0, float(rows[0][1]))) if rows else (0, 0.0)

    async def _counter_delete(self, key: str) -> None:
        await self.execute("DELETE FROM {t}counters WHERE name = ?", [key])

    # ---- 0.12's tables (same names and columns on PostgreSQL and MySQL) ----------------------

    async def _legacy_page(self, table: str, after: str | None, limit: int) -> list[Row]:
        key = LEGACY_TABLES[table]
        async with self.session() as s:
            found = await s.fetch(self.table_exists_sql(), [table])
            if not found or not found[0][0]:
                return []
            return await s.fetch_dicts(
                f"SELECT * FROM {table} WHERE {key} > ? ORDER BY {key} LIMIT ?",
                [after or "", limit],
            )

    async def _legacy_delete(self, table: str, keys: list[str]) -> None:
        await self._delete_ids(table, keys, LEGACY_TABLES[table])


#: 0.12's tables and the key column of each; only these names reach the SQL (a KeyError for
#: any other, never a caller's string).
LEGACY_TABLES = {
    "task_snapshots": "task_id",
    "task_pending_requeue": "task_id",
    "task_scheduled_once": "run_key",
}


def legacy_pool_sizes(
    backend: str, legacy: dict[str, Any], min_size: int, max_size: int
) -> tuple[int, int]:
    """0.12's ``min_conn``/``max_conn``/``max_workers`` keywords, with the new spelling."""
    for old, value in legacy.items():
        if old == "min_conn":
            min_size = renamed_keyword(backend, old, "min_size", int(value), None)
        elif old == "max_conn":
            max_size = renamed_keyword(backend, old, "max_size", int(value), None)
        elif old == "max_workers":
            no_effect(backend, old)
        else:
            raise TypeError(f"{backend}() got an unexpected keyword argument {old!r}")
    return min_size, max_size
