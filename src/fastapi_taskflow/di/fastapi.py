"""FastAPI glue for the container: the lifespan, ``install()`` and the ``Depends`` aliases.

The aliases find the container on ``app.state`` (put there by :func:`install` or
:func:`taskflow_lifespan`), so they need no wiring, work in ``def`` and ``async def`` routes
alike, and sit happily beside ``@inject`` / ``Depends(Provide[...])`` in wired modules. They
resolve the providers on every request, so ``container.task_manager.override(...)`` is honoured.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

from dependency_injector import providers
from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException, Path, Request

from ..errors import ConfigurationError
from ..fastapi_glue import LifespanHook, add_lifespan, hooks_around
from ..handles import ManagedBackgroundTasks, TaskHandle
from ..manager import TaskManager
from .containers import start_resources, stop_resources

if TYPE_CHECKING:
    from .settings import AdminSettings

logger = logging.getLogger("fastapi_taskflow.di")

STATE_KEY = "taskflow_container"
_ADMIN_MOUNTED = "_taskflow_admin_mounted"
# The lifespan hook of the container install() put on the app, taken off when another replaces it.
_INSTALLED_HOOK = "_taskflow_installed_hook"

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[Any]]
P = ParamSpec("P")
T = TypeVar("T")


# ---- finding the container -------------------------------------------------------------------


def find_taskflow(container: Any) -> Any:
    """The part of ``container`` that holds ``task_manager``: itself, or an embedded
    ``providers.Container(TaskflowContainer)``. Raises ``TypeError`` when there is none."""
    if isinstance(getattr(container, "task_manager", None), providers.Provider):
        return container
    for provider in getattr(container, "providers", {}).values():
        if isinstance(provider, providers.Container) and isinstance(
            getattr(provider, "task_manager", None), providers.Provider
        ):
            return provider
    raise TypeError(
        f"{type(container).__name__} has no task_manager provider: pass a TaskflowContainer "
        "or a container that embeds one with providers.Container(TaskflowContainer)"
    )


def bind(app: FastAPI, container: Any) -> None:
    """Put the taskflow part of ``container`` on ``app.state`` for the ``Depends`` aliases."""
    setattr(app.state, STATE_KEY, find_taskflow(container))


def container_of(request: Request) -> Any:
    """The taskflow container bound to the request's app; a clear error when there is none."""
    container = getattr(request.app.state, STATE_KEY, None)
    if container is None:
        raise RuntimeError(
            "no taskflow container on app.state: call fastapi_taskflow.di.install(app, container) "
            "or create the app with lifespan=taskflow_lifespan(container)"
        )
    return container


async def resolve(provider: Any) -> Any:
    """The value of a started (or overridden) provider; never starts a resource on the fly."""
    _check_started(provider)
    value = provider()
    if inspect.isawaitable(value):
        value = await value
    return value


def resolve_now(provider: Any) -> Any:
    """:func:`resolve` without awaiting: a started async resource's value is already there."""
    _check_started(provider)
    value = provider()
    if isinstance(value, asyncio.Future) and value.done():
        return value.result()
    if inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()
        raise RuntimeError(f"{provider!r} gives an awaitable not resolved yet; await resolve()")
    return value


def _check_started(provider: Any) -> None:
    if isinstance(provider, providers.BaseResource) and not (
        provider.initialized or provider.overridden
    ):
        raise RuntimeError(
            "the taskflow container is not started: run the app's lifespan (install() or "
            "taskflow_lifespan()) or await start_resources(container) first"
        )


# ---- lifespan --------------------------------------------------------------------------------


def taskflow_lifespan(container: Any, lifespan: Lifespan | None = None) -> Lifespan:
    """A FastAPI ``lifespan=``: start the container's resources, run ``lifespan`` (the app's
    own, optional) inside, stop the resources after it. The app's lifespan state passes through.
    """

    validate(container)

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[Any]:
        bind(app, container)

        async def startup() -> None:
            await _start(app, container)

        async def shutdown() -> None:
            await stop_resources(container)

        async with hooks_around(app, startup, shutdown):
            if lifespan is None:
                yield None
            else:
                async with lifespan(app) as state:
                    yield state

    return run


def install(app: FastAPI, container: Any) -> None:
    """Bind ``container`` to ``app`` and run its resources around the app's own lifespan.

    Mounts ``TaskAdmin`` at startup when the ``admin.enabled`` setting is true. Works whether
    or not the app has a ``lifespan=`` of its own; calling it twice is harmless. Installing
    another container replaces the one before: the app runs one container's resources.
    """
    validate(container)
    bind(app, container)

    async def startup() -> None:
        await _start(app, container)

    async def shutdown() -> None:
        await stop_resources(container)

    hook = add_lifespan(app, container, startup, shutdown)
    if hook is not None:
        replaced: LifespanHook | None = getattr(app.state, _INSTALLED_HOOK, None)
        if replaced is not None:
            replaced.remove()
        setattr(app.state, _INSTALLED_HOOK, hook)


