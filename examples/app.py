"""The example app that ``make run`` serves: a small sign-up service with background work.

* ``POST /signup?email=...`` stores nothing real, but sends a welcome email in the background
  through a flaky (simulated) SMTP server: the task retries with exponential backoff.
* ``POST /reports?size=...`` builds a CPU-heavy report in a worker process, away from the loop.
* ``POST /imports?rows=...`` imports contacts step by step, logging and reporting progress.

Tasks are recorded in ``var/tasks.db`` (SQLite) and ``var/tasks.log`` (JSON lines); tasks still
waiting when the server stops run again at the next start. The dashboard is at /tasks/dashboard.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query
from fastapi.responses import HTMLResponse

from fastapi_taskflow import (
    ManagedBackgroundTasks,
    TaskAdmin,
    TaskManager,
    set_progress,
    task_log,
)

# Everything the app writes lives under var/ (ignored by git). TASKFLOW_VAR_DIR moves it.
VAR_DIR = Path(os.environ.get("TASKFLOW_VAR_DIR", Path(__file__).resolve().parent.parent / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)

# How often the pretend SMTP server refuses a message (0.0 to 1.0).
SMTP_FAILURE_RATE = float(os.environ.get("EXAMPLE_SMTP_FAILURE_RATE", "0.4"))

task_manager = TaskManager(
    snapshot_db=str(VAR_DIR / "tasks.db"),
    requeue_pending=True,
    log_file=str(VAR_DIR / "tasks.log"),
    log_lifecycle=True,
    max_concurrent_tasks=20,
    max_sync_threads=4,
    max_process_workers=2,
)

Tasks = Annotated[ManagedBackgroundTasks, Depends(task_manager.get_tasks)]


class SmtpUnavailable(ConnectionError):
    """The simulated mail server refused the connection."""


@task_manager.task(retries=4, delay=0.5, backoff=2.0, max_delay=5.0)
async def send_welcome_email(email: str) -> None:
    """Send a welcome email; the mail server fails now and then, and the task retries."""
    task_log("connecting to smtp.example.test", email=email)
    await asyncio.sleep(0.2)  # network round trip
    if random.random() < SMTP_FAILURE_RATE:
        raise SmtpUnavailable("421 smtp.example.test: service not available, try again later")
    task_log("welcome email accepted by the server", email=email)


@task_manager.task(executor="process", retries=1)
def build_report(report_id: int, size: int = 200_000) -> dict[str, Any]:
    """Count primes below ``size`` and checksum them: CPU work that would stall the event loop."""
    task_log("sieving primes", report_id=report_id, size=size)
    sieve = bytearray([1]) * size
    sieve[:2] = b"\x00\x00"
    for n in range(2, int(size**0.5) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytes(len(range(n * n, size, n)))
    primes = [n for n in range(size) if sieve[n]]
    digest = hashlib.sha256(",".join(map(str, primes)).encode()).hexdigest()
    task_log("report ready", report_id=report_id, primes=len(primes))
    return {"report_id": report_id, "primes": len(primes), "sha256": digest, "pid": os.getpid()}


@task_manager.task(retries=2, delay=1.0)
async def import_contacts(rows: int, batch: int = 25) -> None:
    """Import contacts in batches, logging each one and reporting progress as it goes."""
    done = 0
    while done < rows:
        step = min(batch, rows - done)
        await asyncio.sleep(0.1)  # a database round trip per batch
        done += step
        set_progress(done / rows, f"{done} of {rows} contacts")
        task_log(f"imported batch of {step}", level="debug", done=done)
    task_log(f"imported {rows} contacts")


app = FastAPI(title="fastapi-taskflow example")


def _accepted(task_id: str, **extra: Any) -> dict[str, Any]:
    return {"task_id": task_id, "status_url": f"/tasks/{task_id}", **extra}


@app.post("/signup", status_code=202)
async def signup(email: Annotated[str, Query(min_length=3)], tasks: Tasks) -> dict[str, Any]:
    """Sign a user up; the welcome email goes out after the response."""
    handle = tasks.add_task(send_welcome_email, email, tags={"kind": "email"})
    return _accepted(handle, email=email)


@app.post("/reports", status_code=202)
async def create_report(
    tasks: Tasks, size: Annotated[int, Query(ge=10, le=5_000_000)] = 2_000_000
) -> dict[str, Any]:
    """Start a CPU-bound report in a worker process."""
    report_id = random.randint(1000, 9999)
    handle = tasks.add_task(build_report, report_id, size=size, tags={"kind": "report"})
    return _accepted(handle, report_id=report_id)


@app.post("/imports", status_code=202)
async def create_import(
    tasks: Tasks, rows: Annotated[int, Query(ge=1, le=100_000)] = 500
) -> dict[str, Any]:
    """Start a contact import that shows live progress in the dashboard."""
    handle = tasks.add_task(import_contacts, rows, tags={"kind": "import"})
    return _accepted(handle, rows=rows)


INDEX_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fastapi-taskflow example</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:42rem;margin:3rem auto;padding:0 1rem}
form{display:inline}button{margin:.25rem .5rem .25rem 0;padding:.4rem .8rem}</style></head>
<body><h1>fastapi-taskflow example</h1>
<p>1. Open the <a href="/tasks/dashboard" target="_blank">task dashboard</a> in another tab.</p>
<p>2. Start some work (each button answers with the new task's id):</p>
<form method="post" action="/signup?email=ada%40example.com" target="_blank">
<button>Sign up ada@example.com (welcome email, flaky SMTP, retries)</button></form><br>
<form method="post" action="/reports?size=2000000" target="_blank">
<button>Build a report (CPU-bound, in a worker process)</button></form><br>
<form method="post" action="/imports?rows=500" target="_blank">
<button>Import 500 contacts (logs and live progress)</button></form>
<p>3. Watch them in the dashboard; retry a failed email from there.</p>
<p>Stop the server with Ctrl+C while tasks wait: they run again at the next <code>make run</code>.
Task history is kept in <code>var/tasks.db</code>, task events in <code>var/tasks.log</code>.
The API is documented at <a href="/docs">/docs</a>.</p>
</body></html>
"""


@app.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> str:
    """What to click."""
    return INDEX_PAGE


# The task API and dashboard under /tasks; it also runs the manager's startup and shutdown.
TaskAdmin(app, task_manager)
