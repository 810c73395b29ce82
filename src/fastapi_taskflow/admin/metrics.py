"""Metrics views: the JSON the dashboard draws and the Prometheus text format.

Everything comes from kept counters, never from a scan: the backend's (the same on every
instance) when it keeps stats, else this instance's store. With a backend the throughput comes
from its per-bucket counts, read at most once per ``SHARED_THROUGHPUT_MAX_AGE`` (the counts are
read on every request; the throughput series is drawn per 5 s bucket, so a second-old copy
draws the same chart and saves a backend round trip per request); without one, the series
samples the success and failure counters at most every ``bucket`` seconds when someone asks,
so it costs nothing per task.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..models import TaskStatus
from ..queries import queue_snapshot

if TYPE_CHECKING:
    from ..manager import TaskManager
    from ..stats import ClusterStats
    from ..store import DurationHistogram

#: Seconds a throughput series read from the backend is served again before it is re-read.
SHARED_THROUGHPUT_MAX_AGE = 1.0

PROMETHEUS_HINT = (
    "the Prometheus endpoint needs prometheus-client: pip install 'fastapi-taskflow[metrics]'"
)


class ThroughputSeries:
    """Samples of (unix time, succeeded so far, failed so far), newest last: this instance's,
    and the last series read from the backend with when (``clock``) it was read."""

    def __init__(
        self,
        bucket: float = 5.0,
        points: int = 180,
        shared_max_age: float = SHARED_THROUGHPUT_MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bucket = bucket
        self.samples: deque[tuple[float, int, int]] = deque(maxlen=points)
        self.shared_max_age = shared_max_age
        self.clock = clock
        self.shared: list[tuple[float, int, int]] = []
        self.shared_read_at = float("-inf")

    def shared_due(self) -> bool:
        """True when the backend's series should be read again."""
        return self.clock() - self.shared_read_at >= self.shared_max_age

    def keep_shared(self, samples: list[tuple[float, int, int]]) -> None:
        self.shared = samples
        self.shared_read_at = self.clock()

    def sample(self, counts: dict[str, Any], now: float | None = None) -> None:
        now = time.time() if now is None else now
        if self.samples and now - self.samples[-1][0] < self.bucket:
            return
        self.samples.append((round(now, 3), int(counts["success"]), int(counts["failed"])))


def histogram_buckets(histogram: DurationHistogram) -> list[list[float]]:
    """Non-empty buckets as ``[upper bound in seconds, count]``."""
    bounds = histogram._BOUNDS
    out: list[list[float]] = []
    for index, count in enumerate(histogram.counts):
        if count:
            upper = bounds[index] if index < len(bounds) else float("inf")
            out.append([round(upper, 6) if upper != float("inf") else -1, count])
    return out


async def dashboard_metrics(manager: TaskManager, series: ThroughputSeries) -> dict[str, Any]:
    """``manager.read_metrics()`` plus the throughput samples and the duration histogram."""
    due = series.shared_due()
    stats = await manager.read_stats(throughput=due)
    if stats.shared and stats.throughput:
        series.keep_shared(stats.throughput)
    elif stats.shared and series.shared:
        stats.throughput = series.shared
    data = manager.metrics_from(stats)
    if not stats.throughput:
        series.sample(data)
        data["throughput"] = [list(s) for s in series.samples]
    data["duration_histogram"] = histogram_buckets(stats.durations)
    return data


def prometheus_text(
    manager: TaskManager, stats: ClusterStats, namespace: str = "taskflow"
) -> tuple[bytes, str]:
    """The metrics (``stats``: see ``TaskManager.read_stats``) in Prometheus' text format and
    its content type; ImportError without the optional dependency."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    class _Collector:
        def collect(self) -> Any:
            counts = stats.counts
            tasks = GaugeMetricFamily(
                f"{namespace}_tasks", "Tasks by status (every instance)", labels=["status"]
            )
            for status in TaskStatus:
                tasks.add_metric([status.value], counts[status])
            yield tasks
            per_queue = GaugeMetricFamily(
                f"{namespace}_queue_tasks", "Tasks by queue and status", labels=["queue", "status"]
            )
            running = GaugeMetricFamily(
                f"{namespace}_queue_running",
                "Tasks running now on this instance, by queue",
                labels=["queue"],
            )
            waiting = GaugeMetricFamily(
                f"{namespace}_queue_waiting",
                "Tasks waiting for a slot on this instance, by queue",
                labels=["queue"],
            )
            for name, queue in queue_snapshot(stats, manager.dispatcher.queues).items():
                for status, count in queue["counts"].items():
                    per_queue.add_metric([name, status], count)
                running.add_metric([name], queue["running"])
                waiting.add_metric([name], queue["waiting"])
            yield per_queue
            yield running
            yield waiting
            yield _histogram(stats.durations, HistogramMetricFamily, namespace)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return generate_latest(registry), CONTENT_TYPE_LATEST


def _histogram(histogram: DurationHistogram, family: Any, namespace: str) -> Any:
    buckets: list[tuple[str, float]] = []
    seen = 0
    bounds = histogram._BOUNDS
    # Every 4th log-scale bound keeps the exposition short (~20 buckets, 1 ms to ~27 h).
    for index, count in enumerate(histogram.counts[: len(bounds)]):
        seen += count
        if index % 4 == 0:
            buckets.append((repr(round(bounds[index], 6)), seen))
    buckets.append(("+Inf", histogram.total))
    return family(
        f"{namespace}_task_duration_seconds",
        "Duration of finished tasks",
        buckets=buckets,
        sum_value=histogram.sum,
    )
