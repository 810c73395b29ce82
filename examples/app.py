"""The plain form of the example (no container): ``make run APP=plain`` serves it.

The same sign-up service as ``examples/di_app`` (what ``make run`` serves), wired by hand: one
``TaskManager`` built in code, ``Depends(task_manager.get_tasks)`` in the routes, ``TaskAdmin``
for the dashboard. The work itself is in ``examples/workloads.py``.

* ``POST /signup?email=...`` sends a welcome email through a flaky (simulated) mail server:
  the task retries with exponential backoff.
* ``POST /reports?size=...`` builds a CPU-heavy report in a worker process, away from the loop.
* ``POST /imports?rows=...`` imports contacts step by step, logging and reporting progress.

Tasks are recorded in ``var/tasks.db`` (SQLite) and ``var/tasks.log`` (JSON lines); tasks still
waiting when the server stops run again at the next start. The dashboard is at /tasks/dashboard.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query
from fastapi.responses import HTMLResponse

from fastapi_taskflow import ManagedBackgroundTasks, TaskAdmin, TaskManager, task_log

from . import workloads

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
mailer = workloads.Mailer("noreply@example.com", failure_rate=SMTP_FAILURE_RATE)

Tasks = Annotated[ManagedBackgroundTasks, Depends(task_manager.get_tasks)]


@task_manager.task(retries=4, delay=0.5, backoff=2.0, max_delay=5.0)
async def send_welcome_email(email: str) -> None:
    """Send a welcome email; the mail server fails now and then, and the task retries."""
    task_log("connecting to smtp.example.test", email=email)
    await mailer.send(email, "Welcome aboard!")
    task_log("welcome email accepted by the server", email=email)


build_report = task_manager.task(executor="process", retries=1)(workloads.build_report)
import_contacts = task_manager.task(retries=2, delay=1.0)(workloads.import_contacts)

app = FastAPI(title="fastapi-taskflow example (plain)")


@app.post("/signup", status_code=202)
async def signup(email: Annotated[str, Query(min_length=3)], tasks: Tasks) -> dict[str, Any]:
    """Sign a user up; the welcome email goes out after the response."""
    handle = tasks.add_task(send_welcome_email, email, tags={"kind": "email"})
    return workloads.accepted(handle, email=email)


@app.post("/reports", status_code=202)
async def create_report(
    tasks: Tasks, size: Annotated[int, Query(ge=10, le=5_000_000)] = 2_000_000
) -> dict[str, Any]:
    """Start a CPU-bound report in a worker process."""
    report_id = workloads.new_report_id()
    handle = tasks.add_task(build_report, report_id, size=size, tags={"kind": "report"})
    return workloads.accepted(handle, report_id=report_id)


@app.post("/imports", status_code=202)
async def create_import(
    tasks: Tasks, rows: Annotated[int, Query(ge=1, le=100_000)] = 500
) -> dict[str, Any]:
    """Start a contact import that shows live progress in the dashboard."""
    handle = tasks.add_task(import_contacts, rows, tags={"kind": "import"})
    return workloads.accepted(handle, rows=rows)


@app.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> str:
    """What to click."""
    return workloads.index_page()


# The task API and dashboard under /tasks; it also runs the manager's startup and shutdown.
TaskAdmin(app, task_manager)
