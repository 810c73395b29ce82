"""MySQL 8.0+ and MariaDB 10.6+ on asyncmy: history, journal and leases shared across machines.

asyncmy is a native asyncio driver (compiled, so no thread per query) that installs from
wheels and speaks to MariaDB 10.11 and MySQL 8. Claims use ``FOR UPDATE SKIP LOCKED``, which
MySQL has from 8.0 and MariaDB from 10.6. Sessions run at ``READ COMMITTED``: every statement
reads the latest committed rows, and InnoDB takes no gap locks that would make two instances
taking different keys wait for each other. Tables are ``<table_prefix><name>`` (default
``tf_``), in utf8mb4 with binary collation so ids sort and compare as in the other backends.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import BackendError, ConfigurationError
from ..urls import mask_url
from .sql import SqlBackend, legacy_pool_sizes

INSTALL_HINT = "pip install 'fastapi-taskflow[mysql]'"

_TABLE = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS {t}schema (id INT PRIMARY KEY, version INT NOT NULL)" + _TABLE,
    """CREATE TABLE IF NOT EXISTS {t}records (
        task_id VARCHAR(191) NOT NULL PRIMARY KEY,
        func_name VARCHAR(255) NOT NULL,
        status VARCHAR(32) NOT NULL,
        queue VARCHAR(191) NOT NULL,
        created_at DOUBLE NOT NULL,
        end_time DOUBLE NULL,
        error TEXT NULL,
        duration DOUBLE NULL,
        data LONGTEXT NOT NULL,
        KEY {t}records_page (created_at, task_id),
        KEY {t}records_status_page (status, created_at, task_id),
        KEY {t}records_func_page (func_name, created_at, task_id),
        KEY {t}records_queue_page (queue, created_at, task_id),
        KEY {t}records_end (end_time))"""
    + _TABLE,
    """CREATE TABLE IF NOT EXISTS {t}journal (
        task_id VARCHAR(191) NOT NULL PRIMARY KEY,
        seq BIGINT NOT NULL AUTO_INCREMENT,
        owner VARCHAR(191) NULL,
        data LONGTEXT NOT NULL,
        UNIQUE KEY {t}journal_seq (seq),
        KEY {t}journal_owner (owner))"""
    + _TABLE,
    """CREATE TABLE IF NOT EXISTS {t}owners (
        owner VARCHAR(191) NOT NULL PRIMARY KEY, expires_at DOUBLE NOT NULL)"""
    + _TABLE,
    """CREATE TABLE IF NOT EXISTS {t}keys (
        name VARCHAR(512) NOT NULL PRIMARY KEY, holder VARCHAR(191) NOT NULL,
        expires_at DOUBLE NULL)"""
    + _TABLE,
    """CREATE TABLE IF NOT EXISTS {t}locks (
        name VARCHAR(512) NOT NULL PRIMARY KEY, holder VARCHAR(191) NOT NULL,
        expires_at DOUBLE NULL)"""
    + _TABLE,
    """CREATE TABLE IF NOT EXISTS {t}meta (
        name VARCHAR(512) NOT NULL PRIMARY KEY, value LONGTEXT NOT NULL)"""
    + _TABLE,
    """CREATE TABLE IF NOT EXISTS {t}instances (
        instance_id VARCHAR(191) NOT NULL PRIMARY KEY, expires_at DOUBLE NOT NULL,
        data LONGTEXT NOT NULL)"""
    + _TABLE,
    """CREATE TABLE IF NOT EXISTS {t}positions (
        name VARCHAR(64) NOT NULL PRIMARY KEY, value BIGINT NOT NULL)"""
    + _TABLE,
    "INSERT INTO {t}positions (name, value) VALUES ('commands', 0), ('changes', 0), ('audit', 0)"
    " ON DUPLICATE KEY UPDATE name = name",
    """CREATE TABLE IF NOT EXISTS {t}commands (
        position BIGINT NOT NULL PRIMARY KEY, sent_at DOUBLE NOT NULL, data LONGTEXT NOT NULL)"""
    + _TABLE,
    """CREATE TABLE IF NOT EXISTS {t}schedules (
        run_key VARCHAR(512) NOT NULL PRIMARY KEY, run_at DOUBLE NOT NULL,
        data LONGTEXT NOT NULL, KEY {t}schedules_due (run_at))"""
    + _TABLE,
    """CREATE TABLE IF NOT EXISTS {t}stats (
        name VARCHAR(512) NOT NULL PRIMARY KEY, value DOUBLE NOT NULL)"""
    + _TABLE,
    """CREATE TABLE IF NOT EXISTS {t}throughput (
        bucket BIGINT NOT NULL, status VARCHAR(32) NOT NULL, count BIGINT NOT NULL,
        PRIMARY KEY (bucket, status))"""
    + _TABLE,
    """CREATE TABLE IF NOT EXISTS {t}changes (
        position BIGINT NOT NULL PRIMARY KEY, origin VARCHAR(191) NOT NULL,
        ids LONGTEXT NOT NULL)"""
    + _TABLE,
    """CREATE TABLE IF NOT EXISTS {t}audit (
        position BIGINT NOT NULL PRIMARY KEY, data LONGTEXT NOT NULL)"""
    + _TABLE,
    """CREATE TABLE IF NOT EXISTS {t}rates (
        name VARCHAR(512) NOT NULL PRIMARY KEY, tat DOUBLE NOT NULL)"""
    + _TABLE,
    """CREATE TABLE IF NOT EXISTS {t}counters (
        name VARCHAR(512) NOT NULL PRIMARY KEY, value BIGINT NOT NULL,
        expires_at DOUBLE NOT NULL)"""
    + _TABLE,
]


@functools.lru_cache(maxsize=512)
def pyformat(sql: str) -> str:
    """``?`` placeholders as the driver's ``%s`` (a literal ``%`` doubled first)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _asyncmy() -> Any:
    try:
        import asyncmy
        import asyncmy.errors
    except ImportError:
        raise ConfigurationError(f"MySQLBackend needs asyncmy: {INSTALL_HINT}") from None
    return asyncmy


