"""Live updates over Server-Sent Events, as deltas.

One store listener for the whole admin. It only notes the id of a changed task in a set (under a
lock: changes come from worker threads too); with no client connected it returns at once. While
clients are connected, a ticker on the event loop swaps the set out every ``tick`` seconds and
sends each dashboard the changed tasks' rows (serialized once, shared by every client) and the
counters; a client following one task gets that task's status and progress. A client that falls
behind gets a ``reset`` event and reloads its page instead of an ever-growing backlog.

Other instances: with a backend that keeps a change feed (``system_of_record``), each tick also
reads the feed after its cursor and adds the tasks other instances changed (their records read
in one round trip), so a dashboard on any instance shows every instance's changes, coalesced the
same way, about a tick after they are committed.

Sessions: a stream opened with a session (cookie or bearer) ends when that session does. The
ticker checks the sessions of open streams every few seconds; a logout on any instance, a changed
password or an expiry closes the stream, and the browser's reconnect then meets the 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from ..models import TaskRecord
from .routing import TaskId, admin_router

if TYPE_CHECKING:
    from ..manager import TaskManager
    from ..store import TaskStore
    from .sessions import Identity

logger = logging.getLogger("fastapi_taskflow.admin")

ROW_ERROR_CHARS = 300
MAX_ROWS_PER_TICK = 200
FINAL_GRACE_TICKS = 1
# Seconds between checks that the sessions of open streams are still live.
SESSION_RECHECK = 5.0

_SENTINEL = b""


def row(record: TaskRecord) -> dict[str, Any]:
    """What a table row needs: no arguments, logs or stack trace; the error cut short."""
    error = record.error
    if error is not None and len(error) > ROW_ERROR_CHARS:
        error = error[:ROW_ERROR_CHARS] + "…"
    return {
        "task_id": record.task_id,
        "func_name": record.func_name,
        "status": record.status.value,
        "queue": record.queue,
        "executor": record.executor,
        "created_at": _iso(record.created_at),
        "start_time": _iso(record.start_time),
        "end_time": _iso(record.end_time),
        "duration": record.duration,
        "retries_used": record.retries_used,
        "progress": record.progress,
        "progress_message": record.progress_message,
        "tags": dict(record.tags),
        "error": error,
        "priority": record.priority,
        "source": record.source,
    }


def progress_view(record: TaskRecord) -> dict[str, Any]:
    """What ``/{id}/events`` tells an app's own front end (no error text, logs or args)."""
    return {
        "task_id": record.task_id,
        "status": record.status.value,
        "progress": record.progress,
        "progress_message": record.progress_message,
        "retries_used": record.retries_used,
        "created_at": _iso(record.created_at),
        "start_time": _iso(record.start_time),
        "end_time": _iso(record.end_time),
        "duration": record.duration,
        "finished": record.status.finished,
    }


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def event(name: str, data: Any) -> bytes:
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {name}\ndata: {body}\n\n".encode()


