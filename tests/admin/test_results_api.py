"""Results and waiting reasons in the task API: GET /tasks/{id} and GET /tasks/{id}/result."""

from __future__ import annotations

import asyncio

import admin_jobs as jobs
from cryptography.fernet import Fernet

from fastapi_taskflow import RateLimit


async def _done(env, *args: object) -> str:
    task_id = env.add(jobs.succeed, *args)
    await env.manager.join(timeout=5)
    return task_id


async def test_task_json_has_the_result_and_the_list_does_not(env):
    """GET /tasks/{id} carries "result" (its JSON form); the list never decodes results."""
    task_id = await _done(env, {"pages": 3, "at": (1, 2)})
    body = (await env.client.get(f"/tasks/{task_id}")).json()
    assert body["result"] == {"pages": 3, "at": [1, 2]}
    assert body["has_result"] is True
    listed = (await env.client.get("/tasks")).json()[0]
    assert "result" not in listed
    assert listed["has_result"] is True


async def test_bytes_result_is_described_and_served_raw(env):
    """A bytes result shows as {"type": "bytes", "size": n}; /result answers the bytes."""
    pdf = b"%PDF-1.7\x00\xff" * 100
    task_id = await _done(env, pdf)
    body = (await env.client.get(f"/tasks/{task_id}")).json()
    assert body["result"] == {"type": "bytes", "size": len(pdf)}
    raw = await env.client.get(f"/tasks/{task_id}/result")
    assert raw.status_code == 200
    assert raw.headers["content-type"] == "application/octet-stream"
    assert raw.content == pdf
    assert raw.headers["cache-control"] == "no-store"  # never kept by a cache on the way


async def test_result_route_answers_json(env):
    """GET /tasks/{id}/result answers a JSON value as JSON."""
    task_id = await _done(env, ["a", 1, None])
    response = await env.client.get(f"/tasks/{task_id}/result")
    assert response.headers["content-type"] == "application/json"
    assert response.json() == ["a", 1, None]


async def test_result_route_refuses_unfinished_failed_and_unknown(env):
    """/result is a JSON 409 for a running or failed task, 404 for an unknown one."""
    gate = asyncio.Event()
    running = env.add(jobs.block, gate)
    failed = env.add(jobs.fail, "no paper")
    handle = await env.manager.get_task(failed)
    assert handle is not None
    await handle.wait(timeout=5)
    busy = await env.client.get(f"/tasks/{running}/result")
    assert busy.status_code == 409
    assert "not finished" in busy.json()["detail"]
    broken = await env.client.get(f"/tasks/{failed}/result")
    assert broken.status_code == 409
    assert "no paper" in broken.json()["detail"]
    assert (await env.client.get("/tasks/nope/result")).status_code == 404
    gate.set()


async def test_result_not_kept_is_404_with_the_reason(make_env):
    """A result over max_result_bytes: /result is 404 saying why; the task JSON says it too."""
    async with make_env(manager_options={"max_result_bytes": 10}) as env:
        task_id = await _done(env, "x" * 100)
        response = await env.client.get(f"/tasks/{task_id}/result")
        assert response.status_code == 404
        assert "over max_result_bytes (10)" in response.json()["detail"]
        body = (await env.client.get(f"/tasks/{task_id}")).json()
        assert body["status"] == "success"
        assert body["result"] is None
        assert "max_result_bytes" in body["result_note"]


async def test_display_results_off_hides_them(make_env):
    """display_results=False: no "result" in the task JSON and /result is 403."""
    async with make_env(display_results=False) as env:
        task_id = await _done(env, "hidden value")
        body = (await env.client.get(f"/tasks/{task_id}")).json()
        assert "result" not in body
        assert (await env.client.get(f"/tasks/{task_id}/result")).status_code == 403
        assert "hidden value" not in (await env.client.get(f"/tasks/{task_id}")).text


async def test_results_are_redacted_like_arguments(make_env):
    """Keys the redact rule names are masked in shown results."""
    async with make_env(manager_options={"redact": ["password"]}) as env:
        task_id = await _done(env, {"user": "ann", "password": "hunter22"})
        body = (await env.client.get(f"/tasks/{task_id}")).json()
        assert body["result"] == {"user": "ann", "password": "***"}
        shown = (await env.client.get(f"/tasks/{task_id}/result")).json()
        assert shown == {"user": "ann", "password": "***"}


async def test_sealed_results_are_shown_decrypted(make_env):
    """With encryption on the API still shows the result (it is sealed only at rest)."""
    async with make_env(manager_options={"encrypt_args_key": Fernet.generate_key()}) as env:
        task_id = await _done(env, {"total": 12})
        assert env.manager.store.get(task_id).result_data is None
        body = (await env.client.get(f"/tasks/{task_id}")).json()
        assert body["result"] == {"total": 12}


async def test_waiting_reason_in_task_json(env):
    """A task waiting for its rate limit says so in GET /tasks/{id}."""

    async def limited() -> None:
        return None

    env.manager.task(rate_limit=RateLimit(1, per=60.0))(limited)
    said = asyncio.Event()
    env.manager.store.add_listener(lambda r: said.set() if r.waiting_reason else None)
    env.manager.add_task(limited)
    waiting = env.manager.add_task(limited)
    await asyncio.wait_for(said.wait(), 5)
    body = (await env.client.get(f"/tasks/{waiting}")).json()
    assert body["status"] == "pending"
    assert "rate limit 1/m" in body["waiting_reason"]
    waiting.cancel()