def connect_options(url: str) -> dict[str, Any]:
    """asyncmy's connect keywords from ``mysql://user:password@host:3306/db?unix_socket=...``."""
    parts = urlsplit(url)
    if parts.scheme not in ("mysql", "mariadb", "mysql+asyncmy"):
        raise ConfigurationError(
            f"MySQLBackend url {mask_url(url)!r}: must start with mysql:// or mariadb://"
        )
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise ConfigurationError(f"MySQLBackend url {mask_url(url)!r}: name the database (/db)")
    options: dict[str, Any] = {
        "host": parts.hostname or "localhost",
        "port": parts.port or 3306,
        "user": unquote(parts.username) if parts.username else "root",
        "password": unquote(parts.password) if parts.password else "",
        "db": database,
    }
    for key, value in parse_qsl(parts.query):
        if key == "unix_socket":
            options["unix_socket"] = value
        else:
            raise ConfigurationError(
                f"MySQLBackend url {mask_url(url)!r}: unknown option {key!r} (known: unix_socket)"
            )
    return options


class _Session:
    def __init__(self, cursor: Any) -> None:
        self.cursor = cursor

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        await self.cursor.execute(pyformat(sql), tuple(params))
        return list(await self.cursor.fetchall())

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(await self.cursor.execute(pyformat(sql), tuple(params)))

    async def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        await self.cursor.executemany(pyformat(sql), [tuple(p) for p in params])

    async def fetch_dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        rows = await self.fetch(sql, params)
        names = [column[0] for column in self.cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in rows]


