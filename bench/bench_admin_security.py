"""What TaskAdmin's hardening costs and saves.

1. Memory: a uvicorn process serving TaskAdmin (auth on, SQLite backend) is sent 256 MiB bodies
   without credentials (declared and chunked, to the login and to bulk-retry). Its peak RSS
   (VmHWM) before and after says how much of each body the server held. The answers' status
   codes are checked (413, or 401 for a small unparsed body).
2. Time: what identifying a request costs (``AdminAuth.identify``, run by every admin
   request): a static api token (a compare), a bearer session (signature, expiry, credential
   stamp, and "ended?" trusted for a second), and a session asking the backend every time;
   memory-only manager and SQLite backend, medians of ``--reps`` x ``--calls``.

``TASKFLOW_SRC=/path/to/src`` runs the server of part 1 from another checkout (to compare).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

MIB = 1024 * 1024
APP = """
from fastapi import FastAPI
from fastapi_taskflow import TaskAdmin, TaskManager
manager = TaskManager(snapshot_db={db!r})
app = FastAPI()
TaskAdmin(app, manager, auth=("admin", "pw"), secret_key="b" * 32)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def _chunks(total: int, size: int = MIB) -> Iterator[bytes]:
    block = b"a" * size
    for _ in range(total // size):
        yield block


def _send(url: str, total: int, declared: bool) -> str:
    headers = {"Content-Type": "application/json"}
    if declared:
        headers["Content-Length"] = str(total)
    try:
        response = httpx.post(url, content=_chunks(total), headers=headers, timeout=60)
    except httpx.HTTPError as exc:  # the server answered and closed while we still sent
        return f"closed ({type(exc).__name__})"
    return str(response.status_code)


@contextmanager
def _server(folder: Path) -> Iterator[tuple[int, str]]:
    """A fresh uvicorn process of the app: (pid, base URL)."""
    port = _free_port()
    paths = [str(folder)]
    if os.environ.get("TASKFLOW_SRC"):
        paths.insert(0, os.environ["TASKFLOW_SRC"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    command = [sys.executable, "-m", "uvicorn", "sec_app:app", "--port", str(port)]
    server = subprocess.Popen([*command, "--log-level", "warning"], env=env)
    base = f"http://127.0.0.1:{port}/tasks"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/auth/login", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield server.pid, base
    finally:
        server.terminate()
        server.wait(20)


def memory_part() -> None:
    folder = Path(tempfile.mkdtemp(prefix="taskflow-sec-bench-"))
    (folder / "sec_app.py").write_text(APP.format(db=str(folder / "tasks.db")))
    cases = [
        ("login, 256 MiB declared", "/auth/login", True),
        ("login, 256 MiB chunked", "/auth/login", False),
        ("bulk-retry, 256 MiB declared, no credentials", "/bulk-retry", True),
        ("bulk-retry, 256 MiB chunked, no credentials", "/bulk-retry", False),
    ]
    # One server per case: the peak RSS is a high-water mark, so a second body below the first
    # one's peak would show nothing.
    for name, path, declared in cases:
        with _server(folder) as (pid, base):
            before = _peak_rss_mib(pid)
            status = _send(base + path, 256 * MIB, declared)
            after = _peak_rss_mib(pid)
        print(f"{name:<48} answer {status:<22} peak RSS {before:.0f} -> {after:.0f} MiB")


async def _identify_us(admin: object, header: str, calls: int) -> float:
    """Mean microseconds of one ``identify`` (the auth of every request) for ``header``."""
    from starlette.requests import Request

    scope = {"type": "http", "method": "GET", "path": "/tasks", "query_string": b""}
    request = Request({**scope, "headers": [(b"authorization", header.encode())]})
    auth = admin.auth  # type: ignore[attr-defined]
    assert await auth.identify(request) is not None
    start = time.perf_counter()
    for _ in range(calls):
        await auth.identify(request)
    return (time.perf_counter() - start) / calls * 1e6


async def time_part(reps: int, calls: int) -> None:
    from asgi_lifespan import LifespanManager
    from fastapi import FastAPI

    from fastapi_taskflow import TaskAdmin, TaskManager

    for label, options in (("memory", {}), ("SQLite", {"snapshot_db": tempfile.mktemp()})):
        manager = TaskManager(**options)
        app = FastAPI()
        admin = TaskAdmin(
            app, manager, auth=("admin", "pw"), secret_key="b" * 32, api_tokens=["t" * 32]
        )
        async with LifespanManager(app):
            stamp = await admin.auth._stamp("admin") or ""
            token, _ = admin.auth.signer.issue("admin", stamp)
            ways = {"api token": "Bearer " + "t" * 32, "session": "Bearer " + token}
            samples: dict[str, list[float]] = {"api token": [], "session": [], "uncached": []}
            for _ in range(reps):  # interleaved, so drift hits every way alike
                for way, header in ways.items():
                    samples[way].append(await _identify_us(admin, header, calls))
                # Ask the backend on every call: a session never seen, trusted for no time.
                admin.auth.sessions.recheck_after = 0.0
                fresh, _ = admin.auth.signer.issue("admin", stamp)
                samples["uncached"].append(await _identify_us(admin, "Bearer " + fresh, calls))
                admin.auth.sessions.recheck_after = 1.0
        medians = {way: statistics.median(values) for way, values in samples.items()}
        print(
            f"{label:<7} identify: api token {medians['api token']:.1f} us, session "
            f"{medians['session']:.1f} us, session asking the backend each time "
            f"{medians['uncached']:.1f} us"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    if not args.skip_memory:
        memory_part()
    asyncio.run(time_part(args.reps, args.calls))


if __name__ == "__main__":
    main()
