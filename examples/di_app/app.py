"""The FastAPI app: routes, and the container installed around its lifespan."""

from __future__ import annotations

from fastapi import FastAPI

from fastapi_taskflow.di import exit_on_config_error, install

from . import routes
from .containers import AppContainer, build_container


@exit_on_config_error  # a bad setting prints its one clear message, not a server traceback
def create_app(container: AppContainer | None = None) -> FastAPI:
    """Build the app; tests pass their own (overridden) container."""
    container = container or build_container()
    app = FastAPI(title="fastapi-taskflow example")
    app.include_router(routes.router)
    app.state.container = container
    install(app, container)  # starts/stops every resource; mounts TaskAdmin (admin.enabled)
    return app
