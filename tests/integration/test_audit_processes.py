"""The audit trail of two uvicorn processes on one backend (``records_app.py``): actions taken
on both at the same moment are all kept, and either process lists every one of them.

Each process is asked to retry a finished task many times at once; every refusal is an audit
entry. A trail rewritten as one document (read, add, write back) loses the entries the other
process wrote between its read and its write.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import pytest
from processes import AppProcess, wait_for

from servers import PERSISTENT_KINDS

pytestmark = pytest.mark.slow

ACTIONS = 40  # per process, all sent at once
HEADERS = {"X-CSRF-Token": "1"}  # a script's proof of the same origin


@pytest.fixture(params=PERSISTENT_KINDS)
def backend_spec(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A backend spec (app_backends.py) of its own: a file, a key prefix or a table prefix."""
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'tasks.db'}"
    if request.param == "redis":
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        return f"redis:{url}|{prefix}"
    prefix = request.getfixturevalue("table_prefix")
    if request.param == "postgres":
        return f"postgres:{request.getfixturevalue('postgres_server').url}|{prefix}"
    return f"mysql:{request.getfixturevalue('mariadb_server').url_for('taskflow')}|{prefix}"


def finished_task(url: str) -> str:
    task_id = str(httpx.post(f"{url}/quick/1", timeout=5).json()["task_id"])
    wait_for(
        lambda: httpx.get(f"{url}/tasks/{task_id}", timeout=5).json()["status"] == "success",
        10,
        "the quick task finishing",
    )
    return task_id


async def retry_at_once(targets: list[tuple[str, str]]) -> list[int]:
    """POST ``/tasks/<id>/retry`` ``ACTIONS`` times on each (url, task id), all at once."""
    limits = httpx.Limits(max_connections=len(targets) * ACTIONS)
    async with httpx.AsyncClient(timeout=30, headers=HEADERS, limits=limits) as client:
        responses = await asyncio.gather(
            *(
                client.post(f"{url}/tasks/{task_id}/retry")
                for url, task_id in targets
                for _ in range(ACTIONS)
            )
        )
    return [r.status_code for r in responses]


def test_two_processes_recording_at_once_keep_every_entry(
    backend_spec: str, tmp_path: Path
) -> None:
    """Two processes each record ACTIONS refused retries at the same moment: both list all
    2 x ACTIONS entries, each once."""
    env = {"TF_BACKEND": backend_spec, "TF_GATES": str(tmp_path)}
    first = AppProcess(env, "records_app:app").start()
    try:
        second = AppProcess(env, "records_app:app").start()
        try:
            mine, theirs = finished_task(first.url), finished_task(second.url)
            statuses = asyncio.run(retry_at_once([(first.url, mine), (second.url, theirs)]))
            assert set(statuses) == {400}, "a finished task's retry is refused (and audited)"
            for url in (first.url, second.url):
                audit = httpx.get(f"{url}/tasks/audit?limit=1000", timeout=5).json()
                assert len({e["entry_id"] for e in audit}) == len(audit)
                assert Counter(e["task_id"] for e in audit) == {mine: ACTIONS, theirs: ACTIONS}
        finally:
            second.stop()
    finally:
        first.stop()
