"""Plain-FastAPI wiring: lifespan hooks and giving ``BackgroundTasks`` params managed tasks.

Nothing here patches FastAPI itself: ``install`` rewrites the dependants of one app's routes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_dependant
from fastapi.routing import APIRoute

logger = logging.getLogger("fastapi_taskflow")

# The attribute of ``app.state`` (public State API) that holds the hooks added to one app.
_HOOKS_ATTR = "taskflow_lifespan_hooks"


@dataclass(frozen=True, slots=True)
class _Hook:
    key: object
    startup: Callable[[], Awaitable[None]]
    shutdown: Callable[[], Awaitable[None]]


def add_lifespan(
    app: FastAPI,
    key: object,
    startup: Callable[[], Awaitable[None]],
    shutdown: Callable[[], Awaitable[None]],
) -> bool:
    """Run ``startup`` before and ``shutdown`` after the app's own lifespan. Once per key.

    The router's lifespan is wrapped once per app, however many parts hook in: the hook added
    last starts first and stops last, as if each had wrapped the lifespan in turn.

    Added while another hook starts (``TaskAdmin`` mounted by the DI container at startup), the
    pair also joins the lifespan under way: it starts right after that hook and stops right
    before it. Otherwise it would only run from the next lifespan on, which a server never has.
    """
    hooks: list[_Hook] | None = getattr(app.state, _HOOKS_ATTR, None)
    if hooks is None:
        hooks = []
        setattr(app.state, _HOOKS_ATTR, hooks)
        app.router.lifespan_context = _with_hooks(app, app.router.lifespan_context, hooks)
    if any(hook.key is key for hook in hooks):
        return False
    hooks.append(_Hook(key, startup, shutdown))
    return True


def _with_hooks(
    app: FastAPI, inner: Callable[[Any], Any], hooks: list[_Hook]
) -> Callable[[Any], Any]:
    @asynccontextmanager
    async def lifespan(asgi_app: Any) -> AsyncIterator[Any]:
        async with AsyncExitStack() as stack:
            await _start_hooks(app, list(reversed(hooks)), stack)
            async with inner(asgi_app) as state:
                yield state

    return lifespan


@asynccontextmanager
async def hooks_around(
    app: FastAPI,
    startup: Callable[[], Awaitable[None]],
    shutdown: Callable[[], Awaitable[None]],
) -> AsyncIterator[None]:
    """``startup`` on entry and ``shutdown`` on exit, for a lifespan of one's own (the DI
    ``taskflow_lifespan``): the hooks :func:`add_lifespan` gets while ``startup`` runs join it."""
    async with AsyncExitStack() as stack:
        await _start_hooks(app, [_Hook(None, startup, shutdown)], stack)
        yield


async def _start_hooks(app: FastAPI, first: list[_Hook], stack: AsyncExitStack) -> None:
    """Start ``first`` in order, each followed by the hooks added to ``app`` while it started;
    every started hook's shutdown goes on ``stack`` (so it stops before the one before it)."""
    pending = list(first)
    while pending:
        hook = pending.pop(0)
        before = len(getattr(app.state, _HOOKS_ATTR, None) or ())
        await hook.startup()
        stack.push_async_callback(hook.shutdown)
        added = (getattr(app.state, _HOOKS_ATTR, None) or [])[before:]
        pending[:0] = reversed(added)


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
