"""``taskflow db check``: run SQLite's own integrity check on a taskflow database file.

Reads the file only (opened read-only), so it is safe beside a running app. Exit code 0 when the
file is sound, 6 (damaged) when the check found problems, 1 when it is no database at all.
"""

import sqlite3
from pathlib import Path
from typing import Annotated

import typer

from ..backends.sqlite_check import DatabaseReport, inspect_database
from .common import CommandError, ExitCode, JsonOption, print_json, print_table, run

group = typer.Typer(help="SQLite database files: check them for damage.", no_args_is_help=True)


@group.command("check")
def check(
    path: Annotated[Path, typer.Argument(help="The SQLite file (snapshot_db).")],
    full: Annotated[
        bool,
        typer.Option("--full", help="PRAGMA integrity_check (slower: also every index)."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Check the file (PRAGMA quick_check, or integrity_check with --full) and count its rows."""

    async def body() -> DatabaseReport:
        try:
            return await inspect_database(path, full=full)
        except FileNotFoundError as exc:
            raise CommandError(str(exc)) from None
        except sqlite3.DatabaseError as exc:
            raise CommandError(f"{path} is not a readable SQLite database: {exc}") from None

    report = run(body)
    if as_json:
        print_json(report.as_dict())
    else:
        _print(report)
    if report.damaged:
        raise typer.Exit(int(ExitCode.DAMAGED))


def _print(report: DatabaseReport) -> None:
    rows = [(table, count) for table, count in report.tables.items()]
    print_table(None, ["table", "rows"], rows)
    print(f"{report.page_count} pages, {report.free_pages} free, auto_vacuum={report.auto_vacuum}")
    if not report.damaged:
        print(f"{report.path}: ok (PRAGMA {report.check})")
        return
    print(f"{report.path}: DAMAGED (PRAGMA {report.check}), {len(report.problems)} problem(s):")
    for problem in report.problems:
        print(f"  {problem}")
