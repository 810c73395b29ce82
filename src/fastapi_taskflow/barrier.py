"""JournalBarrier: a response waits until the tasks its request journaled are committed.

``add_task`` is synchronous, so it cannot wait for the backend: the journal is written by group
commit at the end of the loop tick. This ASGI middleware closes the gap for HTTP requests: when
a request journaled tasks (``persist=True``, ``requeue_pending=True`` or
``requeue_on_interrupt=True``), its ``http.response.start`` is held until that journal batch is
committed. A client that got its response therefore knows the task survives a crash. Requests
that journal nothing pay one context variable and one wrapper call.

A commit that is slow without failing (another process holds the SQLite write lock, a disk
that stalls) is waited for up to ``barrier_timeout``. Past it the response must not claim
durability: the request's tasks are withdrawn (cancelled, their entries removed) and the client
gets a 503 with ``Retry-After`` instead, counted in ``metrics()["barrier_timeouts"]`` and logged.
While the backend is failing (an outage) the response is not held: the app keeps answering and
the writes stay buffered (see docs/durability.md).
"""

from __future__ import annotations

import enum
import json
import logging
import math
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .manager import TaskManager

logger = logging.getLogger("fastapi_taskflow.barrier")

Scope = dict[str, Any]
Message = dict[str, Any]


class Commit(enum.Enum):
    """How waiting for a journal write ended."""

    COMMITTED = "committed"
    FAILING = "failing"  # the backend is failing: the write stays buffered and is retried
    TIMED_OUT = "timed out"  # neither committed nor failed within the wait


@dataclass(slots=True)
class RequestJournal:
    """What the current request journaled: the highest write and the tasks it wrote."""

    seq: int = 0
    task_ids: list[str] = field(default_factory=list)


# The current request's journal writes. Mutated in place, so a sync route's worker thread,
# which runs in a copy of the context, updates the same holder.
_request_writes: ContextVar[RequestJournal | None] = ContextVar(
    "taskflow_journal_writes", default=None
)


def note_journal_write(seq: int, task_id: str) -> None:
    """Remember that the current request (if any) journaled task ``task_id`` as write ``seq``."""
    holder = _request_writes.get()
    if holder is not None:
        holder.task_ids.append(task_id)
        if seq > holder.seq:
            holder.seq = seq


class JournalBarrier:
    """ASGI middleware: hold a response until its request's journal writes are committed.

    ``timeout`` (default: the manager's ``barrier_timeout``) bounds the wait for a commit that
    neither succeeds nor fails; past it the request's tasks are withdrawn and the answer is 503.
    """

    def __init__(self, app: Any, manager: TaskManager, timeout: float | None = None) -> None:
        self.app = app
        self.manager = manager
        self.timeout = manager.settings.barrier_timeout if timeout is None else timeout

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        holder = RequestJournal()
        token = _request_writes.set(holder)
        withdrawn = False

        async def send_when_durable(message: Message) -> None:
            nonlocal withdrawn
            if withdrawn:  # the 503 went out instead of the app's response
                return
            if holder.seq and message["type"] == "http.response.start":
                persister = self.manager.persister
                if persister is not None:
                    outcome = await persister.wait_written(holder.seq, self.timeout)
                    if outcome is Commit.TIMED_OUT:
                        withdrawn = True
                        self._withdraw(scope, holder)
                        await self._unavailable(send)
                        return
            await send(message)

        try:
            await self.app(scope, receive, send_when_durable)
        finally:
            _request_writes.reset(token)

    def _withdraw(self, scope: Scope, holder: RequestJournal) -> None:
        reason = (
            f"withdrawn: its journal write was not committed within {self.timeout:g}s "
            "(barrier_timeout), so the client was answered 503"
        )
        withdrawn = self.manager.withdraw_tasks(holder.task_ids, reason)
        logger.warning(
            "journal commit slower than barrier_timeout=%gs on %s %s: %d task(s) withdrawn "
            "and the client answered 503 (a 2xx would claim a durability that did not hold)",
            self.timeout,
            scope.get("method", "?"),
            scope.get("path", "?"),
            withdrawn,
        )

    async def _unavailable(self, send: Any) -> None:
        body = json.dumps(
            {
                "detail": "the task journal did not commit in time; the request's tasks were "
                "withdrawn: retry later"
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(max(1, math.ceil(self.timeout))).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})
