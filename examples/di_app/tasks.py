"""The app's tasks, declared on a registry at import time, before any container exists.

``send_welcome`` takes the mailer from the container with ``@inject``: it is resolved when the
task runs (also after a restart requeues it), and never stored among the task's arguments.
``@tasks.task()`` goes *above* ``@inject``, so the registry holds the injecting function.
"""

from __future__ import annotations

from dependency_injector.wiring import Provide, inject

from fastapi_taskflow import TaskRegistry, task_log

from .services import Mailer

tasks = TaskRegistry()


@tasks.task(retries=2, delay=0.2, requeue_on_interrupt=True)
@inject
async def send_welcome(email: str, mailer: Mailer = Provide["mailer"]) -> None:
    await mailer.send(email, "Welcome aboard!")
    task_log(f"welcome mail sent to {email}")
