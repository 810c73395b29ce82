"""PostgreSQL on asyncpg: history, journal and leases shared by instances on many machines.

asyncpg speaks PostgreSQL's protocol natively on asyncio (no thread per query), keeps prepared
statements per connection, ships its own pool and receives ``LISTEN`` notifications on a
connection with a callback. Tables are named ``<table_prefix><name>`` (default ``tf_``): see
``sql.py`` for what they hold and how claims, reservations and schema versions work.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from ..errors import BackendError, ConfigurationError
from ..urls import mask_url
from .sql import SqlBackend, SqlSession, legacy_pool_sizes

if TYPE_CHECKING:
    import asyncpg

INSTALL_HINT = "pip install 'fastapi-taskflow[postgres]'"

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS {t}schema (id INTEGER PRIMARY KEY, version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS {t}records (
        task_id TEXT COLLATE "C" PRIMARY KEY,
        func_name TEXT COLLATE "C" NOT NULL,
        status TEXT COLLATE "C" NOT NULL,
        queue TEXT COLLATE "C" NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        end_time DOUBLE PRECISION,
        error TEXT,
        duration DOUBLE PRECISION,
        data TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS {t}records_page ON {t}records (created_at DESC, task_id DESC)",
    "CREATE INDEX IF NOT EXISTS {t}records_status_page"
    " ON {t}records (status, created_at DESC, task_id DESC)",
    "CREATE INDEX IF NOT EXISTS {t}records_func_page"
    " ON {t}records (func_name, created_at DESC, task_id DESC)",
    "CREATE INDEX IF NOT EXISTS {t}records_queue_page"
    " ON {t}records (queue, created_at DESC, task_id DESC)",
    "CREATE INDEX IF NOT EXISTS {t}records_end ON {t}records (end_time)",
    """CREATE TABLE IF NOT EXISTS {t}journal (
        task_id TEXT COLLATE "C" PRIMARY KEY,
        seq BIGSERIAL,
        owner TEXT,
        data TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS {t}journal_owner ON {t}journal (owner)",
    "CREATE INDEX IF NOT EXISTS {t}journal_seq ON {t}journal (seq)",
    """CREATE TABLE IF NOT EXISTS {t}owners (
        owner TEXT PRIMARY KEY, expires_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS {t}keys (
        name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at DOUBLE PRECISION)""",
    """CREATE TABLE IF NOT EXISTS {t}locks (
        name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at DOUBLE PRECISION)""",
    "CREATE TABLE IF NOT EXISTS {t}meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS {t}instances (
        instance_id TEXT PRIMARY KEY, expires_at DOUBLE PRECISION NOT NULL, data TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS {t}positions (name TEXT PRIMARY KEY, value BIGINT NOT NULL)""",
    "INSERT INTO {t}positions (name, value) VALUES ('commands', 0), ('changes', 0), ('audit', 0)"
    " ON CONFLICT DO NOTHING",
    """CREATE TABLE IF NOT EXISTS {t}commands (
        position BIGINT PRIMARY KEY, sent_at DOUBLE PRECISION NOT NULL, data TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS {t}schedules (
        run_key TEXT COLLATE "C" PRIMARY KEY, run_at DOUBLE PRECISION NOT NULL,
        data TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS {t}schedules_due ON {t}schedules (run_at)",
    "CREATE TABLE IF NOT EXISTS {t}stats (name TEXT PRIMARY KEY, value DOUBLE PRECISION NOT NULL)",
    """CREATE TABLE IF NOT EXISTS {t}throughput (
        bucket BIGINT NOT NULL, status TEXT NOT NULL, count BIGINT NOT NULL,
        PRIMARY KEY (bucket, status))""",
    """CREATE TABLE IF NOT EXISTS {t}changes (
        position BIGINT PRIMARY KEY, origin TEXT NOT NULL, ids TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS {t}audit (position BIGINT PRIMARY KEY, data TEXT NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS {t}rates (name TEXT PRIMARY KEY, tat DOUBLE PRECISION NOT NULL)",
    """CREATE TABLE IF NOT EXISTS {t}counters (
        name TEXT PRIMARY KEY, value BIGINT NOT NULL, expires_at DOUBLE PRECISION NOT NULL)""",
    # The tag filter reads JSON out of ``data``; a row that is not JSON must read as "no tags",
    # not abort the whole page with a cast error.
    """CREATE OR REPLACE FUNCTION {t}jsonb_or_null(doc TEXT) RETURNS JSONB
        LANGUAGE plpgsql IMMUTABLE AS $$
        BEGIN RETURN doc::jsonb; EXCEPTION WHEN others THEN RETURN NULL; END $$""",
]

_PLACEHOLDER = re.compile(r"\?")


@functools.lru_cache(maxsize=512)
def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...``."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


def _changed(status: str) -> int:
    """Rows changed, from a command status such as ``UPDATE 3`` or ``INSERT 0 1``."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _asyncpg() -> Any:
    try:
        import asyncpg
    except ImportError:
        raise ConfigurationError(f"PostgresBackend needs asyncpg: {INSTALL_HINT}") from None
    return asyncpg


class _Session:
    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        return list(await self.connection.fetch(numbered(sql), *params))

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return _changed(await self.connection.execute(numbered(sql), *params))

    async def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        await self.connection.executemany(numbered(sql), params)

    async def fetch_dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return [dict(row) for row in await self.connection.fetch(numbered(sql), *params)]


class PostgresBackend(SqlBackend):
    """Records, journal, leases, keys and locks in PostgreSQL tables.

    Give ``url`` (``postgresql://user:password@host:5432/db``) to let the backend make and close
    its own pool of ``min_size``..``max_size`` connections, or ``pool``: an ``asyncpg.Pool``
    your app made and closes itself.
    """

    server = "PostgreSQL"
    # _read_commands waits for a NOTIFY itself: the caller need not pause between reads.
    command_poll_interval = 0.0
    now_sql = "EXTRACT(EPOCH FROM clock_timestamp())::float8"
    like_escape = " ESCAPE '\\'"

    def __init__(
        self,
        url: str | None = None,
        *,
        pool: asyncpg.Pool | None = None,
        table_prefix: str = "tf_",
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
        command_timeout: float | None = 30.0,
        **legacy: Any,
    ) -> None:
        super().__init__(table_prefix=table_prefix)
        self._driver = _asyncpg()  # a missing driver is a clear error now, not at startup
        min_size, max_size = legacy_pool_sizes("PostgresBackend", legacy, min_size, max_size)
        if (url is None) == (pool is None):
            raise ConfigurationError("PostgresBackend: give either url= or pool=, not both")
        if url is not None and not url.startswith(("postgresql://", "postgres://")):
            raise ConfigurationError(
                f"PostgresBackend url {mask_url(url)!r}: must start with postgresql://"
            )
        if not 1 <= min_size <= max_size:
            raise ConfigurationError(
                f"PostgresBackend min_size={min_size}, max_size={max_size}:"
                " need 1 <= min_size <= max_size"
            )
        self.url = url
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._given_pool = pool
        self._pool: asyncpg.Pool | None = None
        # LISTEN: one connection of the pool held while anyone waits for news; the events of
        # the coroutines waiting on each channel.
        self._listener: asyncpg.Connection | None = None
        self._channels: set[str] = set()
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._listen_lock = asyncio.Lock()

    def describe(self) -> str:
        where = mask_url(self.url) if self.url is not None else "postgresql (given pool)"
        return f"{where} (tables {self.table_prefix}*)"

    # ---- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        asyncpg = self._driver
        if self._given_pool is not None:
            if not isinstance(self._given_pool, asyncpg.Pool):
                raise ConfigurationError(
                    f"PostgresBackend pool= must be an asyncpg.Pool, got"
                    f" {type(self._given_pool).__name__} (fastapi-taskflow 0.12 took a psycopg2"
                    " pool; pass url= or make one with asyncpg.create_pool)"
                )
            self._pool = self._given_pool
        else:
            self._pool = await self._connect(asyncpg)
        try:
            await self.create_schema()
        except BaseException:
            await self.close()
            raise

    async def _connect(self, asyncpg: Any) -> asyncpg.Pool:
        try:
            return await asyncpg.create_pool(
                dsn=self.url,
                min_size=self.min_size,
                max_size=self.max_size,
                timeout=self.connect_timeout,
                command_timeout=self.command_timeout,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise BackendError(f"PostgreSQL at {self.describe()} does not answer: {exc}") from None

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        listener, self._listener = self._listener, None
        channels, self._channels = self._channels, set()
        if pool is not None and listener is not None:
            for channel in channels:
                with contextlib.suppress(OSError, *self._driver_errors()):  # lost: no LISTEN left
                    await listener.remove_listener(self.channel(channel), self._notified)
            await pool.release(listener)
        if pool is not None and pool is not self._given_pool:
            await pool.close()

    # ---- plumbing --------------------------------------------------------------------------

    def _connection_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise BackendError(f"{self.describe()} is not open; call open() first")
        return self._pool

    def _driver_errors(self) -> tuple[type[Exception], ...]:
        return (self._driver.PostgresError, self._driver.InterfaceError)

    @asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        failures: tuple[type[BaseException], ...] = (*self._driver_errors(), OSError)
        try:
            yield
        except failures as exc:
            raise BackendError(f"{self.describe()}: {exc}") from exc

    @asynccontextmanager
    async def session(self) -> AsyncIterator[_Session]:
        pool = self._connection_pool()
        async with self._errors(), pool.acquire() as connection, connection.transaction():
            yield _Session(connection)

    @asynccontextmanager
    async def schema_lock(self) -> AsyncIterator[None]:
        key = zlib.crc32(f"fastapi-taskflow:{self.table_prefix}".encode())
        pool = self._connection_pool()
        async with self._errors(), pool.acquire() as connection:
            await connection.execute("SELECT pg_advisory_lock($1)", key)
            try:
                yield
            finally:
                await connection.execute("SELECT pg_advisory_unlock($1)", key)

    # ---- LISTEN/NOTIFY: readers of a channel wake when a writer commits news ----------------

    def channel(self, name: str) -> str:
        return f"{self.table_prefix}{name}"

    async def notify(self, s: SqlSession, channel: str) -> None:
        # Delivered at commit, and only if the transaction commits.
        await s.execute("SELECT pg_notify(?, '')", [self.channel(channel)])

    @asynccontextmanager
    async def listening(
        self, channel: str, wait: float
    ) -> AsyncIterator[Callable[[], Awaitable[bool]]]:
        event = asyncio.Event()
        if wait > 0:
            await self._listen(channel)
            self._waiters.setdefault(channel, set()).add(event)

        async def woken() -> bool:
            if wait <= 0:
                return False
            try:
                await asyncio.wait_for(event.wait(), wait)
            except TimeoutError:
                return False
            return True

        try:
            yield woken
        finally:
            self._waiters.get(channel, set()).discard(event)

    async def _listen(self, channel: str) -> None:
        async with self._listen_lock:
            if channel in self._channels:
                return
            async with self._errors():
                if self._listener is None:
                    self._listener = await self._connection_pool().acquire()
                await self._listener.add_listener(self.channel(channel), self._notified)
            self._channels.add(channel)

    def _notified(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        for event in self._waiters.get(channel.removeprefix(self.table_prefix), ()):
            event.set()

    # ---- dialect ---------------------------------------------------------------------------

    def schema_statements(self) -> list[str]:
        return list(_SCHEMA)

    def on_duplicate_sql(
        self, table: str, keys: Sequence[str], updates: Sequence[str], add: Sequence[str] = ()
    ) -> str:
        assignments = [f"{c} = EXCLUDED.{c}" for c in updates]
        assignments += [f"{c} = {table}.{c} + EXCLUDED.{c}" for c in add]
        return f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {', '.join(assignments)}"

    def is_duplicate_key(self, error: BaseException | None) -> bool:
        return isinstance(error, self._driver.UniqueViolationError)

    def insert_absent_sql(self, table: str, columns: Sequence[str], values: str) -> str:
        return (
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values}) ON CONFLICT DO NOTHING"
        )

    def table_exists_sql(self) -> str:
        return "SELECT to_regclass(?::text) IS NOT NULL"

    def tag_sql(self) -> str:
        return "(({t}jsonb_or_null(data) -> 'tags') ->> ?) = ?"
