"""Command groups of the ``taskflow`` command, each in its own module.

The ``register_*`` functions below are what ``cli.COMMAND_GROUPS`` lists; each imports its
module (and so typer and rich, the ``cli`` extra) only when the command line is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer


def register_tasks(root: typer.Typer) -> None:
    """``taskflow tasks list/show/retry/cancel``."""
    from .tasks import group

    root.add_typer(group, name="tasks")


def register_dead_letters(root: typer.Typer) -> None:
    """``taskflow dead-letters replay``."""
    from .dead_letters import group

    root.add_typer(group, name="dead-letters")


def register_keys(root: typer.Typer) -> None:
    """``taskflow keys generate/rotate``."""
    from .keys import group

    root.add_typer(group, name="keys")


def register_run(root: typer.Typer) -> None:
    """``taskflow run``."""
    from .run import run

    root.command("run")(run)


def register_migrate(root: typer.Typer) -> None:
    """``taskflow migrate``."""
    from .migrate import migrate

    root.command("migrate")(migrate)


def register_db(root: typer.Typer) -> None:
    """``taskflow db check``."""
    from .db import group

    root.add_typer(group, name="db")
