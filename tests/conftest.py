"""Shared fixtures: real servers the tests start themselves."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from servers import (
    MariaDBServer,
    PostgresServer,
    RedisServer,
    require_mariadb,
    require_postgres,
    require_redis_server,
    running,
    running_redis_server,
)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free port for the whole session.

    Missing binary: skipped locally, a failure in CI (a CI that skips Redis proves nothing).
    """
    with running_redis_server(require_redis_server()) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The server's URL, restarted first if an earlier (outage) test left it stopped."""
    redis_server.start()
    return redis_server.url


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses, so tests share the server but not their data."""
    return f"tftest-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL cluster for the whole session (initdb + postgres, ~2 s)."""
    with running(PostgresServer(require_postgres())) as server:
        yield server


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    """One throwaway MariaDB for the whole session (mariadb-install-db + mariadbd, ~5 s)."""
    with running(MariaDBServer(*require_mariadb())) as server:
        server.create_database("taskflow")
        yield server


@pytest.fixture
def table_prefix() -> str:
    """Table names no other test uses, so tests share a SQL server but not their data."""
    return f"t{uuid.uuid4().hex[:10]}_"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """In CI (CI=true) a skipped test is a failed test: a skip there hides a missing install."""
    outcome = yield
    report = outcome.get_result()
    in_ci = os.environ.get("CI", "").lower() == "true"
    if in_ci and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must run every test: {report.longrepr}"
