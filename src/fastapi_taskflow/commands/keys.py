"""``taskflow keys``: make a new Fernet key; re-encrypt stored payloads with the first key.

Runbook (docs/operations.md): put the new key first in ``encryption.keys`` keeping the old
ones, restart every instance, run ``taskflow keys rotate`` (again until it rotates nothing),
then drop the old keys.
"""

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from ..crypto import ArgumentCipher
from ..keyrotation import RotationReport, rotate_keys
from .common import (
    BackendChoice,
    CommandError,
    ConfigOption,
    DbOption,
    ExitCode,
    JsonOption,
    PrefixOption,
    RedisOption,
    err_console,
    load_settings,
    opened,
    print_json,
    print_table,
    run,
)

group = typer.Typer(help="Encryption keys: generate, rotate.", no_args_is_help=True)

KeyOption = Annotated[
    list[str] | None,
    typer.Option(
        "--key",
        help="A Fernet key; repeat, newest first (default: encryption.keys). "
        "Prefer TASKFLOW_ENCRYPTION__KEYS over the command line.",
        show_default=False,
    ),
]


@group.command("generate")
def generate(as_json: JsonOption = False) -> None:
    """Print a new Fernet key (put it first in encryption.keys)."""
    from cryptography.fernet import Fernet

    key = Fernet.generate_key().decode()
    if as_json:
        print_json({"key": key})
    else:
        print(key)


@group.command("rotate")
def rotate(
    key: KeyOption = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Items per batch (and per save).")] = 500,
    restart: Annotated[
        bool, typer.Option("--restart", help="Ignore a saved position; start from the top.")
    ] = False,
    as_json: JsonOption = False,
    db: DbOption = None,
    redis: RedisOption = None,
    prefix: PrefixOption = None,
    config: ConfigOption = None,
) -> None:
    """Re-encrypt the journal and history with the first key; resumable; exit 5 if some
    payloads could not be decrypted."""

    async def body() -> RotationReport:
        cipher = configured_cipher(key or [], config)
        async with opened(BackendChoice(db, redis, prefix, config)) as backend:
            if as_json:
                return await rotate_keys(backend, cipher, batch_size=batch_size, restart=restart)
            with ProgressBars() as bars:
                return await rotate_keys(
                    backend, cipher, batch_size=batch_size, restart=restart, progress=bars.update
                )

    report = run(body)
    show_report(report, as_json)
    if report.skipped_undecryptable:
        raise typer.Exit(int(ExitCode.INCOMPLETE))


def configured_cipher(keys: list[str], config: Path | None) -> ArgumentCipher:
    """The cipher of ``--key`` options, else of the configured ``encryption.keys``."""
    if not keys:
        keys = [k.get_secret_value() for k in load_settings(config).encryption.keys]
    if not keys:
        raise CommandError(
            "no encryption keys: configure encryption.keys "
            "(TASKFLOW_ENCRYPTION__KEYS) or pass --key NEW --key OLD",
            ExitCode.USAGE,
        )
    try:
        return ArgumentCipher(keys)
    except ValueError as exc:
        raise CommandError(str(exc), ExitCode.USAGE) from None


class ProgressBars:
    """One rich progress bar per phase (journal, history), on stderr."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<8}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=err_console(),
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> "ProgressBars":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, phase: str, done: int, total: int | None) -> None:
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(phase, total=total)
        self.progress.update(self.tasks[phase], completed=done, total=total or done)


def show_report(report: RotationReport, as_json: bool) -> None:
    data: dict[str, Any] = report.to_dict()
    if as_json:
        print_json(data)
        return
    rows = [
        (name.replace("_", " "), data[name])
        for name in (
            "total",
            "rotated",
            "unchanged",
            "skipped_undecryptable",
            "vanished",
            "resumed",
        )
    ]
    print_table("key rotation", ["", "count"], rows)
    if report.undecryptable_ids:
        print("could not decrypt (first ids): " + ", ".join(report.undecryptable_ids))