class MySQLBackend(SqlBackend):
    """Records, journal, leases, keys and locks in MySQL or MariaDB tables (InnoDB)."""

    server = "MySQL"
    now_sql = "UNIX_TIMESTAMP(NOW(6))"
    # Backslash is already MySQL's LIKE escape character.
    like_escape = ""

    def __init__(
        self,
        url: str,
        *,
        table_prefix: str = "tf_",
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
        **legacy: Any,
    ) -> None:
        super().__init__(table_prefix=table_prefix)
        self._driver = _asyncmy()  # a missing driver is a clear error now, not at startup
        min_size, max_size = legacy_pool_sizes("MySQLBackend", legacy, min_size, max_size)
        self._options = connect_options(url)
        if not 1 <= min_size <= max_size:
            raise ConfigurationError(
                f"MySQLBackend min_size={min_size}, max_size={max_size}:"
                " need 1 <= min_size <= max_size"
            )
        self.url = url
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self._pool: Any = None

    def describe(self) -> str:
        return f"{mask_url(self.url)} (tables {self.table_prefix}*)"

    # ---- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        asyncmy = self._driver
        from asyncmy.constants import CLIENT

        try:
            self._pool = await asyncmy.create_pool(
                minsize=self.min_size,
                maxsize=self.max_size,
                autocommit=False,
                charset="utf8mb4",
                connect_timeout=self.connect_timeout,
                # FOUND_ROWS: an UPDATE reports the rows it matched, not only those it altered.
                client_flag=CLIENT.FOUND_ROWS,
                init_command="SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
                **self._options,
            )
        except (OSError, asyncmy.errors.Error, TimeoutError) as exc:
            raise BackendError(f"MySQL at {self.describe()} does not answer: {exc}") from None
        try:
            await self.create_schema()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            await pool.wait_closed()

    # ---- plumbing --------------------------------------------------------------------------

    def _connection_pool(self) -> Any:
        if self._pool is None:
            raise BackendError(f"{self.describe()} is not open; call open() first")
        return self._pool

    @asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        asyncmy = self._driver
        try:
            yield
        except (asyncmy.errors.Error, OSError) as exc:
            raise BackendError(f"{self.describe()}: {exc}") from exc

    @asynccontextmanager
    async def session(self) -> AsyncIterator[_Session]:
        pool = self._connection_pool()
        async with self._errors(), pool.acquire() as connection:
            try:
                async with connection.cursor() as cursor:
                    yield _Session(cursor)
            except BaseException:
                await connection.rollback()
                raise
            await connection.commit()

    @asynccontextmanager
    async def schema_lock(self) -> AsyncIterator[None]:
        name = f"fastapi-taskflow:{self._options['db']}:{self.table_prefix}"
        pool = self._connection_pool()
        async with self._errors(), pool.acquire() as connection, connection.cursor() as cursor:
            await cursor.execute("SELECT GET_LOCK(%s, 60)", (name,))
            try:
                yield
            finally:
                await cursor.execute("SELECT RELEASE_LOCK(%s)", (name,))
                await cursor.fetchall()

    # ---- dialect ---------------------------------------------------------------------------

    def schema_statements(self) -> list[str]:
        return list(_SCHEMA)

    def on_duplicate_sql(
        self, table: str, keys: Sequence[str], updates: Sequence[str], add: Sequence[str] = ()
    ) -> str:
        # The additions first: MySQL evaluates assignments left to right, and a later one would
        # otherwise see the earlier ones' new values.
        assignments = [f"{c} = {c} + VALUES({c})" for c in add]
        assignments += [f"{c} = VALUES({c})" for c in updates]
        return "ON DUPLICATE KEY UPDATE " + ", ".join(assignments)

    def is_duplicate_key(self, error: BaseException | None) -> bool:
        # ER_DUP_ENTRY
        return isinstance(error, self._driver.errors.IntegrityError) and error.args[:1] == (1062,)

    def insert_absent_sql(self, table: str, columns: Sequence[str], values: str) -> str:
        # A no-op update rather than INSERT IGNORE, which would also hide errors such as a
        # value too long for its column.
        first = columns[0]
        return (
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values})"
            f" ON DUPLICATE KEY UPDATE {first} = {first}"
        )

    def table_exists_sql(self) -> str:
        return (
            "SELECT COUNT(*) FROM information_schema.tables"
            " WHERE table_schema = DATABASE() AND table_name = ?"
        )

    def tag_sql(self) -> str:
        return (
            "(CASE WHEN JSON_VALID(data) THEN JSON_UNQUOTE(JSON_EXTRACT(data,"
            " CONCAT('$.tags.', JSON_QUOTE(?)))) END) = CAST(? AS CHAR) COLLATE utf8mb4_bin"
        )
