"""What TaskAdmin's hardening costs and saves.

1. Memory: a uvicorn process serving TaskAdmin (auth on, SQLite backend) is sent 256 MiB bodies
   without credentials (declared and chunked, to the login and to bulk-retry). Its peak RSS
   (VmHWM) before and after says how much of each body the server held. The answers' status
   codes are checked (413, or 401 for a small unparsed body).
2. Time: the per-request cost of the session checks (ended? credentials unchanged?) on an
   authenticated ``GET /tasks/metrics``: a bearer session vs a static api token (no checks),
   memory-only manager and SQLite backend, medians of ``--reps`` x ``--requests``.

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


def memory_part() -> None:
    folder = Path(tempfile.mkdtemp(prefix="taskflow-sec-bench-"))
    (folder / "sec_app.py").write_text(APP.format(db=str(folder / "tasks.db")))
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
        start = _peak_rss_mib(server.pid)
        print(f"server peak RSS at start: {start:.0f} MiB")
        cases = [
            ("login, 256 MiB declared", "/auth/login", 256 * MIB, True),
            ("login, 256 MiB chunked", "/auth/login", 256 * MIB, False),
            ("bulk-retry, 256 MiB declared, no credentials", "/bulk-retry", 256 * MIB, True),
            ("bulk-retry, 256 MiB chunked, no credentials", "/bulk-retry", 256 * MIB, False),
        ]
        for name, path, total, declared in cases:
            before = _peak_rss_mib(server.pid)
            status = _send(base + path, total, declared)
            after = _peak_rss_mib(server.pid)
            print(f"{name:<48} answer {status:<22} peak RSS +{after - before:.0f} MiB")
    finally:
        server.terminate()
        server.wait(20)


async def _timed(client: httpx.AsyncClient, headers: dict[str, str], requests: int) -> float:
    start = time.perf_counter()
    for _ in range(requests):
        response = await client.get("/tasks/metrics", headers=headers)
        assert response.status_code == 200, response.text
    return (time.perf_counter() - start) / requests * 1e6


async def time_part(reps: int, requests: int) -> None:
    from asgi_lifespan import LifespanManager
    from fastapi import FastAPI

    from fastapi_taskflow import TaskAdmin, TaskManager

    for label, options in (("memory", {}), ("SQLite", {"snapshot_db": tempfile.mktemp()})):
        manager = TaskManager(**options)
        app = FastAPI()
        TaskAdmin(app, manager, auth=("admin", "pw"), secret_key="b" * 32, api_tokens=["t" * 32])
        async with LifespanManager(app) as lifespan:
            transport = httpx.ASGITransport(app=lifespan.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
                login = {"username": "admin", "password": "pw"}
                token = (await client.post("/tasks/auth/login", json=login)).json()
                session = {"Authorization": f"Bearer {token['access_token']}"}
                static = {"Authorization": "Bearer " + "t" * 32}
                await _timed(client, session, 50)  # warm-up
                samples: dict[str, list[float]] = {"session": [], "api token": []}
                for _ in range(reps):
                    samples["session"].append(await _timed(client, session, requests))
                    samples["api token"].append(await _timed(client, static, requests))
        session_us = statistics.median(samples["session"])
        static_us = statistics.median(samples["api token"])
        print(
            f"{label:<7} GET /tasks/metrics: bearer session {session_us:.0f} us, api token "
            f"{static_us:.0f} us, session checks {session_us - static_us:+.0f} us/request"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    if not args.skip_memory:
        memory_part()
    asyncio.run(time_part(args.reps, args.requests))


if __name__ == "__main__":
    main()
