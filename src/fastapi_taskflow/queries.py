"""Read-side views for the API: merged pages, metrics and queue stats from kept counters."""

from __future__ import annotations

from typing import Any

from .backends.base import RecordPage, RecordQuery, TaskBackend, decode_cursor, encode_cursor
from .dispatch.queues import QueueSet
from .models import TaskRecord, TaskStatus
from .store import TaskStore


def _key(record: TaskRecord) -> tuple[float, str]:
    return (record.created_at.timestamp(), record.task_id)


def memory_page(store: TaskStore, query: RecordQuery, limit: int) -> list[TaskRecord]:
    """Up to ``limit`` matching records from memory, newest first, after the cursor."""
    after = decode_cursor(query.cursor) if query.cursor else None

    def accept(record: TaskRecord) -> bool:
        return (after is None or _key(record) < after) and query.matches(record)

    return store.first_newest(limit, accept)


async def merged_page(
    store: TaskStore, backend: TaskBackend | None, query: RecordQuery
) -> RecordPage:
    """Memory and backend pages merged: memory wins for a task in both (it is fresher)."""
    want = query.limit + 1
    records = {r.task_id: r for r in memory_page(store, query, want)}
    if backend is not None:
        page = await backend.query_records(RecordQuery(**{**_fields(query), "limit": want}))
        for record in page.records:
            records.setdefault(record.task_id, record)
    ordered = sorted(records.values(), key=_key, reverse=True)
    page_records = ordered[: query.limit]
    next_cursor = None
    if len(ordered) > query.limit and page_records:
        last = page_records[-1]
        next_cursor = encode_cursor(*_key(last))
    return RecordPage(page_records, next_cursor)


def _fields(query: RecordQuery) -> dict[str, Any]:
    return {name: getattr(query, name) for name in query.__slots__}


def metrics_snapshot(store: TaskStore, queues: QueueSet) -> dict[str, Any]:
    """Counts by status (the shape 0.x clients read) plus percentiles; O(1) in the records."""
    counts = store.counts()
    total = sum(counts.values())
    histogram = store.durations
    data: dict[str, Any] = {"total": total}
    data.update({status.value: counts[status] for status in TaskStatus})
    data["success_rate"] = counts[TaskStatus.SUCCESS] / total if total else 0.0
    data["avg_duration_seconds"] = round(histogram.mean, 6)
    data["duration_p50"] = histogram.percentile(0.50)
    data["duration_p95"] = histogram.percentile(0.95)
    data["duration_p99"] = histogram.percentile(0.99)
    data["queues"] = queue_snapshot(store, queues)
    return data


def queue_snapshot(store: TaskStore, queues: QueueSet) -> dict[str, dict[str, Any]]:
    stats: dict[str, dict[str, Any]] = {}
    for queue in queues:
        counts = store.queue_counts(queue.name)
        stats[queue.name] = {
            "concurrency": queue.config.concurrency,
            "max_size": queue.config.max_size,
            "running": queue.running,
            "waiting": queue.waiting_count,
            "pending": counts[TaskStatus.PENDING],
            "started": queue.started,
            "counts": {status.value: counts[status] for status in TaskStatus},
        }
    return stats
