"""Plain-FastAPI wiring: lifespan hooks and giving ``BackgroundTasks`` params managed tasks.

Nothing here patches FastAPI itself: ``install`` rewrites the dependants of one app's routes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_dependant
from fastapi.routing import APIRoute

logger = logging.getLogger("fastapi_taskflow")

_HOOKED = "_taskflow_lifespan_managers"
_STARTING = "_taskflow_lifespan_starting"


Hook = tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]


def add_lifespan(
    app: FastAPI,
    key: object,
    startup: Callable[[], Awaitable[None]],
    shutdown: Callable[[], Awaitable[None]],
) -> bool:
    """Run ``startup`` before and ``shutdown`` after the app's own lifespan. Once per key.

    Added while another hook's startup runs (``TaskAdmin`` mounted by the DI container at
    startup), the pair also joins the lifespan already under way: its startup runs right after
    that hook's, its shutdown before that hook's. Otherwise it would only run from the next
    lifespan on, which a server never has.
    """
    hooked: set[int] = app.state._state.setdefault(_HOOKED, set())
    if id(key) in hooked:
        return False
    hooked.add(id(key))
    starting: list[list[Hook]] = app.state._state.setdefault(_STARTING, [])
    if starting:
        starting[-1].append((startup, shutdown))
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(asgi_app: Any) -> AsyncIterator[Any]:
        async with hooks_around(app, startup, shutdown), inner(asgi_app) as state:
            yield state

    app.router.lifespan_context = lifespan
    return True


@asynccontextmanager
async def hooks_around(
    app: FastAPI,
    startup: Callable[[], Awaitable[None]],
    shutdown: Callable[[], Awaitable[None]],
) -> AsyncIterator[None]:
    """``startup`` on entry, ``shutdown`` on exit; the hooks :func:`add_lifespan` gets while
    ``startup`` runs start right after it and stop right before ``shutdown``."""
    starting: list[list[Hook]] = app.state._state.setdefault(_STARTING, [])
    joiners: list[Hook] = []
    starting.append(joiners)
    try:
        await startup()
    finally:
        starting.remove(joiners)
    joined: list[Hook] = []
    try:
        for hook in joiners:
            await hook[0]()
            joined.append(hook)
        yield
    finally:
        for _, joined_shutdown in reversed(joined):
            await joined_shutdown()
        await shutdown()


def route_background_params(app: FastAPI, provider: Callable[..., Any]) -> int:
    """Make every ``BackgroundTasks`` parameter of ``app``'s routes receive ``provider()``.

    Returns how many parameters were rewired. Safe to call again (routes added later).
    """
    changed = 0
    for route in app.router.routes:
        if isinstance(route, APIRoute):
            changed += _rewire(route.dependant, route.path_format, provider)
    return changed


def _rewire(dependant: Dependant, path: str, provider: Callable[..., Any]) -> int:
    changed = 0
    # Bound methods compare equal when they bind the same function to the same manager.
    if dependant.call != provider:
        name = dependant.background_tasks_param_name
        if name is not None:
            dependant.background_tasks_param_name = None
            dependant.dependencies.append(get_dependant(path=path, call=provider, name=name))
            changed += 1
    for sub in dependant.dependencies:
        changed += _rewire(sub, path, provider)
    return changed
