"""``TaskAdmin``: mounts the task API, the live dashboard and its auth on a FastAPI app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI

from ..errors import ConfigurationError
from ..fastapi_glue import add_lifespan
from ..models import utcnow
from .api import TaskApi
from .audit import AuditLog
from .auth import AdminAuth
from .metrics import ThroughputSeries, dashboard_metrics
from .pages import pages_router
from .sse import StreamHub, stream_router

if TYPE_CHECKING:
    from ..manager import TaskManager

logger = logging.getLogger("fastapi_taskflow.admin")

PRUNE_EVERY = 3600.0
TOKEN_EXPIRY = 8 * 3600  # a working day: a session left open overnight ends


class TaskAdmin:
    """Mounts the task API and the dashboard under ``path`` and wires the manager's lifecycle.

    All setup happens in the constructor, so keeping a reference is optional::

        TaskAdmin(app, task_manager)
        TaskAdmin(app, task_manager, auth=("admin", "secret"), secret_key=SETTINGS_SECRET)
        TaskAdmin(app, task_manager, dependencies=[Depends(require_admin)], read_only=True)

    ``auth``: a ``(username, password)`` pair, a list of pairs, or a ``TaskAuthBackend``.
    ``dependencies``: FastAPI dependencies run on every admin route (your own auth).
    ``api_tokens``: static bearer tokens for API clients (a list, or ``{name: token}``).
    ``read_only``: every route that changes something answers 403.
    ``read_only_users``: users (login names, ``api_tokens`` names, or the ``taskflow_user``
    your dependency sets) who may read but get 403 on every change.
    ``include_in_schema``: list the task API in the app's ``/openapi.json`` (off by default:
    the public schema need not describe the admin).
    ``retention_days``: finished tasks older than this are deleted every ``prune_interval``
    seconds of the manager (an hour by default).

    ``task_manager`` may also be a zero-argument callable returning the current manager, for
    apps whose manager is rebuilt on each lifespan run (a DI container); the admin then asks
    it on every use. ``manage_lifecycle=False`` leaves starting and stopping the manager to
    its owner (no ``init_app``); ``auto_install`` needs the default ``True``.
    """

    def __init__(
        self,
        app: FastAPI,
        task_manager: TaskManager | Callable[[], TaskManager],
        path: str = "/tasks",
        display_func_args: bool = False,
        auto_install: bool = False,
        auth: Any = None,
        token_expiry: int = TOKEN_EXPIRY,
        secret_key: str | bytes | None = None,
        poll_interval: float = 30.0,
        title: str = "Tasks",
        retention_days: float | None = None,
        dependencies: Sequence[Any] | None = None,
        read_only: bool = False,
        api_tokens: Sequence[str] | Mapping[str, str] | None = None,
        manage_lifecycle: bool = True,
        read_only_users: Collection[str] = (),
        include_in_schema: bool = False,
        display_results: bool = True,
    ) -> None:
        _check(path, token_expiry, poll_interval, retention_days, title)
        readers = _names("read_only_users", read_only_users)
        if auto_install and not manage_lifecycle:
            raise ConfigurationError("TaskAdmin auto_install=True needs manage_lifecycle=True")
        self.app = app
        current = _current(task_manager)
        self._current_manager = current
        self.path = path
        self.read_only = read_only
        self.retention_days = retention_days
        self.auth = AdminAuth(
            auth=auth,
            secret_key=secret_key,
            token_expiry=token_expiry,
            api_tokens=api_tokens,
            path=path,
            current_manager=current,
        )
        self.audit = AuditLog(current)
        self.series = ThroughputSeries()
        self.hub = StreamHub(current, metrics=self._metrics, session_valid=self.auth.still_valid)
        self._own_auth = bool(dependencies)
        self._prune_task: asyncio.Task[None] | None = None
        user_deps = list(dependencies or [])
        guarded = [*user_deps, Depends(self.auth.guard)]
        self.api = TaskApi(
            current,
            self.audit,
            include_args=display_func_args,
            read_only=read_only,
            read_only_users=readers,
            series=self.series,
            include_results=display_results,
        )
        config = {
            "title": title,
            "poll_interval": poll_interval,
            "read_only": read_only,
            "display_func_args": display_func_args,
            "display_results": display_results,
            "path": path,
        }
        # Order matters: fixed paths before the /{task_id} catch-all.
        app.include_router(
            pages_router(
                path=path,
                auth=self.auth,
                dependencies=user_deps,
                config=config,
                read_only_users=readers,
            )
        )
        app.include_router(stream_router(self.hub, path, guarded, include_in_schema))
        app.include_router(self.api.router(path, guarded, include_in_schema))
        add_lifespan(app, self, self._startup, self._shutdown)
        if auto_install:
            current().install(app)
        elif manage_lifecycle:
            current().init_app(app)

    @property
    def manager(self) -> TaskManager:
        """The manager behind the admin now (a getter's answer at this moment)."""
        return self._current_manager()

    async def _metrics(self) -> dict[str, Any]:
        return await dashboard_metrics(self.manager, self.series)

    async def _startup(self) -> None:
        if not self.auth.enabled and not self._own_auth:
            logger.warning(
                "TaskAdmin at %s has no auth: anyone who can reach the app can read tasks and "
                "retry, cancel or delete them. Pass auth=... or dependencies=[...].",
                self.path,
            )
        if self.retention_days is not None:
            self._prune_task = asyncio.get_running_loop().create_task(self._prune_forever())

    async def _shutdown(self) -> None:
        await self.close_streams()
        task, self._prune_task = self._prune_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close_streams(self) -> None:
        """End every open SSE stream (servers wait for open responses before shutting down)."""
        await self.hub.close()

    async def prune(self) -> dict[str, int]:
        """Delete finished tasks older than ``retention_days`` now."""
        assert self.retention_days is not None
        return await self.manager.clear_history(utcnow() - timedelta(days=self.retention_days))

    async def _prune_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0 if not self.manager.started else 0)
            try:
                await self.prune()
            except Exception:
                logger.error("pruning old task history failed", exc_info=True)
            await asyncio.sleep(self.manager.settings.durability.prune_interval)


