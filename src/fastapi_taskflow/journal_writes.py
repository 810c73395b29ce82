"""Which journal writes the current request made, and how waiting for one ended.

A leaf both sides share: the persister notes each journal write here as it makes it, and the
response barrier (an HTTP middleware) opens a request's record and waits on it. Neither side
imports the other, so the durability core does not depend on the web layer.
"""

from __future__ import annotations

import enum
from contextvars import ContextVar, Token
from dataclasses import dataclass, field


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


def open_request() -> tuple[RequestJournal, Token[RequestJournal | None]]:
    """Start collecting the journal writes of one HTTP request; pass the token to
    ``close_request`` when it ends. Two plain calls, not a context manager: every request
    through the barrier pays them."""
    holder = RequestJournal()
    return holder, _request_writes.set(holder)


def close_request(token: Token[RequestJournal | None]) -> None:
    _request_writes.reset(token)
