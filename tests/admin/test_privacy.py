"""Redaction and sealed errors as the task API shows them."""

from __future__ import annotations

import admin_jobs as jobs
from cryptography.fernet import Fernet

CARD = "4111111111111111"


async def test_api_redacts_arguments_and_error_text(make_env):
    """With redact=[...], the API shows neither the argument nor its echo in the error."""
    options = {"redact": ["card_number"]}
    async with make_env(manager_options=options, display_func_args=True) as env:
        env.manager.task()(jobs.charge)
        task_id = env.add(jobs.charge, CARD, amount=5)
        await env.manager.join(timeout=5)
        body = (await env.client.get(f"/tasks/{task_id}")).json()
        assert body["status"] == "failed"
        assert CARD not in str(body)
        assert body["kwargs"]["amount"] == 5


async def test_sealed_errors_open_only_for_a_signed_in_user(make_env):
    """encrypt_errors: an anonymous caller never sees the error; a signed-in one does."""
    options = {"encrypt_args_key": Fernet.generate_key(), "encrypt_errors": True}
    async with make_env(manager_options=options, auth=("admin", "pw")) as env:
        env.manager.task()(jobs.charge)
        task_id = env.add(jobs.charge, CARD, amount=7)
        await env.manager.join(timeout=5)
        assert (await env.client.get(f"/tasks/{task_id}")).status_code == 401
        login = {"username": "admin", "password": "pw"}
        token = (await env.client.post("/tasks/auth/login", json=login)).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        body = (await env.client.get(f"/tasks/{task_id}", headers=headers)).json()
        assert body["error_encrypted"] is True
        assert CARD in body["error"]
        stored = env.manager.store.get(task_id)
        assert stored is not None
        assert CARD not in (stored.error or "")


async def test_sealed_errors_stay_sealed_on_an_open_api(make_env):
    """Without auth nobody has proved who they are: the placeholder is all the API shows."""
    options = {"encrypt_args_key": Fernet.generate_key(), "encrypt_errors": True}
    async with make_env(manager_options=options) as env:
        env.manager.task()(jobs.charge)
        task_id = env.add(jobs.charge, CARD, amount=7)
        await env.manager.join(timeout=5)
        body = (await env.client.get(f"/tasks/{task_id}")).json()
        assert CARD not in str(body)
        assert "encrypted" in body["error"]
