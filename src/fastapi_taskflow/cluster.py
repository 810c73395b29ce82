"""Cluster: this instance among the others on one backend.

* Presence: every ``heartbeat_interval`` the instance announces itself (host, pid, version,
  running and waiting counts) with an expiry of ``lease_ttl``, so ``GET /tasks/instances`` on any
  instance lists the live ones and a dead one drops out within ``lease_ttl``.
* Commands: a listener reads the backend's command channel from the position it had at startup
  (older commands are not for it) and hands each command meant for this instance to the
  manager's handler. A command may ask for a reply: the handler's answer goes back to the sender
  as a ``reply`` command, and :meth:`request` waits for it.

Both loops only log a failing backend call and go on: the instance keeps running its own tasks
while the backend is away, and commands sent meanwhile are read once it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from .backends.base import Command, InstanceInfo, TaskBackend
from .models import utcnow

if TYPE_CHECKING:
    from .settings import DurabilitySettings

logger = logging.getLogger("fastapi_taskflow.cluster")

# The handler's answer to a command: reply data, or None (nothing to say: not mine).
Handler = Callable[[Command], Awaitable[dict[str, Any] | None]]
BLOCKING_READ = 0.25  # seconds one blocking read of the channel waits (the stop's latency)


def _package_version() -> str:
    try:
        return version("fastapi-taskflow")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


PACKAGE_VERSION = _package_version()


@dataclass(slots=True)
class Load:
    """What an instance is busy with, for its announcement."""

    running: int
    waiting: int


def local_instance(instance_id: str, started_at: datetime, load: Load) -> InstanceInfo:
    """This process as an instance, with its load now."""
    return InstanceInfo(
        instance_id=instance_id,
        host=socket.gethostname(),
        pid=os.getpid(),
        version=PACKAGE_VERSION,
        started_at=started_at,
        heartbeat_at=utcnow(),
        running=load.running,
        waiting=load.waiting,
    )


@dataclass(slots=True)
class _Request:
    """A request waiting for the instance that holds its task."""

    answer: asyncio.Future[Command | None]
    waiting_for: set[str]

    def add(self, reply: Command) -> None:
        if self.answer.done():
            return
        if reply.data.get("found"):
            self.answer.set_result(reply)
            return
        self.waiting_for.discard(reply.sender)
        if not self.waiting_for:
            self.answer.set_result(None)  # every instance said: not mine


class Cluster:
    """Announces this instance and serves the command channel, from startup to shutdown."""

    def __init__(
        self,
        backend: TaskBackend,
        instance_id: str,
        *,
        settings: DurabilitySettings,
        load: Callable[[], Load],
        handler: Handler,
    ) -> None:
        self.backend = backend
        self.instance_id = instance_id
        self.heartbeat_interval = settings.heartbeat_interval
        self.lease_ttl = settings.lease_ttl
        self._load = load
        self._handler = handler
        self._info = local_instance(instance_id, utcnow(), Load(0, 0))
        self._position = "0"
        self._replies: dict[str, _Request] = {}
        self._handling: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._failing = False
        self._stopping = asyncio.Event()
        # Other live instances as of the last heartbeat.
        self.others: set[str] = set()

    async def start(self) -> None:
        """Read the channel from its end now, announce this instance, start both loops.

        A backend written before these primitives runs tasks all the same: what it lacks is
        left off, with one warning.
        """
        loops = []
        try:
            self._position = await self.backend.command_position()
            loops.append(self._listen_loop)
        except NotImplementedError as exc:
            logger.warning("commands across instances are off: %s", exc)
        try:
            await self._announce()
            loops.append(self._announce_loop)
        except NotImplementedError as exc:
            logger.warning("this instance is not listed in GET /tasks/instances: %s", exc)
        except Exception:
            self._trouble("announcing this instance")
            loops.append(self._announce_loop)
        self._tasks = [asyncio.create_task(loop(), name="taskflow-cluster") for loop in loops]

    async def stop(self) -> None:
        """Stop the loops (never in the middle of a backend call: a cancelled Redis read can
        hang its connection), the handlers in flight, then withdraw this instance's entry."""
        self._stopping.set()
        for task in self._handling:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._handling, return_exceptions=True)
        self._tasks = []
        for pending in self._replies.values():
            pending.answer.cancel()
        self._replies.clear()
        await self._guarded(
            "withdrawing this instance", lambda: self.backend.forget_instance(self.instance_id)
        )

    # ---- sending ---------------------------------------------------------------------------

    async def send(self, kind: str, *, task_id: str | None = None, **data: Any) -> None:
        """Tell every other instance (each decides whether the command concerns it)."""
        await self.backend.send_command(Command(kind, self.instance_id, task_id=task_id, data=data))

    async def request(
        self,
        kind: str,
        *,
        task_id: str | None = None,
        expect: set[str],
        timeout: float,
        **data: Any,
    ) -> Command | None:
        """Send a command every instance answers; the reply that says ``found``, or None once
        each instance in ``expect`` said it is not theirs (or after ``timeout``)."""
        request_id = uuid.uuid4().hex
        pending = _Request(asyncio.get_running_loop().create_future(), set(expect))
        self._replies[request_id] = pending
        try:
            await self.send(kind, task_id=task_id, request_id=request_id, **data)
            async with asyncio.timeout(timeout):
                return await pending.answer
        except TimeoutError:
            return None
        finally:
            self._replies.pop(request_id, None)

    # ---- the loops -------------------------------------------------------------------------

    async def _announce(self) -> None:
        load = self._load()
        info = self._info
        info.heartbeat_at, info.running, info.waiting = utcnow(), load.running, load.waiting
        await self.backend.announce_instance(info, self.lease_ttl)
        live = await self.backend.live_instances()
        self.others = {i.instance_id for i in live} - {self.instance_id}

    async def tell_others(self, kind: str, *, task_id: str | None = None, **data: Any) -> None:
        """:meth:`send`, skipped while no other instance was live at the last heartbeat (a
        lone instance writes no command per retry)."""
        if self.others:
            await self.send(kind, task_id=task_id, **data)

    async def _announce_loop(self) -> None:
        while not await self._pause(self.heartbeat_interval):
            await self._guarded("announcing this instance", self._announce)

    async def _listen_loop(self) -> None:
        # A backend that waits for commands itself (Redis) is asked to wait briefly, so a stop
        # is noticed soon; the others are read at once and polled.
        poll = self.backend.command_poll_interval
        wait = 0.0 if poll > 0 else BLOCKING_READ
        while not self._stopping.is_set():
            try:
                commands, self._position = await self.backend.read_commands(self._position, wait)
            except Exception:
                self._trouble("reading the command channel")
                if await self._pause(1.0):
                    return
                continue
            self._recovered()
            for command in commands:
                self._dispatch(command)
            if not commands and poll > 0 and await self._pause(poll):
                return

    async def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds`` or until stopped; True when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    def _dispatch(self, command: Command) -> None:
        if command.sender == self.instance_id:
            return  # this instance acted on it before sending it
        if command.target is not None and command.target != self.instance_id:
            return
        if command.kind == "reply":
            pending = self._replies.get(str(command.data.get("reply_to")))
            if pending is not None:
                pending.add(command)
            return
        # Its own task: a slow handler (a retry reading the backend) never holds up the rest.
        task = asyncio.get_running_loop().create_task(self._handle(command))
        self._handling.add(task)
        task.add_done_callback(self._handling.discard)

    async def _handle(self, command: Command) -> None:
        try:
            answer = await self._handler(command)
            request_id = command.data.get("request_id")
            if answer is not None and request_id:
                await self.backend.send_command(
                    Command(
                        "reply",
                        self.instance_id,
                        target=command.sender,
                        task_id=command.task_id,
                        data={"reply_to": request_id, **answer},
                    )
                )
        except Exception:
            logger.warning(
                "command %s (task %s) from instance %s failed",
                command.kind,
                command.task_id,
                command.sender,
                exc_info=True,
            )

    async def _guarded(self, what: str, job: Callable[[], Awaitable[None]]) -> None:
        try:
            await job()
        except Exception:
            self._trouble(what)

    def _trouble(self, what: str) -> None:
        if not self._failing:
            self._failing = True
            logger.warning(
                "%s on %s failed; retrying", what, self.backend.describe(), exc_info=True
            )

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            logger.warning("the command channel on %s answers again", self.backend.describe())
