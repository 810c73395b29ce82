"""The task API: every endpoint, its JSON shapes, and every kind of bad input."""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import UTC, datetime, timedelta

import admin_jobs as jobs
import pytest
from cryptography.fernet import Fernet
from fastapi import BackgroundTasks, FastAPI

from fastapi_taskflow import MemoryBackend, TaskAdmin, TaskManager
from fastapi_taskflow.errors import ConfigurationError


async def _finished(env, count: int = 3) -> list[str]:
    ids = [env.add(jobs.succeed, i) for i in range(count)]
    await env.manager.join(timeout=5)
    return ids


# ---- listing ---------------------------------------------------------------------------------


async def test_list_is_a_plain_list_newest_first(env):
    """GET /tasks answers a plain JSON list (the shape old clients read), newest first."""
    ids = await _finished(env, 3)
    response = await env.client.get("/tasks")
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body, list)
    assert [t["task_id"] for t in body] == list(reversed(ids))
    assert {"task_id", "func_name", "status", "created_at", "duration", "tags"} <= set(body[0])
    assert "args" not in body[0]
    assert "X-Next-Cursor" not in response.headers


async def test_list_pages_with_cursor_and_link_header(env):
    """Pages follow X-Next-Cursor / Link until every task was seen exactly once."""
    ids = await _finished(env, 23)
    seen, url, pages = [], "/tasks?limit=10", 0
    while url:
        response = await env.client.get(url)
        assert response.status_code == 200
        seen += [t["task_id"] for t in response.json()]
        pages += 1
        cursor = response.headers.get("X-Next-Cursor")
        if cursor:
            assert 'rel="next"' in response.headers["Link"]
        url = f"/tasks?limit=10&cursor={cursor}" if cursor else None
    assert pages == 3
    assert seen == list(reversed(ids))


async def test_list_default_page_is_fifty(env):
    """Without limit the list holds at most 50 tasks."""
    await _finished(env, 55)
    response = await env.client.get("/tasks")
    assert len(response.json()) == 50
    assert response.headers["X-Next-Cursor"]


async def test_list_filters(env):
    """status, func_name, queue, tag, q and since/until narrow the list."""
    ok = env.add(jobs.succeed, 1, tags={"team": "a"})
    bad = env.add(jobs.fail, "needle in error")
    await env.manager.join(timeout=5)
    get = env.client.get

    async def ids(**params):
        response = await get("/tasks", params=params)
        assert response.status_code == 200, response.text
        return {t["task_id"] for t in response.json()}

    assert await ids(status="failed") == {bad}
    assert await ids(func_name="admin_jobs:succeed") == {ok}
    assert await ids(queue="default") == {ok, bad}
    assert await ids(queue="other") == set()
    assert await ids(tag="team:a") == {ok}
    assert await ids(q="NEEDLE") == {bad}
    assert await ids(q=bad[:8]) == {bad}
    assert await ids(since="1h") == {ok, bad}
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert await ids(since=future) == set()
    assert await ids(until="2000-01-01T00:00:00") == set()


@pytest.mark.parametrize(
    "query",
    [
        "status=bogus",
        "limit=0",
        "limit=501",
        "limit=abc",
        "cursor=not-a-cursor",
        "tag=novalue",
        "tag=:x",
        "since=yesterday",
        "until=13h30",
        "since=1h&until=2h",
        "since=0h",
        "since=99999999d",
    ],
)
async def test_list_bad_input_is_422(env, query):
    """Bad list parameters answer 422 with a detail, never a 500."""
    response = await env.client.get(f"/tasks?{query}")
    assert response.status_code == 422
    assert response.json()["detail"]


# ---- one task --------------------------------------------------------------------------------


async def test_get_task_and_unknown_404(env):
    """GET /tasks/{id} returns the record; an unknown id is a JSON 404."""
    [task_id] = await _finished(env, 1)
    response = await env.client.get(f"/tasks/{task_id}")
    assert response.status_code == 200
    assert response.json()["status"] == "success"
    missing = await env.client.get("/tasks/no-such-task")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Task not found"}


