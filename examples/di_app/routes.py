"""HTTP routes: start the three kinds of work, follow a task, and one wired service."""

from __future__ import annotations

from typing import Annotated, Any

from dependency_injector.wiring import Provide, inject
from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse

from fastapi_taskflow import TaskHandle
from fastapi_taskflow.di import TaskHandleDep, TasksDep, task_handle_from

from .. import workloads
from ..workloads import Mailer
from .tasks import build_report, import_contacts, send_welcome_email

router = APIRouter()

#: A handle from a path parameter that is not called ``task_id``.
JobHandle = Annotated[TaskHandle, Depends(task_handle_from("job_id"))]


@router.post("/signup", status_code=202)
async def signup(email: Annotated[str, Query(min_length=3)], tasks: TasksDep) -> dict[str, Any]:
    """Sign a user up; the welcome email goes out after the response."""
    handle = tasks.add_task(send_welcome_email, email, tags={"kind": "email"})
    return workloads.accepted(handle, email=email)


@router.post("/reports", status_code=202)
async def create_report(
    tasks: TasksDep, size: Annotated[int, Query(ge=10, le=5_000_000)] = 2_000_000
) -> dict[str, Any]:
    """Start a CPU-bound report in a worker process."""
    report_id = workloads.new_report_id()
    handle = tasks.add_task(build_report, report_id, size=size, tags={"kind": "report"})
    return workloads.accepted(handle, report_id=report_id)


@router.post("/imports", status_code=202)
async def create_import(
    tasks: TasksDep, rows: Annotated[int, Query(ge=1, le=100_000)] = 500
) -> dict[str, Any]:
    """Start a contact import that shows live progress in the dashboard."""
    handle = tasks.add_task(import_contacts, rows, tags={"kind": "import"})
    return workloads.accepted(handle, rows=rows)


@router.get("/signups/{task_id}")
def signup_status(handle: TaskHandleDep) -> dict[str, Any]:
    """Where a task is (a plain ``def`` route works the same); unknown ids answer 404."""
    record = handle.record
    return {"task_id": handle.task_id, "status": record.status.value, "error": record.error}


@router.get("/jobs/{job_id}")
async def job(handle: JobHandle) -> dict[str, Any]:
    """The same for a path parameter of another name."""
    return {"task_id": handle.task_id, "status": handle.status.value}


@router.get("/mailer")
@inject
async def mailer_info(mailer: Mailer = Depends(Provide["mailer"])) -> dict[str, Any]:  # noqa: B008
    """A wired route: the app's own service through ``Provide``."""
    return {"sender": mailer.sender, "sent": len(mailer.outbox)}


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> str:
    """What to click."""
    return workloads.index_page()
