"""uvicorn app processes for the multi-process tests: start, wait until they answer, kill, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from servers import free_port

HERE = Path(__file__).parent


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until true; return the seconds it took; fail after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not reached within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - start


class AppProcess:
    """One uvicorn process (or a master with ``workers``) serving ``app`` from this folder."""

    def __init__(
        self, env: dict[str, str], app: str = "durable_app:app", workers: int | None = None
    ) -> None:
        self.env = {**os.environ, **env, "PYTHONPATH": str(HERE)}
        self.app = app
        self.workers = workers
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AppProcess:
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            self.app,
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            "--app-dir",
            str(HERE),
        ]
        if self.workers is not None:
            command += ["--workers", str(self.workers)]
        self.process = subprocess.Popen(command, env=self.env)
        wait_for(self._answers, 30, "the app answers /health")
        return self

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the app exited with {self.process.returncode}")
        try:
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), killed if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
