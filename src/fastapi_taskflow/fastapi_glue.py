"""Plain-FastAPI wiring: lifespan hooks, the request's exit stack, and giving ``BackgroundTasks``
params managed tasks.

Nothing here patches FastAPI itself: ``install`` rewrites the dependants of one app's routes.
The FastAPI internals the package relies on are all here, each checked where it is used so a
FastAPI that changes them fails with a clear message (tests/unit/test_fastapi_internals.py
pins them against the installed FastAPI):

- ``scope["fastapi_inner_astack"]``: the per-request exit stack (:func:`request_exit_stack`).
  Its public counterpart, a dependency with ``yield``, closes after the response only from
  FastAPI 0.118 on and adds about a tenth to the cost of every request that uses it.
- ``Dependant.background_tasks_param_name``, ``Dependant.dependencies`` and ``get_dependant``:
  the only way to hand a plain ``BackgroundTasks`` parameter another object (``install``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_dependant
from fastapi.routing import APIRoute

logger = logging.getLogger("fastapi_taskflow")

# The attribute of ``app.state`` (public State API) that holds the hooks added to one app.
_HOOKS_ATTR = "taskflow_lifespan_hooks"


# eq=False: hooks are told apart by identity, never by comparing their owners.
@dataclass(frozen=True, slots=True, eq=False)
class _Hook:
    key: object
    startup: Callable[[], Awaitable[None]]
    shutdown: Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True, eq=False)
class LifespanHook:
    """One part's startup/shutdown pair on one app's lifespan, as :func:`add_lifespan` added it.

    ``remove()`` takes it off: no later lifespan runs it, and the app no longer holds the part
    (a replaced ``TaskManager`` can be garbage-collected). A lifespan under way still stops it.
    """

    _hooks: list[_Hook] = field(repr=False)
    _hook: _Hook

    @property
    def key(self) -> object:
        return self._hook.key

    def remove(self) -> bool:
        """Take the hook off the app; False when it was already off."""
        if self._hook not in self._hooks:
            return False
        self._hooks.remove(self._hook)
        return True


def add_lifespan(
    app: FastAPI,
    key: object,
    startup: Callable[[], Awaitable[None]],
    shutdown: Callable[[], Awaitable[None]],
) -> LifespanHook | None:
    """Run ``startup`` before and ``shutdown`` after the app's own lifespan. Once per key.

    Returns the hook (``remove()`` takes it off again), or None when ``key`` is on the app
    already. The router's lifespan is wrapped once per app, however many parts hook in: the
    hook added last starts first and stops last, as if each had wrapped the lifespan in turn.

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
        return None
    hook = _Hook(key, startup, shutdown)
    hooks.append(hook)
    return LifespanHook(hooks, hook)


def remove_lifespan(app: FastAPI, key: object) -> bool:
    """Take ``key``'s hook off ``app`` (see :meth:`LifespanHook.remove`); False if it had none."""
    hooks: list[_Hook] = getattr(app.state, _HOOKS_ATTR, None) or []
    for hook in hooks:
        if hook.key is key:
            hooks.remove(hook)
            return True
    return False


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
        before = {id(known) for known in getattr(app.state, _HOOKS_ATTR, None) or ()}
        await hook.startup()
        stack.push_async_callback(hook.shutdown)
        hooks: list[_Hook] = getattr(app.state, _HOOKS_ATTR, None) or []
        pending[:0] = reversed([added for added in hooks if id(added) not in before])


# FastAPI's per-request exit stack (0.118+): it closes once the response is sent and the
# request's background tasks have run, or when the route raised, with that exception.
_REQUEST_STACK_KEY = "fastapi_inner_astack"
_missing_stack_warned = False


def request_exit_stack(scope: Mapping[str, Any]) -> AsyncExitStack | None:
    """The exit stack FastAPI closes when the request is over, or None outside a route.

    Under a FastAPI without it (older than 0.118, or one that renamed the key) a warning is
    logged once: tasks still start after the response, but those of a request that ends
    without running its background tasks are not settled (see ManagedBackgroundTasks).
    """
    stack = scope.get(_REQUEST_STACK_KEY)
    if isinstance(stack, AsyncExitStack):
        return stack
    global _missing_stack_warned
    if not _missing_stack_warned and scope.get("type") in ("http", "websocket"):
        _missing_stack_warned = True
        logger.warning(
            "this FastAPI gives routes no per-request exit stack (scope[%r]): tasks added "
            "in a request that raises, or whose response brings its own background=, stay "
            "PENDING. FastAPI 0.118 or later settles them.",
            _REQUEST_STACK_KEY,
        )
    return None


def route_background_params(app: FastAPI, provider: Callable[..., Any]) -> int:
    """Make every ``BackgroundTasks`` parameter of ``app``'s routes receive ``provider()``.

    Returns how many parameters were rewired. Safe to call again (routes added later).
    """
    rewired: list[_Rewired] | None = getattr(app.state, _REWIRED_ATTR, None)
    if rewired is None:
        rewired = []
        setattr(app.state, _REWIRED_ATTR, rewired)
    before = len(rewired)
    for route in app.router.routes:
        if isinstance(route, APIRoute):
            _rewire(route.dependant, route.path_format, provider, rewired)
    return len(rewired) - before


def unroute_background_params(app: FastAPI, provider: Callable[..., Any]) -> int:
    """Undo :func:`route_background_params` for ``provider``: the parameters it rewired get
    FastAPI's own ``BackgroundTasks`` again. Returns how many were given back."""
    rewired: list[_Rewired] = getattr(app.state, _REWIRED_ATTR, None) or []
    ours = [done for done in rewired if done.added.call == provider]
    for done in ours:
        done.parent.dependencies.remove(done.added)
        done.parent.background_tasks_param_name = done.added.name
        rewired.remove(done)
    return len(ours)


@dataclass(frozen=True, slots=True, eq=False)
class _Rewired:
    """A ``BackgroundTasks`` parameter of ``parent`` now filled by the dependency ``added``."""

    parent: Dependant
    added: Dependant


# The attribute of ``app.state`` listing the parameters route_background_params rewired, so
# they can be told apart from a route's own Depends(task_manager.get_tasks).
_REWIRED_ATTR = "taskflow_rewired_params"


def _rewire(
    dependant: Dependant, path: str, provider: Callable[..., Any], rewired: list[_Rewired]
) -> None:
    # Bound methods compare equal when they bind the same function to the same manager.
    if dependant.call != provider:
        name = _background_param(dependant)
        if name is not None:
            added = get_dependant(path=path, call=provider, name=name)
            dependant.background_tasks_param_name = None
            dependant.dependencies.append(added)
            rewired.append(_Rewired(dependant, added))
    for sub in list(dependant.dependencies):
        _rewire(sub, path, provider, rewired)


def _background_param(dependant: Dependant) -> str | None:
    """The name of ``dependant``'s ``BackgroundTasks`` parameter, if it has one."""
    try:
        name: str | None = dependant.background_tasks_param_name
    except AttributeError:
        raise RuntimeError(
            "install() cannot give BackgroundTasks parameters managed tasks under this "
            "FastAPI (its Dependant has no background_tasks_param_name): declare them as "
            "Depends(task_manager.get_tasks) instead"
        ) from None
    return name
