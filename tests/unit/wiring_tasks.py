"""Tasks for tests/unit/test_di_routes.py: one per decorator order, in a module nobody wires."""

from __future__ import annotations

from typing import Any

from dependency_injector.wiring import Provide, inject

from fastapi_taskflow import TaskRegistry

tasks = TaskRegistry()
#: Labels whose first run already failed: each task fails once, then succeeds.
first_runs: set[str] = set()


def fail_first_run(label: str) -> None:
    if label not in first_runs:
        first_runs.add(label)
        raise RuntimeError("the first run fails")


@tasks.task()
@inject
async def greet_recommended(label: str, greeter: Any = Provide["greeter"]) -> str:
    """``@tasks.task()`` above ``@inject``: the registry holds the injecting function."""
    fail_first_run(label)
    return f"{greeter.word()} {label}"


@inject
@tasks.task()
async def greet_inject_outside(label: str, greeter: Any = Provide["greeter"]) -> str:
    """``@inject`` above ``@tasks.task()``: the registry holds the plain function."""
    fail_first_run(label)
    return f"{greeter.word()} {label}"


@tasks.task()
@inject
async def greet_unreached(label: str, greeter: Any = Provide["greeter"]) -> str:
    """In no wired module, imported by name into none."""
    return f"{greeter.word()} {label}"