class _Client:
    __slots__ = ("identity", "queue", "task_id")

    def __init__(self, task_id: str | None, size: int, identity: Identity | None = None) -> None:
        self.task_id = task_id
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(size)
        # Who opened the stream: a session's stream ends when the session does.
        self.identity = identity

    def end(self) -> None:
        """Close the stream after what it was sent so far (the queue's backlog is dropped)."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(_SENTINEL)

    def offer(self, payload: bytes) -> None:
        try:
            self.queue.put_nowait(payload)
        except asyncio.QueueFull:
            # Behind by `size` ticks: drop the backlog, ask for a reload.
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(event("reset", {"reason": "client too slow"}))


class StreamHub:
    """Fan-out of coalesced task changes to SSE clients."""

    def __init__(
        self,
        current_manager: Callable[[], TaskManager],
        *,
        tick: float = 0.2,
        heartbeat: float = 15.0,
        metrics: Callable[[], Awaitable[dict[str, Any]]] | None = None,
        client_queue: int = 256,
        session_valid: Callable[[Identity], Awaitable[bool]] | None = None,
        session_recheck: float = SESSION_RECHECK,
    ) -> None:
        self._current_manager = current_manager
        self.tick = tick
        # A stream outlives the request that opened it: its session is checked again every
        # ``session_recheck`` seconds, so a logout (on any instance) or an expiry ends it.
        self._session_valid = session_valid
        self.session_recheck = session_recheck
        self.heartbeat = heartbeat
        self.metrics = metrics or (lambda: self.manager.read_metrics())
        self.client_queue = client_queue
        self._feed_cursor: str | None = None  # where this hub is in the backend's change feed
        self._feed_failing = False
        self._changed: set[str] = set()
        self._lock = threading.Lock()
        self._clients: set[_Client] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False
        self.bytes_sent = 0
        self._store: TaskStore | None = None  # the store the listener is on

    @property
    def manager(self) -> TaskManager:
        """The manager now (a lazily given one changes between app runs)."""
        return self._current_manager()

    def _listen(self) -> None:
        """Put the listener on the current manager's store (changes only matter with clients)."""
        store = self.manager.store
        if store is not self._store:
            if self._store is not None:
                self._store.remove_listener(self._on_change)
            store.add_listener(self._on_change)
            self._store = store

    # ---- the listener (any thread, every change) --------------------------------------------

    def _on_change(self, record: TaskRecord) -> None:
        if not self._clients:
            return
        with self._lock:
            self._changed.add(record.task_id)

    # ---- clients --------------------------------------------------------------------------

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def subscribe(self, task_id: str | None = None, identity: Identity | None = None) -> _Client:
        self._listen()
        client = _Client(task_id, self.client_queue, identity)
        self._clients.add(client)
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._run())
        return client

    def unsubscribe(self, client: _Client) -> None:
        self._clients.discard(client)
        if not self._clients:
            with self._lock:
                self._changed.clear()

    async def close(self) -> None:
        """End every stream (app shutdown)."""
        self._end_streams()
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker

    def _end_streams(self) -> None:
        self._closed = True
        for client in list(self._clients):
            with contextlib.suppress(asyncio.QueueFull):
                client.queue.put_nowait(_SENTINEL)

    async def end_lapsed_sessions(self) -> int:
        """End the streams whose session ended (logout, new password, expiry); how many."""
        valid = self._session_valid
        if valid is None:
            return 0
        verdicts: dict[str | None, bool] = {}  # one check per session, however many streams
        ended = 0
        for client in list(self._clients):
            identity = client.identity
            if identity is None or identity.via not in ("cookie", "bearer"):
                continue  # api tokens and the app's own auth are not sessions we can end
            verdict = verdicts.get(identity.csrf)
            if verdict is None:
                expired = identity.expires is not None and identity.expires <= time.time()
                verdict = verdicts[identity.csrf] = not expired and await valid(identity)
            if not verdict:
                client.end()
                ended += 1
        return ended

    async def stream(self, client: _Client, first: list[bytes]) -> AsyncIterator[bytes]:
        """The body of one SSE response: ``first`` events, then deltas and heartbeats."""
        try:
            yield b"retry: 3000\n\n"
            for payload in first:
                self.bytes_sent += len(payload)
                yield payload
            while not self._closed:
                try:
                    payload = await asyncio.wait_for(client.queue.get(), self.heartbeat)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if not payload:
                    return
                self.bytes_sent += len(payload)
                yield payload
        finally:
            self.unsubscribe(client)

    # ---- the ticker -----------------------------------------------------------------------

    async def _run(self) -> None:
        last_metrics = 0.0
        last_session_check = time.monotonic()
        self._feed_cursor = None
        try:
            await self._read_feed()  # the starting point: changes from now on
            while self._clients and not self._closed:
                await asyncio.sleep(self.tick)
                if server_is_exiting():
                    # The server waits for open responses before it runs the app's shutdown: an
                    # endless stream would hold Ctrl+C (or a deploy) until a forced quit.
                    self._end_streams()
                    return
                remote = await self._read_feed()
                now = time.monotonic()
                if now - last_session_check >= self.session_recheck:
                    last_session_check = now
                    await self.end_lapsed_sessions()
                send_metrics = now - last_metrics >= 1.0
                if await self.flush(send_metrics, remote):
                    last_metrics = now if send_metrics else last_metrics
        finally:
            self._feed_cursor = None

    async def _read_feed(self) -> dict[str, TaskRecord]:
        """Records other instances changed since the last read (empty without a feed)."""
        manager = self.manager
        backend = manager.backend
        if backend is None or not backend.system_of_record or not manager.started:
            return {}
        try:
            page = await backend.read_changes(self._feed_cursor)
            first, self._feed_cursor = self._feed_cursor is None, page.cursor
            if page.gap:
                self._offer_dashboards(event("reset", {"reason": "missed changes"}))
            ids = page.task_ids(skip_origin=manager.instance_id)
            if first or not ids:
                return {}
            if len(ids) > MAX_ROWS_PER_TICK:
                with self._lock:
                    self._changed.update(ids)  # an overflow delta: pages reload
                return {}
            records = await backend.get_records(sorted(ids))
        except Exception:
            if not self._feed_failing:
                self._feed_failing = True
                logger.warning(
                    "reading the change feed of %s failed; other instances' changes are "
                    "late on this dashboard",
                    backend.describe(),
                    exc_info=True,
                )
            return {}
        self._feed_failing = False
        found = {r.task_id: r for r in records}
        with self._lock:
            self._changed.update(found)
        return found

    def _offer_dashboards(self, payload: bytes) -> None:
        for client in self._clients:
            if client.task_id is None:
                client.offer(payload)

    async def flush(
        self, with_metrics: bool = True, remote: dict[str, TaskRecord] | None = None
    ) -> bool:
        """Send what changed since the last flush; True when something was sent.

        ``remote``: records other instances changed (from the change feed); this instance's
        own records come from its store.
        """
        with self._lock:
            changed, self._changed = self._changed, set()
        if not changed or not self._clients:
            return False
        store = self.manager.store
        found = remote or {}

        def current(task_id: str) -> TaskRecord | None:
            return store.get(task_id) or found.get(task_id)

        dashboards = [c for c in self._clients if c.task_id is None]
        if dashboards:
            # A burst bigger than a page: say so and let the page reload its first page,
            # rather than serializing thousands of rows nobody can read in 200 ms.
            overflow = len(changed) > MAX_ROWS_PER_TICK
            records = [] if overflow else [r for tid in changed if (r := current(tid)) is not None]
            data: dict[str, Any] = {"tasks": [row(r) for r in records], "overflow": overflow}
            if with_metrics:
                data["metrics"] = await self.metrics()
            self._offer_dashboards(event("delta", data))
        for client in list(self._clients):
            if client.task_id is not None and client.task_id in changed:
                record = current(client.task_id)
                if record is not None:
                    client.offer(event("task", progress_view(record)))
                    if record.status.finished:
                        client.offer(_SENTINEL)
        return True