def validate(container: Any) -> None:
    """Raise the ``ConfigurationError`` of bad settings now, while the app is being built
    (short and clear), rather than from inside the server's lifespan machinery. Startup
    validates again, so configuration changed after this is checked too."""
    find_taskflow(container).settings()


def exit_on_config_error(factory: Callable[P, T]) -> Callable[P, T]:
    """Decorate an app factory (``uvicorn pkg.app:create_app --factory``): a
    ``ConfigurationError`` ends the process with its message alone and exit status 1, instead
    of a traceback through the server's and click's frames."""

    @functools.wraps(factory)
    def build(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return factory(*args, **kwargs)
        except ConfigurationError as exc:
            raise SystemExit(str(exc)) from None

    return build


async def _start(app: FastAPI, container: Any) -> None:
    await start_resources(container)
    taskflow = find_taskflow(container)
    settings = taskflow.settings()
    if settings.admin.enabled:
        try:
            _mount_admin(app, settings.admin)
        except BaseException:
            await stop_resources(container)
            raise


def _mount_admin(app: FastAPI, admin: AdminSettings) -> None:
    """Mount the dashboard and task API once per app, as the ``admin:`` settings say.

    The admin asks the container bound to the app for the manager on each use (each lifespan
    run builds a new one, and install() may bind another container); the container's resources
    start and stop it, so the admin does not.
    """
    if getattr(app.state, _ADMIN_MOUNTED, False):
        return
    from ..admin import TaskAdmin

    def current_manager() -> TaskManager:
        manager: TaskManager = resolve_now(getattr(app.state, STATE_KEY).task_manager)
        return manager

    options: dict[str, Any] = {
        "path": admin.path,
        "display_func_args": admin.display_func_args,
        "display_results": admin.display_results,
        "read_only": admin.read_only,
        "read_only_users": admin.read_only_users,
        "include_in_schema": admin.include_in_schema,
        "token_expiry": admin.token_expiry,
        "poll_interval": admin.poll_interval,
    }
    if admin.title is not None:
        options["title"] = admin.title
    if admin.auth is not None:
        options["auth"] = (admin.auth.username, admin.auth.password.get_secret_value())
    if admin.secret_key is not None:
        options["secret_key"] = admin.secret_key.get_secret_value()
    current_manager()  # fail now, inside startup, if the manager cannot be had
    TaskAdmin(app, current_manager, manage_lifecycle=False, **options)
    setattr(app.state, _ADMIN_MOUNTED, True)


# ---- Depends ---------------------------------------------------------------------------------


async def get_task_manager(request: Request) -> TaskManager:
    """FastAPI dependency: the container's started ``TaskManager``."""
    manager: TaskManager = await resolve(container_of(request).task_manager)
    return manager


async def get_tasks(request: Request, background_tasks: BackgroundTasks) -> ManagedBackgroundTasks:
    """FastAPI dependency: the request's ``ManagedBackgroundTasks`` (tasks start after the
    response, like FastAPI's own background tasks).

    One dependency level, not a sub-dependency on :func:`get_task_manager`: each level costs
    FastAPI's solver a few tens of microseconds per request, on the hottest route of most apps.
    """
    manager: TaskManager = await resolve(container_of(request).task_manager)
    return ManagedBackgroundTasks(manager, background_tasks, request_scope=request.scope)


def task_handle_from(param: str) -> Callable[..., Awaitable[TaskHandle]]:
    """A FastAPI dependency: the ``TaskHandle`` named by the path parameter ``param``.

    ``TaskHandleDep`` is ``task_handle_from("task_id")``; for ``/jobs/{job_id}`` write
    ``Annotated[TaskHandle, Depends(task_handle_from("job_id"))]``. An unknown id answers 404
    with a JSON error; a route whose path has no ``{param}`` answers 422 naming it.
    """
    if not param.isidentifier() or param == "request":
        raise ValueError(f"task_handle_from: {param!r} is not a usable path parameter name")

    async def dependency(request: Request, **path: str) -> TaskHandle:
        task_id = path[param]
        manager: TaskManager = await resolve(container_of(request).task_manager)
        handle = await manager.get_task(task_id)
        if handle is None:
            raise HTTPException(
                status_code=404,
                detail={"error": "task_not_found", "message": "no such task", "task_id": task_id},
            )
        return handle

    # FastAPI reads the parameters from the signature: declare ``param`` as a path parameter
    # (validated, and shown in the OpenAPI schema) under the name the route uses.
    request_param = inspect.Parameter(
        "request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request
    )
    path_param = inspect.Parameter(
        param, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[str, Path()]
    )
    dependency.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [request_param, path_param], return_annotation=TaskHandle
    )
    dependency.__name__ = dependency.__qualname__ = f"task_handle_from_{param}"
    return dependency


#: FastAPI dependency: the ``TaskHandle`` named by the ``task_id`` path parameter; 404.
get_task_handle = task_handle_from("task_id")


TaskManagerDep = Annotated[TaskManager, Depends(get_task_manager)]
TasksDep = Annotated[ManagedBackgroundTasks, Depends(get_tasks)]
TaskHandleDep = Annotated[TaskHandle, Depends(get_task_handle)]
