"""The ``taskflow`` command. Each command group registers itself in :data:`COMMAND_GROUPS`.

# No ``from __future__ import annotations`` here: typer reads the annotations of the commands
# at runtime, and typer itself is imported lazily (it is an optional extra).

Needs the ``cli`` extra (``pip install 'fastapi-taskflow[cli]'``); ``main()`` says so when it
is missing. Add a group (``tasks``, ``keys``, ``run``...) by writing a ``register_<name>``
function that adds a ``typer.Typer`` to the root app, and listing it in ``COMMAND_GROUPS``.
"""

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from .commands import (
    register_db,
    register_dead_letters,
    register_keys,
    register_migrate,
    register_run,
    register_tasks,
)

if TYPE_CHECKING:
    import typer


def register_config(root: "typer.Typer") -> None:
    """``taskflow config ...``: inspect and validate configuration."""
    import typer

    group = typer.Typer(help="Inspect and validate taskflow configuration.", no_args_is_help=True)

    @group.command("check")
    def check(
        path: Annotated[
            Path | None,
            typer.Argument(help="YAML file (default: $TASKFLOW_CONFIG or config/taskflow.yaml)."),
        ] = None,
        output: Annotated[str, typer.Option("--format", help="yaml or json.")] = "yaml",
    ) -> None:
        """Print the effective configuration (secrets masked), or every problem (exit 1)."""
        if output not in ("yaml", "json"):
            raise typer.BadParameter(f"must be yaml or json, got {output!r}", param_hint="--format")
        raise typer.Exit(config_check(path, output))

    root.add_typer(group, name="config")


COMMAND_GROUPS: "list[Callable[[typer.Typer], None]]" = [register_config]
COMMAND_GROUPS += [register_tasks, register_dead_letters, register_keys, register_run, register_db]
COMMAND_GROUPS += [register_migrate]


def config_check(path: Path | None, output: str = "yaml") -> int:
    """The body of ``taskflow config check``; returns the exit code."""
    from .di.settings import TaskflowSettings, describe_source
    from .errors import ConfigurationError

    try:
        settings = TaskflowSettings(path)
    except ConfigurationError as exc:
        print(exc, file=sys.stderr)
        return 1
    data = settings.masked_dump()
    if output == "json":
        # stdout stays pure JSON (for jq and scripts); where it came from goes to stderr.
        print(f"# {describe_source(path)}", file=sys.stderr)
        print(json.dumps(data, indent=2))
    else:
        import yaml

        print(f"# {describe_source(path)}")
        print(yaml.safe_dump(data, sort_keys=False).rstrip())
    return 0


def build_app() -> "typer.Typer":
    import typer

    root = typer.Typer(name="taskflow", help="fastapi-taskflow command line.", no_args_is_help=True)
    for register in COMMAND_GROUPS:
        register(root)
    return root


def main() -> None:
    """Entry point of the ``taskflow`` script."""
    try:
        app = build_app()
    except ModuleNotFoundError as exc:
        if exc.name not in ("typer", "click", "rich"):
            raise
        print("the taskflow command needs: pip install 'fastapi-taskflow[cli]'", file=sys.stderr)
        raise SystemExit(1) from None
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
