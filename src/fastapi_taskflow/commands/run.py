"""``taskflow run``: serve the app with uvicorn (the ``server`` extra)."""

import os
import re
from typing import Annotated

import typer

from .common import ExitCode, fail

#: What ``make run`` serves: the DI example, built by its factory.
DEFAULT_APP = "examples.di_app.app:create_app"
APP_ENV = "TASKFLOW_APP"
_APP_PATTERN = re.compile(r"^[\w.]+:[\w.]+$")


def run(
    app: Annotated[
        str | None,
        typer.Option(
            "--app", help=f"module:attribute of the app (default: ${APP_ENV} or {DEFAULT_APP})."
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to bind.")] = 8000,
    reload: Annotated[bool, typer.Option("--reload", help="Restart on code changes.")] = False,
    factory: Annotated[
        bool, typer.Option("--factory", help="The target is a function that returns the app.")
    ] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "info",
) -> None:
    """Serve the app (its lifespan starts the task manager) with uvicorn."""
    named = app or os.environ.get(APP_ENV)
    target = named or DEFAULT_APP
    factory = factory or named is None  # the default target is a factory
    if not _APP_PATTERN.match(target):
        fail(f"--app must look like package.module:attribute, got {target!r}", ExitCode.USAGE)
    try:
        import uvicorn
    except ModuleNotFoundError:
        fail("taskflow run needs uvicorn: pip install 'fastapi-taskflow[server]'", ExitCode.ERROR)
    # app_dir ".": import the target from the working folder, as the uvicorn command does.
    uvicorn.run(
        target,
        host=host,
        port=port,
        reload=reload,
        log_level=log_level,
        factory=factory,
        app_dir=".",
    )
