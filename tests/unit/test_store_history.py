"""TaskStore's finished history: evicted oldest finish first, whatever was removed or cleared."""

from __future__ import annotations

from fastapi_taskflow.models import TaskRecord, TaskStatus
from fastapi_taskflow.store import TaskStore


def _finish(store: TaskStore, record: TaskRecord, at: float) -> None:
    store.mark_running(record, at)
    store.mark_finished(record, TaskStatus.SUCCESS, at, None, None)


def _run_all(store: TaskStore, records: list[TaskRecord], at: float) -> None:
    for record in records:
        store.add(record)
        _finish(store, record, at)


def _ids(store: TaskStore) -> list[str]:
    return sorted(record.task_id for record in store.newest_first())


def test_eviction_follows_the_order_of_finishing_not_of_creation() -> None:
    store = TaskStore(max_history=2)
    first, second, third = (TaskRecord(f"t{n}", "job") for n in (1, 2, 3))
    for record in (first, second, third):
        store.add(record)
    _finish(store, third, 1.0)
    _finish(store, first, 2.0)
    _finish(store, second, 3.0)

    assert _ids(store) == ["t1", "t2"]
    assert store.evicted == 1
    assert store.counts()[TaskStatus.SUCCESS] == 3


def test_a_removed_record_leaves_the_finished_order() -> None:
    store = TaskStore(max_history=2)
    records = [TaskRecord(f"t{n}", "job") for n in range(4)]
    _run_all(store, records[:2], 1.0)
    assert store.remove("t0") is records[0]
    _run_all(store, records[2:], 2.0)

    # t0 is gone from the order: the one eviction took t1, the oldest finish still in memory.
    assert _ids(store) == ["t2", "t3"]
    assert store.evicted == 1


def test_clear_finished_keeps_the_spared_ones_in_their_order() -> None:
    store = TaskStore(max_history=3)
    records = [TaskRecord(f"t{n}", "job") for n in range(4)]
    _run_all(store, records[:3], 1.0)
    running = TaskRecord("active", "job")
    store.add(running)

    dropped = store.clear_finished(keep=lambda r: r.task_id != "t1")

    assert dropped == ["t1"]
    assert _ids(store) == ["active", "t0", "t2"]
    _run_all(store, records[3:], 2.0)
    store.add(TaskRecord("t4", "job", status=TaskStatus.FAILED))
    assert _ids(store) == ["active", "t2", "t3", "t4"]  # t0 finished first: evicted first
    assert store.clear_finished() == ["t2", "t3", "t4"]
    assert _ids(store) == ["active"]


def test_history_loaded_finished_counts_in_the_order() -> None:
    store = TaskStore(max_history=1)
    store.add(TaskRecord("old", "job", status=TaskStatus.SUCCESS, end_time=1.0))
    store.add(TaskRecord("new", "job", status=TaskStatus.SUCCESS, end_time=2.0))

    assert _ids(store) == ["new"]
    assert store.remove("new") is not None
    assert len(store) == 0