def _current(task_manager: TaskManager | Callable[[], TaskManager]) -> Callable[[], TaskManager]:
    """A getter for the manager: the one given, or the caller's own getter."""
    if callable(task_manager):
        return task_manager
    return lambda: task_manager


def _names(key: str, names: Collection[str]) -> frozenset[str]:
    if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
        raise ConfigurationError(f"TaskAdmin {key} must be a list of non-empty user names")
    return frozenset(names)


def _check(
    path: str, token_expiry: int, poll_interval: float, retention_days: float | None, title: str
) -> None:
    if not isinstance(path, str) or not path.startswith("/") or path.endswith("/"):
        raise ConfigurationError(
            f"TaskAdmin path={path!r}: must start with '/' and not end with '/', e.g. /tasks"
        )
    if isinstance(token_expiry, bool) or not isinstance(token_expiry, int) or token_expiry < 1:
        raise ConfigurationError(f"TaskAdmin token_expiry={token_expiry!r}: seconds, an int >= 1")
    if (
        isinstance(poll_interval, bool)
        or not isinstance(poll_interval, int | float)
        or not (poll_interval > 0)
    ):
        raise ConfigurationError(f"TaskAdmin poll_interval={poll_interval!r}: seconds, > 0")
    if retention_days is not None and (
        isinstance(retention_days, bool)
        or not isinstance(retention_days, int | float)
        or not retention_days > 0
    ):
        raise ConfigurationError(f"TaskAdmin retention_days={retention_days!r}: > 0 or None")
    if not isinstance(title, str) or not title.strip():
        raise ConfigurationError("TaskAdmin title must be a non-empty string")
