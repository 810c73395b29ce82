"""``taskflow dead-letters replay``: run failed tasks again, in bulk.

Each failed record in the window becomes a new, unowned journal entry (same arguments, even
encrypted ones: the payload is copied, no key is needed; tag ``retry_of`` names the original).
A running instance claims them at its next periodic claim, or the next start does. Running the
command twice replays twice: look first with ``--dry-run``.
"""

from typing import Annotated

import typer

from ..backends.base import RecordQuery, TaskBackend
from ..models import TaskRecord
from .common import (
    BackendChoice,
    ConfigOption,
    DbOption,
    JsonOption,
    PrefixOption,
    RedisOption,
    opened,
    parse_since,
    print_json,
    print_table,
    run,
    short,
)
from .tasks import journal_again

group = typer.Typer(help="Failed tasks: look at them and run them again.", no_args_is_help=True)


@group.command("replay")
def replay(
    since: Annotated[str, typer.Option(help="Failed tasks created within, e.g. 6h, 2d.")],
    func: Annotated[str | None, typer.Option("--func", help="Only this task name.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many tasks.")] = 10_000,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List, do not replay.")] = False,
    as_json: JsonOption = False,
    db: DbOption = None,
    redis: RedisOption = None,
    prefix: PrefixOption = None,
    config: ConfigOption = None,
) -> None:
    """Journal every failed task of the window again (a running app claims them)."""

    async def body() -> None:
        async with opened(BackendChoice(db, redis, prefix, config)) as backend:
            failed = await failed_records(backend, since, func, limit)
            entries = [] if dry_run else await journal_again(backend, failed, source="replay")
        new_ids: list[str | None] = [e.task_id for e in entries] or [None] * len(failed)
        if as_json:
            print_json(
                {
                    "dry_run": dry_run,
                    "count": len(failed),
                    "tasks": [
                        {"task_id": r.task_id, "new_task_id": new}
                        for r, new in zip(failed, new_ids, strict=True)
                    ],
                }
            )
            return
        rows = [
            (r.task_id, new or "", r.func_name, short(r.error, 50))
            for r, new in zip(failed, new_ids, strict=True)
        ]
        print_table(None, ["failed task", "new task", "task", "error"], rows)
        verb = "would replay" if dry_run else "replayed"
        print(f"{verb} {len(failed)} failed task(s)")

    run(body)


async def failed_records(
    backend: TaskBackend, since: str, func: str | None, limit: int
) -> list[TaskRecord]:
    """Failed records created since ``since``, newest first, at most ``limit``."""
    found: list[TaskRecord] = []
    cursor = None
    start = parse_since(since)
    while len(found) < limit:
        page = await backend.query_records(
            RecordQuery(
                status="failed",
                func_name=func,
                since=start,
                limit=min(500, limit - len(found)),
                cursor=cursor,
            )
        )
        found += page.records
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    return found
