"""Checks of the per-call options of ``add_task`` and ``schedule_once``.

A leaf module: the enqueuer and the scheduler both validate here, so declaring schedules
(``registry`` -> ``scheduling``) never imports the dispatcher.
"""

from __future__ import annotations

from typing import Any


def check_tags(tags: Any) -> dict[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise ValueError(f"tags must be a dict of str to str, got {tags!r}")
    return dict(tags)


def check_call_options(
    *, idempotency_key: Any = None, priority: Any = None, queue: Any = None, tags: Any = None
) -> dict[str, str]:
    """Validate the per-call options of ``add_task``/``schedule_once``; returns clean tags."""
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str) or not idempotency_key
    ):
        raise ValueError(f"idempotency_key must be a non-empty string, got {idempotency_key!r}")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        raise ValueError(f"priority must be an int or None, got {priority!r}")
    if queue is not None and (not isinstance(queue, str) or not queue):
        raise ValueError(f"queue must be a non-empty string or None, got {queue!r}")
    return check_tags(tags)
