"""HTTP routes: sign up (enqueues the welcome mail) and follow the task."""

from __future__ import annotations

from typing import Any

from dependency_injector.wiring import Provide, inject
from fastapi import APIRouter, Depends
from pydantic import BaseModel

from fastapi_taskflow.di import TaskHandleDep, TasksDep

from .services import Mailer
from .tasks import send_welcome

router = APIRouter()


class Signup(BaseModel):
    email: str


@router.post("/signups", status_code=202)
async def signup(body: Signup, tasks: TasksDep) -> dict[str, str]:
    """Enqueue the welcome mail; it is sent after the response."""
    handle = tasks.add_task(send_welcome, body.email, tags={"kind": "welcome"})
    return {"task_id": handle.task_id}


@router.get("/signups/{task_id}")
def signup_status(handle: TaskHandleDep) -> dict[str, Any]:
    """Where the welcome mail is (a plain ``def`` route works the same)."""
    record = handle.record
    return {"task_id": handle.task_id, "status": record.status.value, "error": record.error}


@router.get("/mailer")
@inject
async def mailer_info(mailer: Mailer = Depends(Provide["mailer"])) -> dict[str, Any]:  # noqa: B008
    """A wired route: the app's own service through ``Provide``."""
    return {"sender": mailer.sender, "sent": len(mailer.outbox)}
