"""Real servers for the tests, each on a free port of 127.0.0.1.

``redis-server`` is stoppable and restartable: the outage tests stop it and start it again on
the same port, so the URL a backend holds stays valid across the outage. PostgreSQL and MariaDB
run from a throwaway data directory that is removed when they stop.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest

# The backends a test can run on, as parameters carrying the marker of the server they need.
REDIS = pytest.param("redis", marks=pytest.mark.redis)
POSTGRES = pytest.param("postgres", marks=pytest.mark.postgres)
MYSQL = pytest.param("mysql", marks=pytest.mark.mysql)
SERVER_KINDS = [REDIS, POSTGRES, MYSQL]
#: A real SQLite file, then every server.
PERSISTENT_KINDS = ["sqlite", *SERVER_KINDS]


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_answers(port: int, timeout: float = 0.5) -> bool:
    """True when a Redis server on ``port`` answers PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` child process: in memory only (no RDB, no AOF), bound to localhost."""

    def __init__(self, binary: str, port: int | None = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (no-op when running) and wait until it answers PING."""
        if self.running:
            return
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", *self.options()]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while not redis_answers(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING")
            time.sleep(0.02)

    def options(self) -> list[str]:
        """Persistence options: none, the data lives only as long as the process."""
        return ["--save", "", "--appendonly", "no"]

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server and wait for it; kill it if it does not go."""
        process, self.process = self.process, None
        stop_process(process, signal.SIGTERM, timeout)


def stop_process(
    process: subprocess.Popen[bytes] | None, sig: signal.Signals, timeout: float
) -> None:
    """Send ``sig`` and wait for the process; kill it if it has not gone after ``timeout``."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def find_redis_server() -> str | None:
    return shutil.which("redis-server")


def missing(what: str) -> NoReturn:
    """A server binary is missing: skipped locally, a failure in CI (a CI that skips a server's
    tests proves nothing about it)."""
    import pytest

    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} not installed, and CI must run its tests")
    pytest.skip(f"{what} not installed")


def require_redis_server() -> str:
    """The redis-server binary, or :func:`missing`."""
    binary = find_redis_server()
    if binary is None:
        missing("redis-server")
    return binary


@contextmanager
def running_redis_server(binary: str) -> Iterator[RedisServer]:
    """A running server for the duration of the block, terminated after it."""
    server = RedisServer(binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ---- PostgreSQL and MariaDB -------------------------------------------------------------------

POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
MARIADBD = Path("/usr/sbin/mariadbd")
MARIADB_INSTALL_DB = Path("/usr/bin/mariadb-install-db")
NOBODY = 65534


def find_postgres() -> Path | None:
    """The directory holding initdb and postgres, or None."""
    found = [POSTGRES_BIN, *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]
    for directory in found:
        if (directory / "initdb").exists() and (directory / "postgres").exists():
            return directory
    return None


def require_postgres() -> Path:
    """The directory of initdb and postgres, or :func:`missing`."""
    found = find_postgres()
    if found is None:
        missing("PostgreSQL (initdb, postgres)")
    return found


def require_mariadb() -> tuple[Path, Path]:
    """(mariadbd, mariadb-install-db), or :func:`missing`."""
    found = find_mariadb()
    if found is None:
        missing("MariaDB (mariadbd, mariadb-install-db)")
    return found


def find_mariadb() -> tuple[Path, Path] | None:
    """(mariadbd, mariadb-install-db), or None."""
    server = MARIADBD if MARIADBD.exists() else shutil.which("mariadbd")
    install = (
        MARIADB_INSTALL_DB if MARIADB_INSTALL_DB.exists() else shutil.which("mariadb-install-db")
    )
    return (Path(server), Path(install)) if server and install else None


def _wait_for_line(log: Path, text: str, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while text not in (log.read_text(errors="replace") if log.exists() else ""):
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready within 60 s:\n{log.read_text()}")
        time.sleep(0.05)


class PostgresServer:
    """A throwaway PostgreSQL cluster: initdb into a temporary directory, one ``postgres``
    on a free port of 127.0.0.1, its unix socket in that directory, no fsync.

    PostgreSQL refuses to run as root, so as root (CI) the cluster belongs to ``nobody``.
    """

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="taskflow-pg-"))
        self.process: subprocess.Popen[bytes] | None = None
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            os.chown(self.directory, NOBODY, NOBODY)
            self._as = {"user": NOBODY, "group": NOBODY, "extra_groups": []}

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        data = self.directory / "data"
        subprocess.run(
            [str(self.bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
             "-E", "UTF8", "--locale=C", "--no-sync"],
            check=True, capture_output=True, cwd=self.directory, **self._as,
        )  # fmt: skip
        log = self.directory / "postgres.log"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [str(self.bin_dir / "postgres"), "-D", str(data), "-p", str(self.port),
                 "-h", "127.0.0.1", "-k", str(self.directory), "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=300"],
                stdout=out, stderr=subprocess.STDOUT, cwd=self.directory, **self._as,
            )  # fmt: skip
        _wait_for_line(log, "ready to accept connections", self.process, "postgres")

    def stop(self) -> None:
        process, self.process = self.process, None
        # SIGINT is PostgreSQL's fast shutdown: disconnect the clients, stop.
        stop_process(process, signal.SIGINT, 20)
        shutil.rmtree(self.directory, ignore_errors=True)


# Scratch data only: no doublewrite, no flushing, a small redo log. mariadb-install-db gets the
# same ones, so it writes 35 MB instead of 115 MB and mariadbd starts on the log it finds.
MARIADB_SCRATCH = [
    "--innodb-log-file-size=16M",
    "--innodb-doublewrite=0",
    "--innodb-flush-log-at-trx-commit=0",
    "--innodb-flush-method=nosync",
]


class MariaDBServer:
    """A throwaway MariaDB: mariadb-install-db into a temporary directory, one ``mariadbd`` on
    a free port of 127.0.0.1 and a socket in that directory, and a ``taskflow`` user with a
    password (so URLs in the tests carry one, as real ones do)."""

    user = "taskflow"
    password = "s3cret-pw"

    def __init__(self, server: Path, install_db: Path) -> None:
        self.server = server
        self.install_db = install_db
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="taskflow-mariadb-"))
        self.socket = self.directory / "mariadb.sock"
        self.process: subprocess.Popen[bytes] | None = None

    def url_for(self, database: str) -> str:
        return f"mysql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        data = self.directory / "data"
        as_root = ["--user=root"] if os.geteuid() == 0 else []
        subprocess.run(
            [str(self.install_db), "--no-defaults", f"--datadir={data}", *as_root,
             "--auth-root-authentication-method=normal", "--skip-test-db", *MARIADB_SCRATCH],
            check=True, capture_output=True,
        )  # fmt: skip
        log = self.directory / "mariadb.log"
        self.process = subprocess.Popen(
            [str(self.server), "--no-defaults", f"--datadir={data}", *as_root,
             f"--port={self.port}", "--bind-address=127.0.0.1", "--skip-networking=0",
             f"--socket={self.socket}", f"--pid-file={self.directory / 'mariadb.pid'}",
             f"--log-error={log}", "--skip-log-bin", *MARIADB_SCRATCH,
             "--innodb-file-per-table=0", "--innodb-buffer-pool-size=64M",
             "--max-connections=300"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_for_line(log, "ready for connections", self.process, "mariadbd")
        self.sql(
            f"CREATE USER '{self.user}'@'%' IDENTIFIED BY '{self.password}';"
            f" GRANT ALL ON *.* TO '{self.user}'@'%';"
        )

    def sql(self, statements: str) -> None:
        """Run statements as root over the socket (with the mariadb client beside the server)."""
        client = shutil.which("mariadb") or shutil.which("mysql")
        if client is None:
            raise RuntimeError("the mariadb client is missing (apt-get install mariadb-client)")
        subprocess.run(
            [client, "--no-defaults", f"--socket={self.socket}", "-uroot", "-e", statements],
            check=True, capture_output=True,
        )  # fmt: skip

    def create_database(self, name: str) -> str:
        self.sql(f"CREATE DATABASE `{name}`")
        return self.url_for(name)

    def stop(self) -> None:
        process, self.process = self.process, None
        stop_process(process, signal.SIGTERM, 30)
        shutil.rmtree(self.directory, ignore_errors=True)


@contextmanager
def running(server: PostgresServer | MariaDBServer) -> Iterator[Any]:
    """``server`` started for the block, stopped and its directory removed after it."""
    try:
        server.start()
        yield server
    finally:
        server.stop()


@contextmanager
def redis_url_if_installed() -> Iterator[str | None]:
    """A fresh server's URL for the block, or None when redis-server is not installed."""
    binary = find_redis_server()
    if binary is None:
        yield None
        return
    with running_redis_server(binary) as server:
        yield server.url
