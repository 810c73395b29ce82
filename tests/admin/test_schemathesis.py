"""schemathesis over the OpenAPI of the task API: a bounded, reproducible run finds no 5xx.

Every operation in the app's ``/openapi.json`` is called with generated valid and invalid
input (schemathesis' examples, coverage and fuzzing phases), once on an open admin and once
behind ``auth=`` with a bearer token from ``/tasks/auth/login``. The store holds succeeded,
failed, running and pending (blocked behind a concurrency-1 queue) records, so ids and
statuses the API knows are reachable too.

Checks: ``not_a_server_error`` (no 5xx, ever) and that every 4xx is JSON ``{"detail": ...}``.
Response-schema conformance is not checked: the routes answer ``Response`` objects with no
declared model, and bad input is a 422 ``{"detail": "<message>"}`` rather than FastAPI's
documented list-of-errors shape.

The SSE streams (``/tasks/dashboard/stream``, ``/tasks/{task_id}/events``) never end and are
left out; the HTML pages and login are not in the schema. Bounded by hypothesis settings:
25 examples an operation, derandomized, no deadline.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import admin_jobs as jobs
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi as schemathesis_asgi

from fastapi_taskflow import QueueConfig, TaskAdmin, TaskManager

USER, PASSWORD = "admin", "pw"
SECRET = "schemathesis-test-secret-key-of-32+bytes"
QUEUES = ["default", "serial"]
NEVER_ENDING = ["/tasks/dashboard/stream", "/tasks/{task_id}/events"]


@dataclass
class Target:
    """One running app under test and the headers every request to it carries."""

    app: FastAPI
    ids: list[str]
    headers: dict[str, str] = field(default_factory=dict)


def build_app(auth: Any, ids: list[str] | None = None) -> FastAPI:
    """An app whose lifespan seeds succeeded, failed, running and pending (blocked) tasks;
    their ids go to ``ids``."""
    manager = TaskManager(drain_timeout=1.0, queues={"serial": QueueConfig(concurrency=1)})
    for func in (jobs.succeed, jobs.fail, jobs.log_and_fail, jobs.block):
        manager.task()(func)

    @asynccontextmanager
    async def seed(app: FastAPI) -> AsyncIterator[None]:
        # Innermost lifespan: the manager has started before this runs.
        gate = asyncio.Event()
        done = [
            manager.add_task(jobs.succeed, 1, tags={"team": "a"}),
            manager.add_task(jobs.fail, "boom"),
            manager.add_task(jobs.log_and_fail, "logged"),
        ]
        # The "serial" queue runs one at a time: the first blocks, the second waits behind it.
        blocked = [manager.add_task(jobs.block, gate, queue="serial") for _ in range(2)]
        if ids is not None:
            ids[:] = [str(h) for h in (*done, *blocked)]
        for handle in done:
            await handle.wait(timeout=5)
        try:
            yield
        finally:
            gate.set()

    app = FastAPI(lifespan=seed)
    TaskAdmin(app, manager, auth=auth, secret_key=SECRET if auth else None, include_in_schema=True)
    return app


def start(app: FastAPI, auth: bool) -> dict[str, str]:
    """Start the app's lifespan on schemathesis' ASGI event loop (its requests run there too);
    with auth, log in and return the bearer header."""
    with schemathesis_asgi.get_client(app) as client:
        if not auth:
            # The open admin's changes need proof of the same origin, like a script's header.
            return {"X-CSRF-Token": "schemathesis"}
        response = client.post("/tasks/auth/login", json={"username": USER, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


@pytest.fixture(params=["open", "auth"])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    """A fresh app for each operation, running until the test ends."""
    auth = request.param == "auth"
    ids: list[str] = []
    app = build_app((USER, PASSWORD) if auth else None, ids)
    try:
        headers = start(app, auth)
        assert len(ids) == 5
        yield Target(app, ids, headers)
    finally:
        schemathesis_asgi.shutdown_lifespans()


def detail_json_on_4xx(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every refusal is JSON with a ``detail``, never HTML or an empty body."""
    if 400 <= response.status_code < 500:
        body = json.loads(response.content)
        assert isinstance(body, dict), f"{response.status_code} body is not an object: {body!r}"
        assert "detail" in body, f"{response.status_code} body has no detail: {body!r}"
    return None


# The operations come from an app that is never started: the schema is the same for every app
# build_app() makes, and loading it from a dict starts nothing at import time.
schema = schemathesis.openapi.from_dict(build_app(None).openapi()).exclude(path=NEVER_ENDING)


def aim(case: Any, target: Target) -> None:
    """Point about half of the cases at things that exist: a seeded task id (succeeded, failed,
    running, pending), a real queue name. The choice is a checksum of the generated case, so
    a run is reproducible (``@schema.given`` would turn off schemathesis' coverage phase)."""
    pick = zlib.crc32(repr((case.path_parameters, case.query, case.body)).encode())
    if pick % 2:
        return
    pick //= 2
    params = case.path_parameters
    if "task_id" in params:
        params["task_id"] = target.ids[pick % len(target.ids)]
    if "name" in params:
        params["name"] = QUEUES[pick % len(QUEUES)]
    if isinstance(case.body, dict) and isinstance(case.body.get("task_ids"), list):
        case.body["task_ids"].append(target.ids[pick % len(target.ids)])


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    # One app per operation, shared by its examples on purpose (state builds up like in use).
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_task_api_never_answers_5xx(case: Any, target: Target) -> None:
    """Generated requests against every operation: 4xx JSON for bad input, never a 5xx."""
    aim(case, target)
    response = case.call_and_validate(
        app=target.app, headers=target.headers, checks=[not_a_server_error, detail_json_on_4xx]
    )
    # A valid bearer token (or an open admin) is never refused: the run reached the routes.
    assert response.status_code != 401, response.text


def test_schema_covers_the_task_api() -> None:
    """The run above reaches every JSON route of the task API (nothing silently filtered)."""
    paths = {result.ok().path for result in schema.get_all_operations()}
    assert {
        "/tasks",
        "/tasks/{task_id}",
        "/tasks/{task_id}/retry",
        "/tasks/{task_id}/cancel",
        "/tasks/bulk-retry",
        "/tasks/retry-failed",
        "/tasks/history",
        "/tasks/queues/{name}",
        "/tasks/metrics",
        "/tasks/metrics/prometheus",
        "/tasks/queues",
        "/tasks/audit",
        "/tasks/registry",
    } <= paths
    assert not paths & set(NEVER_ENDING)
