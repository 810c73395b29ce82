"""Real servers for the tests: a ``redis-server`` on a free port, stoppable and restartable.

The outage tests stop the server and start it again on the same port, so the URL a backend
holds stays valid across the outage.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager


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
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def find_redis_server() -> str | None:
    return shutil.which("redis-server")


def require_redis_server() -> str:
    """The redis-server binary. Missing: skipped locally, a failure in CI (a CI that skips
    Redis proves nothing)."""
    import pytest

    binary = find_redis_server()
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("redis-server not installed, and CI must run the Redis tests")
        pytest.skip("redis-server not installed")
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


@contextmanager
def redis_url_if_installed() -> Iterator[str | None]:
    """A fresh server's URL for the block, or None when redis-server is not installed."""
    binary = find_redis_server()
    if binary is None:
        yield None
        return
    with running_redis_server(binary) as server:
        yield server.url