async def test_args_shown_only_with_display_func_args(make_env):
    """Arguments appear only when display_func_args is on."""
    async with make_env(display_func_args=True) as env:
        task_id = env.add(jobs.succeed, {"secret": 1})
        await env.manager.join(timeout=5)
        body = (await env.client.get(f"/tasks/{task_id}")).json()
        assert body["args"] == [{"secret": 1}]


async def test_encrypted_args_never_shown(make_env):
    """An encrypted task shows no arguments even with display_func_args."""
    options = {"encrypt_args_key": Fernet.generate_key()}
    async with make_env(manager_options=options, display_func_args=True) as env:
        task_id = env.add(jobs.succeed, "card-number")
        await env.manager.join(timeout=5)
        body = (await env.client.get(f"/tasks/{task_id}")).json()
        listed = (await env.client.get("/tasks")).json()[0]
        assert body["encrypted"] is True
        assert "args" not in body
        assert "args" not in listed
        assert "card-number" not in (await env.client.get("/tasks")).text


# ---- metrics ---------------------------------------------------------------------------------


async def test_metrics_from_counters(env):
    """Metrics count by status and carry percentiles, a histogram and throughput samples."""
    await _finished(env, 3)
    env.add(jobs.fail)
    await env.manager.join(timeout=5)
    metrics = (await env.client.get("/tasks/metrics")).json()
    assert metrics["total"] == 4
    assert metrics["success"] == 3
    assert metrics["failed"] == 1
    assert metrics["success_rate"] == pytest.approx(0.75)
    assert metrics["duration_p50"] is not None
    assert sum(count for _, count in metrics["duration_histogram"]) == 4
    assert metrics["throughput"][-1][1:] == [3, 1]
    assert "default" in metrics["queues"]


async def test_prometheus_text(env):
    """The Prometheus endpoint speaks the text format."""
    await _finished(env, 2)
    response = await env.client.get("/tasks/metrics/prometheus")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'taskflow_tasks{status="success"} 2.0' in response.text
    assert "taskflow_task_duration_seconds_bucket" in response.text


