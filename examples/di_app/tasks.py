"""The app's tasks, declared on a registry at import time, before any container exists.

``send_welcome_email`` takes the mailer from the container with ``@inject``: it is resolved each
time the task runs (a retry, a requeue after a restart) and never stored among the task's
arguments. ``@tasks.task()`` goes *above* ``@inject``, so the registry holds the injecting
function (docs/dependency-injection.md says which rules are required, which recommended).
The report runs in a worker process, which has no container: it takes plain data only.
"""

from __future__ import annotations

from dependency_injector.wiring import Provide, inject

from fastapi_taskflow import TaskRegistry, task_log

from .. import workloads
from ..workloads import Mailer

tasks = TaskRegistry()


@tasks.task(retries=4, delay=0.5, backoff=2.0, max_delay=5.0, requeue_on_interrupt=True)
@inject
async def send_welcome_email(email: str, mailer: Mailer = Provide["mailer"]) -> None:
    """Send a welcome email; the mail server fails now and then, and the task retries."""
    task_log("connecting to the mail server", email=email)
    await mailer.send(email, "Welcome aboard!")
    task_log("welcome email accepted by the server", email=email)


build_report = tasks.task(executor="process", retries=1)(workloads.build_report)
import_contacts = tasks.task(retries=2, delay=1.0)(workloads.import_contacts)