def server_is_exiting() -> bool:
    """True once uvicorn has been told to stop (SIGINT/SIGTERM), read from its signal handler.

    Only a read: uvicorn installs ``Server.handle_exit`` as the handler and sets
    ``should_exit`` on its server. Other servers: False, and their graceful-shutdown timeout
    applies.
    """
    handler = signal.getsignal(signal.SIGINT)
    server = getattr(handler, "__self__", None)
    return bool(getattr(server, "should_exit", False))


def stream_router(
    hub: StreamHub, path: str, dependencies: list[Any], include_in_schema: bool = True
) -> Any:
    """``GET {path}/dashboard/stream`` and ``GET {path}/{task_id}/events``."""
    from fastapi import HTTPException
    from fastapi.responses import StreamingResponse

    router = admin_router(path, dependencies, include_in_schema)

    def respond(body: AsyncIterator[bytes]) -> StreamingResponse:
        return StreamingResponse(
            body,
            media_type="text/event-stream",
            headers={
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            },
        )

    # response_model=None: the return annotation is a string (postponed annotations) naming a
    # class imported in this function, which /openapi.json could not resolve (a 500).
    sse_doc: dict[int | str, dict[str, Any]] = {
        200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}
    }

    @router.get(
        "/dashboard/stream",
        summary="Live task changes for the dashboard (SSE)",
        response_model=None,
        responses=sse_doc,
    )
    async def dashboard_stream(request: Request) -> StreamingResponse:
        client = hub.subscribe(identity=_identity(request))
        hello = event("hello", {"metrics": await hub.metrics(), "tick": hub.tick})
        return respond(hub.stream(client, [hello]))

    @router.get(
        "/{task_id}/events",
        summary="One task's status and progress (SSE)",
        response_model=None,
        responses=sse_doc,
    )
    async def task_events(task_id: TaskId, request: Request) -> StreamingResponse:
        record = await hub.manager.get_record(task_id)
        if record is None:
            raise HTTPException(status_code=404, detail="Task not found")
        first = event("task", progress_view(record))
        if record.status.finished:

            async def once() -> AsyncIterator[bytes]:
                yield first

            return respond(once())
        client = hub.subscribe(task_id, _identity(request))
        # It may have finished between the read above and subscribing: look once more.
        hub._on_change(record)
        return respond(hub.stream(client, [first]))

    return router


def _identity(request: Request) -> Identity | None:
    """Who the admin's guard let in (None when the app's own dependencies guard the routes)."""
    identity: Identity | None = getattr(request.state, "taskflow_identity", None)
    return identity
