"""TaskRecord: moments kept as epoch seconds read as the datetimes the API has always shown."""

from __future__ import annotations

import copy
import json
import math
import pickle
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from fastapi_taskflow import TaskManager
from fastapi_taskflow.models import TaskRecord, TaskStatus, as_datetime


def test_moments_read_as_aware_utc_datetimes() -> None:
    record = TaskRecord("t1", "job", created_at=1_764_640_000.25, start_time=1_764_640_001.5)

    assert record.created_at == datetime(2025, 12, 2, 1, 46, 40, 250000, tzinfo=UTC)
    assert record.created_at.tzinfo is UTC
    assert record.start_time == datetime(2025, 12, 2, 1, 46, 41, 500000, tzinfo=UTC)
    assert record.end_time is None
    assert record.duration is None
    assert record.to_dict()["created_at"] == "2025-12-02T01:46:40.250000+00:00"


def test_a_datetime_given_is_kept_as_given() -> None:
    """A record loaded from a backend (or set by a caller) returns the very datetime it got."""
    plus_two = timezone(timedelta(hours=2))
    created = datetime(2026, 1, 1, 12, 0, tzinfo=plus_two)
    record = TaskRecord("t1", "job", created_at=created)
    record.end_time = datetime(2026, 1, 1, 10, 0, 3, tzinfo=UTC)
    record.start_time = datetime(2026, 1, 1, 10, 0, 1, tzinfo=UTC)

    assert record.created_at is created
    assert record.to_dict()["created_at"] == "2026-01-01T12:00:00+02:00"
    assert record.duration == 2.0
    record.end_time = None
    assert record.end_time is None
    assert record.duration is None


def test_a_new_record_is_stamped_now() -> None:
    before = datetime.now(UTC)
    record = TaskRecord("t1", "job")
    after = datetime.now(UTC)

    assert (
        before - timedelta(milliseconds=1) <= record.created_at <= after + timedelta(milliseconds=1)
    )


def test_duration_is_the_difference_of_the_times_shown() -> None:
    """Epoch seconds finer than a microsecond still give the duration of the datetimes read."""
    rng = random.Random(7)
    for _ in range(20_000):
        start = rng.uniform(1.6e9, 1.9e9)
        end = start + rng.choice([0.0, 1e-6, 0.5e-6, rng.uniform(0, 5), rng.uniform(0, 1e-3)])
        if rng.random() < 0.5:  # on a half microsecond, where rounding is decided
            start = math.floor(start * 1e6) / 1e6 + 0.5e-6
        record = TaskRecord("t", "f", start_time=start, end_time=end)
        assert record.start_time is not None
        assert record.end_time is not None
        assert record.duration == (record.end_time - record.start_time).total_seconds()
        assert record.start_time.timestamp() == as_datetime(start).timestamp()


def test_mixed_moments_give_a_duration() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    record = TaskRecord("t", "f", start_time=start, end_time=start.timestamp() + 1.5)
    assert record.duration == 1.5


def test_repr_names_the_public_fields() -> None:
    record = TaskRecord("t1", "job", created_at=0.0, result_data=b"secret")
    text = repr(record)
    assert text.startswith("TaskRecord(task_id='t1', func_name='job', status=")
    assert "created_at=datetime.datetime(1970, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)" in text
    assert "result_data" not in text


def test_a_copy_is_a_separate_record() -> None:
    record = TaskRecord("t1", "job", args=(1,), kwargs={"a": 2}, start_time=5.0)
    shown = copy.copy(record)
    shown.args = ("hidden",)

    assert record.args == (1,)
    assert shown.start_time == record.start_time
    assert shown.task_id == "t1"


async def test_a_task_run_stamps_each_moment_in_order() -> None:
    manager = TaskManager()

    async def job() -> None:
        return None

    manager.task()(job)
    await manager.startup()
    try:
        record = await manager.add_task(job).wait(timeout=5)
    finally:
        await manager.shutdown()

    assert record.status is TaskStatus.SUCCESS
    assert record.start_time is not None
    assert record.end_time is not None
    assert record.created_at <= record.start_time <= record.end_time
    assert record.created_at.tzinfo is UTC
    assert record.end_time.tzinfo is UTC
    assert record.duration == (record.end_time - record.start_time).total_seconds()
    data = record.to_dict()
    assert data["end_time"] == record.end_time.isoformat()
    assert data["duration"] == record.duration


def test_records_without_tags_or_kwargs_share_one_read_only_empty_dict() -> None:
    first, second = TaskRecord("t1", "job"), TaskRecord("t2", "job", kwargs={}, tags={})

    assert first.tags is first.kwargs is second.tags is second.kwargs
    assert first.tags == {}
    assert json.dumps(first.tags) == "{}"
    for change in (
        lambda d: d.__setitem__("k", "v"),
        lambda d: d.update(k="v"),
        lambda d: d.setdefault("k", "v"),
        lambda d: d.pop("k"),
        lambda d: d.clear(),
    ):
        with pytest.raises(TypeError, match="shared"):
            change(first.tags)
    assert first.tags == {}


def test_the_shared_empty_dict_copies_and_pickles_as_a_plain_dict() -> None:
    record = TaskRecord("t1", "job")
    for twin in (copy.copy(record.kwargs), pickle.loads(pickle.dumps(record.kwargs))):
        assert type(twin) is dict
        twin["k"] = "v"  # a copy is the caller's own
    assert record.kwargs == {}


def test_given_tags_and_kwargs_are_kept_as_given() -> None:
    tags, kwargs = {"team": "a"}, {"n": 1}
    record = TaskRecord("t1", "job", kwargs=kwargs, tags=tags)
    assert record.tags is tags
    assert record.kwargs is kwargs
