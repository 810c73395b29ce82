"""What the command groups share: exit codes, the backend options, output and errors.

# No ``from __future__ import annotations`` in the command modules: typer reads the
# annotations of the commands at runtime.

Exit codes (documented in docs/operations.md):

====  ==========================================================================
0     done
1     error: the backend is unreachable, the configuration is invalid, a write failed
2     usage: a bad option or argument (typer's own code for usage errors too)
3     not found: no task with that id
4     refused: the task's state does not allow it (retry a success, cancel a held task)
5     incomplete: done, but some items could not be processed (undecryptable payloads)
6     damaged: ``taskflow db check`` found damage in the database file
====  ==========================================================================
"""

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from ..backends.base import TaskBackend
from ..errors import BackendError, ConfigurationError

T = TypeVar("T")
PIPE_WIDTH = 200


class ExitCode(IntEnum):
    """The ``taskflow`` command's exit codes."""

    OK = 0
    ERROR = 1
    USAGE = 2
    NOT_FOUND = 3
    REFUSED = 4
    INCOMPLETE = 5
    DAMAGED = 6


class CommandError(Exception):
    """Ends a command with a message on stderr and an exit code."""

    def __init__(self, message: str, code: ExitCode = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.code = code


DbOption = Annotated[
    Path | None,
    typer.Option("--db", help="The app's SQLite file (instead of the configured backend)."),
]
RedisOption = Annotated[
    str | None,
    typer.Option(
        "--redis",
        help="Redis URL (instead of the configured backend).",
        envvar="TASKFLOW_REDIS_URL",
    ),
]
PrefixOption = Annotated[
    str | None, typer.Option("--prefix", help="Redis key prefix (default: configured or taskflow).")
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", help="YAML configuration (default: $TASKFLOW_CONFIG or config/taskflow.yaml)."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


class BackendChoice:
    """Where a command reads and writes: ``--db``, ``--redis`` or the configured backend."""

    def __init__(
        self,
        db: Path | None = None,
        redis: str | None = None,
        prefix: str | None = None,
        config: Path | None = None,
    ) -> None:
        if db is not None and redis is not None:
            raise CommandError("give --db or --redis, not both", ExitCode.USAGE)
        self.db = db
        self.redis = redis
        self.prefix = prefix
        self.config = config

    def build(self) -> TaskBackend:
        from ..backends.factory import build_backend

        if self.db is not None:
            if not self.db.is_file():
                raise CommandError(f"no SQLite database at {self.db}")
            return build_backend("sqlite", path=self.db)
        if self.redis is not None:
            return build_backend("redis", url=self.redis, prefix=self.prefix or "taskflow")
        settings = load_settings(self.config)
        backend = settings.backend
        if backend.kind == "sqlite":
            if not backend.sqlite.path.is_file():
                raise CommandError(f"no SQLite database at {backend.sqlite.path} (backend.sqlite)")
            return build_backend("sqlite", path=backend.sqlite.path)
        if backend.kind == "redis":
            return build_backend(
                "redis",
                url=str(backend.redis.url),
                prefix=self.prefix or backend.redis.prefix,
                socket_timeout=backend.redis.socket_timeout,
            )
        if backend.kind in ("postgres", "mysql"):
            from ..di.containers import make_sql_backend

            return make_sql_backend(backend.kind, getattr(backend, backend.kind))
        raise CommandError(
            "the configured backend is 'memory': nothing persists outside the app's process. "
            "Pass --db PATH or --redis URL, or configure backend.kind."
        )


def load_settings(config: Path | None) -> Any:
    """``TaskflowSettings`` from ``config`` (or the default sources); errors exit 1."""
    from ..di.settings import TaskflowSettings

    try:
        return TaskflowSettings(config)
    except ConfigurationError as exc:
        raise CommandError(str(exc)) from None


@asynccontextmanager
async def opened(choice: BackendChoice) -> AsyncIterator[TaskBackend]:
    backend = choice.build()
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


def run(body: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run an async command body; known failures become a message and an exit code."""
    try:
        return asyncio.run(body())
    except CommandError as exc:
        fail(str(exc), exc.code)
    except (BackendError, ConfigurationError) as exc:
        fail(str(exc), ExitCode.ERROR)


def fail(message: str, code: ExitCode) -> NoReturn:
    err_console().print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    raise typer.Exit(int(code))


def out_console() -> Console:
    # Made per call: tests (CliRunner) swap sys.stdout, and a console binds its file. Piped
    # output gets a wide table so ids are never folded for grep.
    width = None if sys.stdout.isatty() else PIPE_WIDTH
    return Console(file=sys.stdout, highlight=False, soft_wrap=False, width=width)


def err_console() -> Console:
    return Console(file=sys.stderr, highlight=False)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title, show_lines=False)
    for name in columns:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    out_console().print(table)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(value: str | None, *, now: datetime | None = None) -> datetime | None:
    """``"6h"``, ``"30m"``, ``"2d"``... before now, or an ISO timestamp; None stays None."""
    if value is None:
        return None
    match = _DURATION.match(value)
    if match:
        seconds = float(match.group(1)) * _UNIT[match.group(2)]
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(
            f"--since must be a duration like 6h, 30m, 2d or an ISO time, got {value!r}",
            ExitCode.USAGE,
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def short(text: str | None, width: int = 60) -> str:
    """The first line of ``text``, cut to ``width`` characters."""
    if not text:
        return ""
    line = text.splitlines()[0]
    return line if len(line) <= width else line[: width - 1] + "…"
