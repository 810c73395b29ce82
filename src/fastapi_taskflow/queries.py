"""Read-side views for the API: merged pages, metrics and queue stats from kept counters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .backends.base import RecordPage, RecordQuery, TaskBackend, decode_cursor, encode_cursor
from .dispatch.queues import QueueSet
from .models import TaskRecord, TaskStatus
from .stats import ClusterStats
from .store import TaskStore


def _key(record: TaskRecord) -> tuple[float, str]:
    return (record.created_at.timestamp(), record.task_id)


def memory_page(store: TaskStore, query: RecordQuery, limit: int) -> list[TaskRecord]:
    """Up to ``limit`` matching records from memory, newest first, after the cursor."""
    after = decode_cursor(query.cursor) if query.cursor else None

    def accept(record: TaskRecord) -> bool:
        return (after is None or _key(record) < after) and query.matches(record)

    return store.first_newest(limit, accept)


def _unwritten_page(
    records: list[TaskRecord], query: RecordQuery, limit: int
) -> dict[str, TaskRecord]:
    after = decode_cursor(query.cursor) if query.cursor else None
    found = [r for r in records if (after is None or _key(r) < after) and query.matches(r)]
    found.sort(key=_key, reverse=True)
    return {r.task_id: r for r in found[:limit]}


async def merged_page(
    store: TaskStore,
    backend: TaskBackend | None,
    query: RecordQuery,
    unwritten: Callable[[], list[TaskRecord]] | None = None,
) -> RecordPage:
    """One page from memory alone (no backend), or from the backend with memory on top.

    With a backend, memory adds only what the backend cannot know yet or knows less well:
    ``unwritten()`` (changes still on their way to it) and this instance's active tasks, whose
    copy in memory replaces the backend row (or drops it when it no longer matches the query).
    Memory is never walked as a whole, so a page costs the same however much it holds.
    """
    want = query.limit + 1
    if backend is None:
        records = {r.task_id: r for r in memory_page(store, query, want)}
    else:
        records = _unwritten_page(unwritten() if unwritten is not None else [], query, want)
        page = await backend.query_records(RecordQuery(**{**_fields(query), "limit": want}))
        for record in page.records:
            if record.task_id in records:
                continue
            fresher = store.get(record.task_id)
            if fresher is not None and not fresher.status.finished:
                # This instance runs it: its copy is the truth (the cursor's fields are fixed).
                if query.matches(fresher):
                    records[record.task_id] = fresher
                continue
            records[record.task_id] = record
    ordered = sorted(records.values(), key=_key, reverse=True)
    page_records = ordered[: query.limit]
    next_cursor = None
    if len(ordered) > query.limit and page_records:
        last = page_records[-1]
        next_cursor = encode_cursor(*_key(last))
    return RecordPage(page_records, next_cursor)


def _fields(query: RecordQuery) -> dict[str, Any]:
    return {name: getattr(query, name) for name in query.__slots__}


def metrics_snapshot(stats: ClusterStats, queues: QueueSet) -> dict[str, Any]:
    """Counts by status (the shape 0.x clients read) plus percentiles; O(1) in the records."""
    counts = stats.counts
    total = sum(counts.values())
    histogram = stats.durations
    data: dict[str, Any] = {"total": total}
    data.update({status.value: counts[status] for status in TaskStatus})
    data["success_rate"] = counts[TaskStatus.SUCCESS] / total if total else 0.0
    data["avg_duration_seconds"] = round(histogram.mean, 6)
    data["duration_p50"] = histogram.percentile(0.50)
    data["duration_p95"] = histogram.percentile(0.95)
    data["duration_p99"] = histogram.percentile(0.99)
    data["queues"] = queue_snapshot(stats, queues)
    return data


def queue_snapshot(stats: ClusterStats, queues: QueueSet) -> dict[str, dict[str, Any]]:
    """Per queue: counts from ``stats`` (every instance's with a backend that keeps stats, as
    ``counts_scope`` says) and this instance's caps and slots (``running``, ``waiting``,
    ``started``: ``slots_scope`` is always "this instance")."""
    out: dict[str, dict[str, Any]] = {}
    for queue in queues:
        counts = stats.queue(queue.name)
        out[queue.name] = {
            "concurrency": queue.config.concurrency,
            "max_size": queue.config.max_size,
            "rate_limit": str(queue.config.rate) if queue.config.rate is not None else None,
            "running": queue.running,
            "waiting": queue.waiting_count,
            "pending": counts[TaskStatus.PENDING],
            "started": queue.started,
            "counts": {status.value: counts[status] for status in TaskStatus},
            "counts_scope": stats.scope,
            "slots_scope": "this instance",
        }
    return out
