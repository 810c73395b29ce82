"""Control across instances: cancel, retry and queue changes that reach the instance concerned.

A request on any instance is applied there when it can be (the task runs here, the record is
here); otherwise it goes through the backend's command channel and the instance that holds the
task applies it and replies. Every live instance answers a request ("found" or not), so an id
no instance knows is answered as soon as they all said so, not after a timeout.

Queue changes apply to every instance: the one asked applies and saves the new caps in backend
metadata (``queue:<name>``), the others apply them from the channel, and an instance started
later reads them at startup.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .backends.base import Command
from .errors import ArgumentDecryptionError, UnknownTaskError
from .models import QueueConfig

if TYPE_CHECKING:
    from .manager import TaskManager

logger = logging.getLogger("fastapi_taskflow.control")

REPLY_TIMEOUT = 2.0  # seconds to wait for the instance that holds a task
CANCEL_SETTLE = 0.5  # seconds the owner waits for a cancelled attempt to end before replying
QUEUE_META = "queue:{}"


@dataclass(slots=True)
class Outcome:
    """Where a request took effect: ``here``, on ``owner`` (``instance_id``), or ``nowhere``."""

    where: str
    instance_id: str | None = None
    task: dict[str, Any] | None = None
    new_task_id: str | None = None
    detail: str = ""


async def cancel_anywhere(manager: TaskManager, task_id: str) -> Outcome:
    """Cancel where the task runs: here, or on the instance that holds it."""
    if manager.cancel(task_id):
        return Outcome("here", manager.instance_id)
    reply = await _ask(manager, "cancel", task_id)
    if reply is None:
        return Outcome("nowhere")
    return Outcome("owner", reply.sender, task=reply.data.get("task"))


async def retry_elsewhere(manager: TaskManager, task_id: str) -> Outcome:
    """Retry a task this instance cannot see, on the instance that holds its record."""
    reply = await _ask(manager, "retry", task_id)
    if reply is None:
        return Outcome("nowhere")
    if reply.data.get("error"):
        return Outcome("owner", reply.sender, detail=str(reply.data["error"]))
    return Outcome(
        "owner", reply.sender, task=reply.data.get("task"), new_task_id=reply.data["new_task_id"]
    )


async def _ask(manager: TaskManager, kind: str, task_id: str) -> Command | None:
    cluster = manager.cluster
    if cluster is None:
        return None
    others = {i.instance_id for i in await manager.instances()} - {manager.instance_id}
    if not others:
        return None
    return await cluster.request(kind, task_id=task_id, expect=others, timeout=REPLY_TIMEOUT)


async def handle_command(manager: TaskManager, command: Command) -> dict[str, Any] | None:
    """Apply a command from another instance; the reply's data (None: no reply)."""
    task_id = command.task_id
    if command.kind == "queue":
        _apply_queue(manager, command.data)
        return None
    if task_id is None:
        return None
    if command.kind == "cancel":
        return await _cancel_here(manager, task_id)
    if command.kind == "retry":
        return await _retry_here(manager, task_id)
    if command.kind == "forget":
        record = manager.store.get(task_id)
        if record is not None and record.status.finished:
            manager.store.remove(task_id)  # replaced by a retry on another instance
            if manager.persister is not None:
                manager.persister.forget([task_id])  # a write still buffered would bring it back
    return None


async def _cancel_here(manager: TaskManager, task_id: str) -> dict[str, Any]:
    record = manager.store.get(task_id)
    if record is None or not manager.cancel(task_id):
        return {"found": False}
    if not record.status.finished:
        # A running attempt ends at its next await: reply with the final status if it comes soon.
        with contextlib.suppress(TimeoutError):
            await manager.wait_for(record, timeout=CANCEL_SETTLE)
    return {"found": True, "task": manager.record_dict(record)}


async def _retry_here(manager: TaskManager, task_id: str) -> dict[str, Any]:
    if manager.store.get(task_id) is None:
        return {"found": False}
    try:
        handle = await manager.retry(task_id, source="retry")
    except (UnknownTaskError, ValueError, ArgumentDecryptionError) as exc:
        return {"found": True, "error": str(exc)}
    task = manager.record_dict(handle.record)
    return {"found": True, "new_task_id": handle.task_id, "task": task}


# ---- queues ------------------------------------------------------------------------------------


def queue_document(config: QueueConfig) -> dict[str, Any]:
    return {"concurrency": config.concurrency, "max_size": config.max_size}


async def share_queue_config(manager: TaskManager, name: str, config: QueueConfig) -> None:
    """Save a queue's new caps for later instances and tell the running ones."""
    backend = manager.backend if manager.started else None
    if backend is None:
        return
    document = queue_document(config)
    await backend.set_meta(QUEUE_META.format(name), json.dumps(document))
    if manager.cluster is not None:
        await manager.cluster.send("queue", name=name, **document)


async def load_queue_configs(manager: TaskManager) -> None:
    """At startup: the caps last set through the API for each queue this app has."""
    backend = manager.backend
    assert backend is not None
    for name in manager.queue_stats():
        raw = await backend.get_meta(QUEUE_META.format(name))
        if raw:
            try:
                _apply_queue(manager, {"name": name, **json.loads(raw)})
            except (TypeError, ValueError):
                logger.warning("ignoring the saved caps of queue %r: %r", name, raw, exc_info=True)


def _apply_queue(manager: TaskManager, data: dict[str, Any]) -> None:
    name = data.get("name")
    if not isinstance(name, str) or name not in manager.queue_stats():
        return  # a queue this app does not have
    manager.update_queue_config(
        name, concurrency=data.get("concurrency"), max_size=data.get("max_size")
    )
