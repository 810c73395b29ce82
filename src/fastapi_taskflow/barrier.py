"""JournalBarrier: a response waits until the tasks its request journaled are committed.

``add_task`` is synchronous, so it cannot wait for the backend: the journal is written by group
commit at the end of the loop tick. This ASGI middleware closes the gap for HTTP requests: when
a request journaled tasks (``persist=True``, ``requeue_pending=True`` or
``requeue_on_interrupt=True``), its ``http.response.start`` is held until that journal batch is
committed. A client that got its response therefore knows the task survives a crash. Requests
that journal nothing pay one context variable and one wrapper call.

The wait is bounded (``timeout``) and skipped while the backend is failing: during an outage the
app keeps answering and the writes stay buffered (see docs/durability.md).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .manager import TaskManager

Scope = dict[str, Any]
Message = dict[str, Any]

# The highest journal sequence number the current request wrote (a one-item list, so a sync
# route's worker thread, which runs in a copy of the context, updates the same holder).
_request_writes: ContextVar[list[int] | None] = ContextVar("taskflow_journal_writes", default=None)


def note_journal_write(seq: int) -> None:
    """Remember that the current request (if any) journaled write ``seq``."""
    holder = _request_writes.get()
    if holder is not None and seq > holder[0]:
        holder[0] = seq


class JournalBarrier:
    """ASGI middleware: hold a response until its request's journal writes are committed."""

    def __init__(self, app: Any, manager: TaskManager, timeout: float = 2.0) -> None:
        self.app = app
        self.manager = manager
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        holder = [0]
        token = _request_writes.set(holder)

        async def send_when_durable(message: Message) -> None:
            if holder[0] and message["type"] == "http.response.start":
                persister = self.manager.persister
                if persister is not None:
                    await persister.wait_written(holder[0], self.timeout)
            await send(message)

        try:
            await self.app(scope, receive, send_when_durable)
        finally:
            _request_writes.reset(token)
