"""Task ids: canonical random UUID4 strings, unique across buffer refills and threads."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

from fastapi_taskflow.ids import new_task_id


def test_ids_are_canonical_uuid4_strings():
    """Every id parses as a version-4, RFC 4122 UUID and prints back identically."""
    for _ in range(2000):  # several 512-id buffer refills
        task_id = new_task_id()
        parsed = uuid.UUID(task_id)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == task_id


def test_ids_are_unique_across_threads():
    """Threads taking ids at once (sync routes) never get the same one."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        batches = list(pool.map(lambda _: [new_task_id() for _ in range(1500)], range(8)))
    ids = [task_id for batch in batches for task_id in batch]
    assert len(set(ids)) == len(ids) == 12_000
