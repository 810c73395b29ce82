"""``taskflow tasks``: list, show, retry and cancel tasks stored in a backend.

The command talks to the backend, not to a running app. Retries (and ``dead-letters
replay``) write a new, unowned journal entry: a running instance claims it at its next
periodic claim (every ``heartbeat_interval``, 10 s by default), or the next instance to start
claims it at startup. Cancel removes a journaled task that no instance holds.
"""

import contextlib
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from ..backends.base import JournalEntry, RecordQuery, TaskBackend
from ..ids import new_task_id
from ..models import RETRYABLE_STATUSES, TaskRecord, TaskSource, TaskStatus
from ..serialization import decode_call, decode_result, encode_call, result_view
from .common import (
    BackendChoice,
    CommandError,
    ConfigOption,
    DbOption,
    ExitCode,
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

group = typer.Typer(
    help="Inspect and act on stored tasks (history and journal).", no_args_is_help=True
)

TaskId = Annotated[str, typer.Argument(help="The full task id.")]


@group.command("list")
def list_tasks(
    status: Annotated[TaskStatus | None, typer.Option(help="Only this status.")] = None,
    func: Annotated[str | None, typer.Option("--func", help="Only this task name.")] = None,
    queue: Annotated[str | None, typer.Option(help="Only this queue.")] = None,
    search: Annotated[str | None, typer.Option(help="Text in the name, id or error.")] = None,
    since: Annotated[str | None, typer.Option(help="Created within, e.g. 6h, 2d.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Rows per page.")] = 50,
    cursor: Annotated[str | None, typer.Option(help="Next-page cursor of a previous list.")] = None,
    journal: Annotated[
        bool, typer.Option("--journal", help="List the journal (unfinished tasks) instead.")
    ] = False,
    as_json: JsonOption = False,
    db: DbOption = None,
    redis: RedisOption = None,
    prefix: PrefixOption = None,
    config: ConfigOption = None,
) -> None:
    """List stored tasks, newest first; --journal lists unfinished, journaled tasks."""

    async def body() -> None:
        async with opened(BackendChoice(db, redis, prefix, config)) as backend:
            if journal:
                show_journal(await all_entries(backend), as_json)
                return
            query = RecordQuery(
                status=status.value if status else None,
                func_name=func,
                queue=queue,
                text=search,
                since=parse_since(since),
                limit=limit,
                cursor=cursor,
            )
            page = await backend.query_records(query)
        show_records(page.records, page.next_cursor, as_json)

    run(body)


@group.command("show")
def show_task(
    task_id: TaskId,
    args: Annotated[
        bool, typer.Option("--args", help="Include arguments (unless encrypted).")
    ] = False,
    reveal: Annotated[
        bool, typer.Option("--reveal", help="Decrypt a sealed error with the configured keys.")
    ] = False,
    as_json: JsonOption = False,
    db: DbOption = None,
    redis: RedisOption = None,
    prefix: PrefixOption = None,
    config: ConfigOption = None,
) -> None:
    """Show one task: its record, or its journal entry while it is unfinished."""

    async def body() -> None:
        async with opened(BackendChoice(db, redis, prefix, config)) as backend:
            record = await backend.get_record(task_id)
            entry = await find_entry(backend, task_id)
        if record is None and entry is None:
            raise CommandError(f"no task with id {task_id!r}", ExitCode.NOT_FOUND)
        data = record.to_dict(include_args=args) if record is not None else entry_dict(entry)
        if record is not None and record.has_result:
            data["result"] = shown_result(record)
        if reveal and record is not None and record.encrypted_error is not None:
            data["error"], data["stacktrace"] = reveal_error(record, config)
        if entry is not None:
            data["journal"] = {"owner": entry.owner, "requeue": entry.requeue}
        if as_json:
            print_json(data)
        else:
            print_table(
                f"task {task_id}",
                ["field", "value"],
                [(k, v) for k, v in data.items() if v not in (None, [], {})],
            )

    run(body)


@group.command("retry")
def retry_task(
    task_id: TaskId,
    as_json: JsonOption = False,
    db: DbOption = None,
    redis: RedisOption = None,
    prefix: PrefixOption = None,
    config: ConfigOption = None,
) -> None:
    """Run a failed, interrupted or cancelled task again (a new task, same arguments)."""

    async def body() -> None:
        async with opened(BackendChoice(db, redis, prefix, config)) as backend:
            record = await backend.get_record(task_id)
            if record is None:
                raise CommandError(f"no task with id {task_id!r}", ExitCode.NOT_FOUND)
            if record.status not in RETRYABLE_STATUSES:
                raise CommandError(
                    f"only failed, interrupted or cancelled tasks can be retried; {task_id} is "
                    f"{record.status.value}",
                    ExitCode.REFUSED,
                )
            (entry,) = await journal_again(backend, [record], source="retry")
        if as_json:
            print_json({"task_id": entry.task_id, "retry_of": task_id})
        else:
            print(
                f"queued {entry.task_id} (retry of {task_id}); a running app claims it "
                "within its heartbeat interval, or the next start does"
            )

    run(body)


@group.command("cancel")
def cancel_task(
    task_id: TaskId,
    force: Annotated[
        bool, typer.Option("--force", help="Also when an instance holds it (that instance gone).")
    ] = False,
    as_json: JsonOption = False,
    db: DbOption = None,
    redis: RedisOption = None,
    prefix: PrefixOption = None,
    config: ConfigOption = None,
) -> None:
    """Cancel a journaled task no running instance holds (a live one: use the app's API)."""

    async def body() -> None:
        async with opened(BackendChoice(db, redis, prefix, config)) as backend:
            entry = await find_entry(backend, task_id)
            if entry is None:
                raise await not_cancellable(backend, task_id)
            if entry.owner is not None and not force:
                raise CommandError(
                    f"task {task_id} is held by instance {entry.owner} and may be running: "
                    "cancel it through that app (POST <admin path>/{id}/cancel), or pass "
                    "--force if that instance is gone",
                    ExitCode.REFUSED,
                )
            await backend.journal_remove([task_id])
            await backend.save_records([cancelled_record(entry)])
        if as_json:
            print_json({"task_id": task_id, "status": "cancelled"})
        else:
            print(f"cancelled {task_id}")

    run(body)


# ---- helpers shared with dead-letters --------------------------------------------------------


async def journal_again(
    backend: TaskBackend, records: list[TaskRecord], *, source: TaskSource
) -> list[JournalEntry]:
    """New unowned journal entries that run ``records`` again (same arguments, new ids)."""
    now = datetime.now(UTC)
    entries = [
        JournalEntry(
            task_id=new_task_id(),
            func_name=r.func_name,
            payload=r.encrypted_payload or encode_call(r.args, r.kwargs),
            encrypted=r.encrypted_payload is not None,
            created_at=now,
            tags={**r.tags, "retry_of": r.task_id},
            priority=r.priority,
            queue=r.queue,
            source=source,
            requeue=True,
        )
        for r in records
    ]
    owner = f"taskflow-cli-{uuid.uuid4().hex[:8]}"
    await backend.journal_put(entries, owner)
    await backend.journal_release(owner)  # unowned: the next claim takes them
    return entries


async def all_entries(backend: TaskBackend) -> list[JournalEntry]:
    entries: list[JournalEntry] = []
    cursor = None
    while True:
        page, cursor = await backend.journal_page(cursor, 500)
        entries += page
        if cursor is None:
            return entries


async def find_entry(backend: TaskBackend, task_id: str) -> JournalEntry | None:
    return next((e for e in await all_entries(backend) if e.task_id == task_id), None)


async def not_cancellable(backend: TaskBackend, task_id: str) -> CommandError:
    record = await backend.get_record(task_id)
    if record is None:
        return CommandError(f"no task with id {task_id!r}", ExitCode.NOT_FOUND)
    if record.status.finished:
        return CommandError(
            f"task {task_id} already ended: {record.status.value}", ExitCode.REFUSED
        )
    return CommandError(
        f"task {task_id} is {record.status.value} in a running app and not journaled: cancel it "
        "through that app's API",
        ExitCode.REFUSED,
    )


def cancelled_record(entry: JournalEntry) -> TaskRecord:
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    if not entry.encrypted:
        # Unreadable arguments: the record still says what ran, without them.
        with contextlib.suppress(ValueError):
            args, kwargs = decode_call(entry.payload)
    now = datetime.now(UTC)
    return TaskRecord(
        task_id=entry.task_id,
        func_name=entry.func_name,
        status=TaskStatus.CANCELLED,
        args=args,
        kwargs=kwargs,
        created_at=entry.created_at,
        end_time=now,
        retries_used=entry.retries_used,
        error="cancelled from the command line",
        idempotency_key=entry.idempotency_key,
        tags=entry.tags,
        source=entry.source,
        priority=entry.priority,
        queue=entry.queue,
        encrypted_payload=entry.payload if entry.encrypted else None,
    )


def reveal_error(record: TaskRecord, config: Any) -> tuple[str | None, str | None]:
    from ..redaction import ErrorPolicy
    from .keys import configured_cipher

    return ErrorPolicy(None, configured_cipher([], config)).reveal(record)


def entry_dict(entry: JournalEntry | None) -> dict[str, Any]:
    assert entry is not None
    return {
        "task_id": entry.task_id,
        "func_name": entry.func_name,
        "status": "journaled",
        "created_at": entry.created_at.isoformat(),
        "queue": entry.queue,
        "priority": entry.priority,
        "tags": entry.tags,
        "source": entry.source,
        "retries_used": entry.retries_used,
        "requeue_count": entry.requeue_count,
        "encrypted": entry.encrypted,
    }


def show_records(records: list[TaskRecord], next_cursor: str | None, as_json: bool) -> None:
    if as_json:
        print_json({"tasks": [r.to_dict() for r in records], "next_cursor": next_cursor})
        return
    rows = [
        (
            r.task_id,
            r.func_name,
            r.status.value,
            r.queue,
            _time(r.created_at),
            f"{r.duration:.2f}s" if r.duration is not None else "",
            r.retries_used,
            short(r.error),
        )
        for r in records
    ]
    print_table(
        None, ["id", "task", "status", "queue", "created", "took", "retries", "error"], rows
    )
    if next_cursor:
        print(f"more: --cursor {next_cursor}")


def show_journal(entries: list[JournalEntry], as_json: bool) -> None:
    if as_json:
        print_json({"journal": [entry_dict(e) | {"owner": e.owner} for e in entries]})
        return
    rows = [
        (
            e.task_id,
            e.func_name,
            e.owner or "(unowned)",
            e.queue,
            _time(e.created_at),
            "yes" if e.requeue else "no",
        )
        for e in entries
    ]
    print_table("journal", ["id", "task", "owner", "queue", "created", "requeue"], rows)


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def shown_result(record: TaskRecord) -> Any:
    """A kept result as the task API shows it; a sealed one stays sealed here."""
    if record.result_data is None:
        return {"type": "encrypted"}
    try:
        return result_view(decode_result(record.result_data))
    except ValueError as exc:
        return {"type": "unreadable", "error": str(exc)}
