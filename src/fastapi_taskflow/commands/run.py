"""``taskflow run``: serve the app with uvicorn (the ``server`` extra)."""

import os
import re
from typing import Annotated

import typer

from .common import ExitCode, fail

DEFAULT_APP = "examples.app:app"
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
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "info",
) -> None:
    """Serve the app (its lifespan starts the task manager) with uvicorn."""
    target = app or os.environ.get(APP_ENV) or DEFAULT_APP
    if not _APP_PATTERN.match(target):
        fail(f"--app must look like package.module:attribute, got {target!r}", ExitCode.USAGE)
    try:
        import uvicorn
    except ModuleNotFoundError:
        fail("taskflow run needs uvicorn: pip install 'fastapi-taskflow[server]'", ExitCode.ERROR)
    uvicorn.run(target, host=host, port=port, reload=reload, log_level=log_level)
