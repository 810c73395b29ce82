"""Durability: the parts a manager with a backend has only while it runs.

Made whole in ``startup()`` and dropped at the end of ``shutdown()``, so no part sits half wired:
while it exists every piece is there, and without it there is no persister, recovery, key guard
or cluster to check one by one. Parts built before startup (the dispatcher, the enqueuer) reach
it through a callable they are given when they are made.
"""

from __future__ import annotations

from dataclasses import dataclass

from .cluster import Cluster
from .dispatch.keys import KeyGuard
from .persistence import Persister
from .recovery import Recovery


@dataclass(frozen=True, slots=True)
class Durability:
    """The running manager's journal writer, recovery, cross-instance keys and presence."""

    persister: Persister
    recovery: Recovery
    cluster: Cluster
    # Cross-instance idempotency: only a shared backend needs it (see dispatch/keys.py).
    key_guard: KeyGuard | None
