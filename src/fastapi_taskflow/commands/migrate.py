"""``taskflow migrate``: import fastapi-taskflow 0.12's data now, and say what was imported.

The same import runs at an app's first start (``legacy.py``); this command does it on demand,
for instance before the first deployment, and reports the counts. Arguments that 0.12 sealed
are opened with the configured ``encryption.keys`` (or ``--key``). It imports once: a second
run reports what the first one imported.
"""

from typing import Annotated

import typer

from ..legacy import LegacyImport, import_legacy
from .common import (
    BackendChoice,
    ConfigOption,
    DbOption,
    ExitCode,
    JsonOption,
    PrefixOption,
    RedisOption,
    load_settings,
    opened,
    out_console,
    print_json,
    run,
)
from .keys import configured_cipher


def migrate(
    key: Annotated[
        list[str] | None,
        typer.Option("--key", help="A Fernet key of 0.12's encrypt_args_key (repeatable)."),
    ] = None,
    as_json: JsonOption = False,
    db: DbOption = None,
    redis: RedisOption = None,
    prefix: PrefixOption = None,
    config: ConfigOption = None,
) -> None:
    """Import fastapi-taskflow 0.12's history and waiting tasks into this version's tables."""

    async def body() -> LegacyImport:
        keys = key or [k.get_secret_value() for k in load_settings(config).encryption.keys]
        async with opened(BackendChoice(db, redis, prefix, config)) as backend:
            return await import_legacy(backend, configured_cipher(keys, config) if keys else None)

    report = run(body)
    if as_json:
        print_json({"status": "already imported" if report.already else "imported",
                    "records": report.records, "waiting": report.waiting,
                    "failed": report.failed, "unreadable": report.unreadable,
                    "imported_at": report.imported_at})  # fmt: skip
    elif report.already:
        out_console().print(f"already imported ({report.imported_at}): {report.summary()}")
    elif report.found:
        out_console().print(f"imported: {report.summary()}")
    else:
        out_console().print("no fastapi-taskflow 0.12 data found")
    if not report.already and (report.unreadable or report.failed):
        raise typer.Exit(int(ExitCode.INCOMPLETE))