async def test_prometheus_missing_dependency_is_actionable(env, monkeypatch):
    """Without prometheus-client the endpoint says what to install (501, JSON)."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    response = await env.client.get("/tasks/metrics/prometheus")
    assert response.status_code == 501
    assert "fastapi-taskflow[metrics]" in response.json()["detail"]


# ---- retry and cancel ------------------------------------------------------------------------


async def test_retry_failed_task(env):
    """POST /{id}/retry runs a failed task again and answers the new record."""
    failed = env.add(jobs.fail, "once")
    await env.manager.join(timeout=5)
    response = await env.client.post(f"/tasks/{failed}/retry")
    assert response.status_code == 200
    body = response.json()
    assert body["task_id"] != failed
    assert body["task"]["func_name"] == "admin_jobs:fail"
    await env.manager.join(timeout=5)
    audit = (await env.client.get("/tasks/audit")).json()
    assert audit[0]["action"] == "retry"
    assert audit[0]["task_id"] == failed
    assert audit[0]["detail"]["result"] == "ok"
    assert audit[0]["actor"] == "anonymous"


async def test_retry_refusals(env):
    """Retrying an unknown task is 404; a successful one is 400; both leave no new task."""
    [done] = await _finished(env, 1)
    assert (await env.client.post("/tasks/nope/retry")).status_code == 404
    response = await env.client.post(f"/tasks/{done}/retry")
    assert response.status_code == 400
    assert "success" in response.json()["detail"]
    assert env.manager.metrics()["total"] == 1


async def test_cancel_running_task(env):
    """POST /{id}/cancel cancels a running task; a finished one answers 400."""
    started = asyncio.Event()
    task_id = env.add(jobs.block, None, started)
    await asyncio.wait_for(started.wait(), 5)
    response = await env.client.post(f"/tasks/{task_id}/cancel")
    assert response.status_code == 200
    await env.manager.join(timeout=5)
    assert env.manager.store.get(task_id).status.value == "cancelled"
    again = await env.client.post(f"/tasks/{task_id}/cancel")
    assert again.status_code == 400
    assert (await env.client.post("/tasks/nope/cancel")).status_code == 404


# ---- bulk ------------------------------------------------------------------------------------


async def test_bulk_retry_reports_each_task(env):
    """bulk-retry dispatches retryable tasks and reports the others with a reason."""
    failed = env.add(jobs.fail)
    [done] = await _finished(env, 1)
    response = await env.client.post(
        "/tasks/bulk-retry", json={"task_ids": [failed, done, "ghost", failed]}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["dispatched"] == 1
    assert body["skipped"] == 2
    assert body["results"][0]["original_task_id"] == failed
    assert {e["task_id"] for e in body["errors"]} == {done, "ghost"}
    await env.manager.join(timeout=5)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"task_ids": []},
        {"task_ids": "abc"},
        {"task_ids": [1]},
        {"task_ids": [""]},
        {"task_ids": ["a"], "extra": 1},
        {"task_ids": ["x"] * 1001},
        [],
        "text",
        None,
    ],
)
async def test_bulk_retry_bad_body_is_422(env, body):
    """A malformed bulk-retry body is a 422 and dispatches nothing."""
    response = await env.client.post("/tasks/bulk-retry", json=body)
    assert response.status_code == 422
    assert response.json()["detail"]
    assert env.manager.metrics()["total"] == 0


async def test_bulk_retry_needs_json(env):
    """A form-encoded bulk-retry body is refused with 422."""
    response = await env.client.post("/tasks/bulk-retry", data={"task_ids": "x"})
    assert response.status_code == 422


async def test_retry_failed_window(env):
    """retry-failed replays failed tasks of the window, filtered by func_name."""
    env.add(jobs.fail)
    env.add(jobs.log_and_fail, "x")
    await env.manager.join(timeout=5)
    response = await env.client.post("/tasks/retry-failed?since=1h&func_name=admin_jobs:fail")
    assert response.status_code == 200
    assert response.json()["dispatched"] == 1
    await env.manager.join(timeout=5)
    everything = await env.client.post("/tasks/retry-failed?since=all")
    assert everything.json()["dispatched"] == 2
    await env.manager.join(timeout=5)


@pytest.mark.parametrize("since", ["bogus", "6", "-1h", "0d", "1y"])
async def test_retry_failed_bad_window_is_422(env, since):
    """A window that is not <N>m/h/d or all is a 422."""
    response = await env.client.post(f"/tasks/retry-failed?since={since}")
    assert response.status_code == 422


async def test_retry_failed_window_before_year_one_is_422(env):
    """Regression (schemathesis run): since=999999d reached back before year 1 and the
    OverflowError was a 500; it is a 422 naming the window and nothing is retried."""
    env.add(jobs.fail)
    await env.manager.join(timeout=5)
    response = await env.client.post("/tasks/retry-failed?since=999999d")
    assert response.status_code == 422
    assert "999999d" in response.json()["detail"]
    assert [t["status"] for t in (await env.client.get("/tasks")).json()] == ["failed"]


# ---- history ---------------------------------------------------------------------------------


async def test_delete_history_all_keeps_active(env):
    """DELETE /history?all=true drops finished tasks, keeps running ones, resets counters."""
    await _finished(env, 3)
    running = env.add(jobs.block)
    response = await env.client.delete("/tasks/history?all=true")
    assert response.status_code == 200
    assert response.json()["deleted"] == 3
    listed = (await env.client.get("/tasks")).json()
    assert [t["task_id"] for t in listed] == [running]
    assert env.manager.metrics()["success"] == 0
    env.manager.cancel(running)
    await env.manager.join(timeout=5)


async def test_delete_history_by_window(env):
    """value+unit and older_than delete only tasks that ended before the window."""
    await _finished(env, 2)
    assert (await env.client.delete("/tasks/history?value=1&unit=hour")).json()["deleted"] == 0
    assert (await env.client.delete("/tasks/history?older_than=1d")).json()["deleted"] == 0
    assert len((await env.client.get("/tasks")).json()) == 2


async def test_delete_history_with_backend(make_env):
    """History deletion reaches the backend and the counters follow."""
    async with make_env(manager_options={"snapshot_backend": MemoryBackend()}) as env:
        await _finished(env, 2)
        await env.manager.persister.flush_history()
        response = await env.client.delete("/tasks/history?all=true")
        assert response.json()["backend"] == 2
        assert (await env.client.get("/tasks")).json() == []
        assert env.manager.metrics()["total"] == 0


@pytest.mark.parametrize(
    "query",
    [
        "",
        "value=1",
        "unit=day",
        "value=0&unit=day",
        "value=1&unit=week",
        "older_than=soon",
        "all=true&older_than=1h",
        "value=1&unit=day&all=true",
        "all=maybe",
    ],
)
async def test_delete_history_bad_input_is_422(env, query):
    """DELETE /history needs exactly one valid way of saying what to delete."""
    await _finished(env, 1)
    response = await env.client.delete(f"/tasks/history?{query}")
    assert response.status_code == 422
    assert len((await env.client.get("/tasks")).json()) == 1


async def test_delete_history_window_before_year_one_is_422(env):
    """Regression (schemathesis run): older_than=999999d overflowed the date (a 500); it is a
    422 and nothing is deleted."""
    await _finished(env, 1)
    response = await env.client.delete("/tasks/history?older_than=999999d")
    assert response.status_code == 422
    assert "older_than" in response.json()["detail"]
    assert len((await env.client.get("/tasks")).json()) == 1


# ---- queues ----------------------------------------------------------------------------------


async def test_queues_and_live_config(env):
    """GET /queues lists queues; PATCH changes caps live and is audited."""
    queues = (await env.client.get("/tasks/queues")).json()
    assert queues["default"]["concurrency"] is None
    response = await env.client.patch("/tasks/queues/default", json={"concurrency": 2})
    assert response.status_code == 200
    assert response.json()["concurrency"] == 2
    cleared = await env.client.patch("/tasks/queues/default", json={"concurrency": None})
    assert cleared.json()["concurrency"] is None
    audit = (await env.client.get("/tasks/audit")).json()
    assert audit[0]["action"] == "queue_config"
    assert audit[0]["task_id"] == "default"


@pytest.mark.parametrize(
    "body",
    [
        {"concurrency": 0},
        {"concurrency": -1},
        {"concurrency": "3"},
        {"concurrency": True},
        {"concurrency": 1.5},
        {"max_size": 0},
        {"other": 1},
        {},
        [],
        "x",
        {"concurrency": 10**9},
    ],
)
async def test_queue_bad_values_change_nothing(env, body):
    """A bad queue setting is a 422 with a message and leaves the config as it was."""
    await env.client.patch("/tasks/queues/default", json={"concurrency": 3})
    response = await env.client.patch("/tasks/queues/default", json=body)
    assert response.status_code == 422
    assert response.json()["detail"]
    assert (await env.client.get("/tasks/queues")).json()["default"]["concurrency"] == 3


async def test_unknown_queue_is_404(env):
    """PATCH on a queue that does not exist is a 404."""
    response = await env.client.patch("/tasks/queues/nope", json={"concurrency": 1})
    assert response.status_code == 404


# ---- audit, registry, read-only --------------------------------------------------------------


async def test_audit_persists_in_backend(make_env):
    """Audit entries are written to the backend and read back by a new admin."""
    backend = MemoryBackend()
    options = {"snapshot_backend": backend, "close_backend": False}
    async with make_env(manager_options=options) as env:
        await env.client.patch("/tasks/queues/default", json={"max_size": 5})
    async with make_env(manager_options=options) as env:
        audit = (await env.client.get("/tasks/audit?limit=5")).json()
        assert audit[0]["action"] == "queue_config"
        assert audit[0]["detail"]["max_size"] == 5
        assert (await env.client.get("/tasks/audit?limit=0")).status_code == 422


async def test_registry_lists_tasks(env):
    """GET /registry lists registered tasks with their options."""
    body = (await env.client.get("/tasks/registry")).json()
    names = {t["name"] for t in body["tasks"]}
    assert "admin_jobs:succeed" in names
    assert body["schedules"] == []


async def test_read_only_refuses_every_change(make_env):
    """read_only=True answers 403 to each mutating route and still serves reads."""
    async with make_env(read_only=True) as env:
        failed = env.add(jobs.fail)
        await env.manager.join(timeout=5)
        calls = [
            env.client.post(f"/tasks/{failed}/retry"),
            env.client.post(f"/tasks/{failed}/cancel"),
            env.client.post("/tasks/bulk-retry", json={"task_ids": [failed]}),
            env.client.post("/tasks/retry-failed"),
            env.client.delete("/tasks/history?all=true"),
            env.client.patch("/tasks/queues/default", json={"concurrency": 1}),
        ]
        for response in await asyncio.gather(*calls):
            assert response.status_code == 403, response.text
        assert (await env.client.get("/tasks")).status_code == 200
        assert env.manager.metrics()["total"] == 1
        config = (await env.client.get("/tasks/dashboard/config")).json()
        assert config["read_only"] is True


# ---- wiring ----------------------------------------------------------------------------------


async def test_openapi_schema_documents_the_task_api(make_env):
    """Regression (schemathesis run): /openapi.json was a 500 because the SSE routes'
    return annotation could not be resolved; asked for, it documents the API and the streams."""
    async with make_env(include_in_schema=True) as env:
        response = await env.client.get("/openapi.json")
        assert response.status_code == 200
        paths = response.json()["paths"]
        assert {"/tasks", "/tasks/{task_id}", "/tasks/retry-failed", "/tasks/history"} <= set(paths)
        stream = paths["/tasks/dashboard/stream"]["get"]["responses"]["200"]["content"]
        assert "text/event-stream" in stream
        assert "/tasks/{task_id}/events" in paths


async def test_open_api_warns_once_at_startup(make_env, caplog):
    """Without auth, startup logs one warning that the task API is open."""
    caplog.set_level(logging.WARNING, logger="fastapi_taskflow.admin")
    async with make_env():
        pass
    warnings = [r for r in caplog.records if "has no auth" in r.getMessage()]
    assert len(warnings) == 1


async def test_no_warning_with_auth(make_env, caplog):
    """With auth configured there is no open-API warning."""
    caplog.set_level(logging.WARNING, logger="fastapi_taskflow.admin")
    async with make_env(auth=("admin", "pw"), secret_key="k" * 32):
        pass
    assert not [r for r in caplog.records if "has no auth" in r.getMessage()]


@pytest.mark.parametrize(
    "options",
    [
        {"path": "tasks"},
        {"path": "/tasks/"},
        {"token_expiry": 0},
        {"token_expiry": "1"},
        {"poll_interval": 0},
        {"retention_days": -1},
        {"title": ""},
        {"auth": "admin:pw"},
        {"auth": [("admin",)]},
        {"auth": ("admin", "pw"), "secret_key": "short"},
        {"api_tokens": "abc"},
        {"api_tokens": ["short"]},
    ],
)
def test_bad_configuration_raises(options):
    """Bad TaskAdmin settings raise ConfigurationError naming the setting."""
    with pytest.raises(ConfigurationError):
        TaskAdmin(FastAPI(), TaskManager(), **options)


async def test_app_with_own_lifespan_runs_tasks():
    """TaskAdmin starts the manager even when the app has its own lifespan."""
    from contextlib import asynccontextmanager

    import httpx
    from asgi_lifespan import LifespanManager

    entered = []

    @asynccontextmanager
    async def lifespan(app):
        entered.append(True)
        yield

    app = FastAPI(lifespan=lifespan)
    manager = TaskManager()
    TaskAdmin(app, manager, auto_install=True)

    @app.post("/signup")
    async def signup(background_tasks: BackgroundTasks) -> dict[str, str]:
        return {"task_id": str(background_tasks.add_task(jobs.succeed, 1))}

    async with LifespanManager(app) as running:
        transport = httpx.ASGITransport(app=running.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            task_id = (await client.post("/signup")).json()["task_id"]
            await manager.join(timeout=5)
            assert (await client.get(f"/tasks/{task_id}")).json()["status"] == "success"
    assert entered == [True]


async def test_retention_prunes_old_history(make_env):
    """retention_days deletes finished tasks older than the window."""
    async with make_env(retention_days=1) as env:
        [task_id] = await _finished(env, 1)
        record = env.manager.store.get(task_id)
        record.end_time = datetime.now(UTC) - timedelta(days=2)
        result = await env.admin.prune()
        assert result["store"] == 1
        assert env.manager.store.get(task_id) is None
