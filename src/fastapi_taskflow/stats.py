"""Counters that describe stored records, and how one record write changes them.

A backend that is the system of record keeps these numbers next to its records and changes them
in the same transaction as the rows, so every instance reads the same figures and they survive
restarts. They are the *aggregate of the rows stored*: writing a row takes away the old row's
contribution and adds the new one's; deleting a row takes its contribution away.

Keys (a flat mapping of name -> number, so a backend stores them in one table or hash):

* ``s|<status>``: records in that status;
* ``q|<queue>|<status>``: records of one queue in that status (the status is after the last ``|``);
* ``h|<i>``: finished records whose duration falls in histogram bucket ``i``;
* ``hsum``: the sum of those durations, in seconds.

Throughput is a rate, not a state: each record that becomes SUCCESS or FAILED adds one to its
``THROUGHPUT_BUCKET``-second bucket (by end time); deletes leave it alone.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .models import TaskStatus
from .store import DurationHistogram, TaskStore

THROUGHPUT_BUCKET = 5.0
THROUGHPUT_POINTS = 180
THROUGHPUT_STATUSES = ("success", "failed")
_ACTIVE = ("pending", "running")
_STATUS_VALUES = frozenset(s.value for s in TaskStatus)

#: (status, queue, duration or None) of one stored row: what its contribution depends on.
StatInputs = tuple[str, str, float | None]


def histogram_bucket(duration: float) -> int:
    """The bucket index of ``duration`` in :class:`DurationHistogram`."""
    return bisect.bisect_left(DurationHistogram._BOUNDS, duration)


def contribution(inputs: StatInputs) -> dict[str, float]:
    """What one stored row adds to the counters."""
    status, queue, duration = inputs
    out: dict[str, float] = {f"s|{status}": 1, f"q|{queue}|{status}": 1}
    if duration is not None and status not in _ACTIVE:
        out[f"h|{histogram_bucket(duration)}"] = 1
        out["hsum"] = duration
    return out


def add_delta(
    deltas: dict[str, float], old: StatInputs | None, new: StatInputs | None
) -> dict[str, float]:
    """Accumulate into ``deltas`` the change of replacing row ``old`` by ``new`` (None: none)."""
    if old is not None:
        for key, value in contribution(old).items():
            deltas[key] = deltas.get(key, 0) - value
    if new is not None:
        for key, value in contribution(new).items():
            deltas[key] = deltas.get(key, 0) + value
    return deltas


def throughput_key(old_status: str | None, status: str, end_time: float | None) -> int | None:
    """The throughput bucket a write counts in: the row just became SUCCESS or FAILED."""
    if end_time is None or status not in THROUGHPUT_STATUSES:
        return None
    if old_status is not None and old_status not in _ACTIVE:
        return None  # rewritten after it had already finished: counted once
    return int(end_time // THROUGHPUT_BUCKET)


def batch_deltas(
    old: dict[str, StatInputs], rows: Iterable[Mapping[str, Any]]
) -> tuple[dict[str, float], dict[tuple[int, str], int]]:
    """The stats and throughput changes of writing ``rows`` (in order) over ``old``.

    ``old`` maps task id -> inputs of the row stored now (absent: no row); it is updated as
    the rows are applied, so one id written twice in a batch counts once. For backends that
    compute deltas in Python inside their write transaction (memory, SQL).
    """
    deltas: dict[str, float] = {}
    throughput: dict[tuple[int, str], int] = {}
    for row in rows:
        task_id = str(row["task_id"])
        previous = old.get(task_id)
        new: StatInputs = (str(row["status"]), str(row["queue"]), row.get("duration"))
        add_delta(deltas, previous, new)
        bucket = throughput_key(previous[0] if previous else None, new[0], row.get("end_time"))
        if bucket is not None:
            throughput[(bucket, new[0])] = throughput.get((bucket, new[0]), 0) + 1
        old[task_id] = new
    return {k: v for k, v in deltas.items() if v}, throughput


def removal_deltas(removed: Iterable[StatInputs]) -> dict[str, float]:
    """The stats change of deleting rows with these inputs."""
    deltas: dict[str, float] = {}
    for inputs in removed:
        add_delta(deltas, inputs, None)
    return {k: v for k, v in deltas.items() if v}


@dataclass(slots=True)
class ClusterStats:
    """Counts per status and per queue and the duration histogram, as one snapshot."""

    counts: dict[TaskStatus, int]
    queue_counts: dict[str, dict[TaskStatus, int]]
    durations: DurationHistogram
    throughput: list[tuple[float, int, int]] = field(default_factory=list)
    #: True when the numbers are the backend's (every instance), False for this instance's.
    shared: bool = False

    @property
    def scope(self) -> str:
        return "all instances" if self.shared else "this instance"

    def queue(self, name: str) -> dict[TaskStatus, int]:
        return dict(self.queue_counts.get(name) or dict.fromkeys(TaskStatus, 0))

    @classmethod
    def from_store(cls, store: TaskStore) -> ClusterStats:
        """This instance's own counters (no backend, or a backend that keeps no stats)."""
        queues = {name: store.queue_counts(name) for name in store.queue_names()}
        return cls(store.counts(), queues, store.durations)

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> ClusterStats:
        """From a backend's stored counters (see the module docstring for the keys)."""
        counts = dict.fromkeys(TaskStatus, 0)
        queues: dict[str, dict[TaskStatus, int]] = {}
        histogram = DurationHistogram()
        for key, raw in flat.items():
            value = float(raw)
            kind, _, rest = key.partition("|")
            if kind == "s" and rest in _STATUS_VALUES:
                counts[TaskStatus(rest)] = max(0, round(value))
            elif kind == "q":
                name, _, status = rest.rpartition("|")
                if status in _STATUS_VALUES:
                    per_queue = queues.setdefault(name, dict.fromkeys(TaskStatus, 0))
                    per_queue[TaskStatus(status)] = max(0, round(value))
            elif kind == "h" and rest.isdigit() and int(rest) < len(histogram.counts):
                histogram.counts[int(rest)] = max(0, round(value))
        histogram.total = sum(histogram.counts)
        histogram.sum = max(0.0, float(flat.get("hsum", 0.0))) if histogram.total else 0.0
        return cls(counts, queues, histogram, shared=True)


def throughput_samples(
    buckets: Iterable[tuple[int, int, int]], succeeded: int, failed: int, now: float
) -> list[tuple[float, int, int]]:
    """Cumulative (time, succeeded, failed) samples at the end of each bucket, newest last,
    built backwards from today's totals so the dashboard's rates are the bucket counts."""
    per_bucket = {b: (s, f) for b, s, f in buckets}
    last = int(now // THROUGHPUT_BUCKET)
    first = max(min(per_bucket, default=last) - 1, last - THROUGHPUT_POINTS + 1)
    samples: list[tuple[float, int, int]] = []
    s_total, f_total = succeeded, failed
    for bucket in range(last, min(first, last - 1) - 1, -1):
        samples.append((round(min(now, (bucket + 1) * THROUGHPUT_BUCKET), 3), s_total, f_total))
        s, f = per_bucket.get(bucket, (0, 0))
        s_total, f_total = max(0, s_total - s), max(0, f_total - f)
    samples.reverse()
    return samples
