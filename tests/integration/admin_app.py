"""An app with TaskAdmin signing in two users, for the several-instances admin tests.

TF_REDIS  ``<url>|<prefix>`` of the Redis backend every instance shares
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from fastapi_taskflow import TaskAdmin, TaskManager
from fastapi_taskflow.backends.redis import RedisBackend

url, _, prefix = os.environ["TF_REDIS"].partition("|")
task_manager = TaskManager(snapshot_backend=RedisBackend(url, prefix=prefix), drain_timeout=1.0)
app = FastAPI()
TaskAdmin(
    app,
    task_manager,
    auth=[("admin", "pw"), ("ops", "pw2")],
    secret_key="shared-by-every-instance-" * 2,
)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"instance": task_manager.instance_id}
