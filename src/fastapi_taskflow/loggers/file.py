"""FileLogger: one line per event in a file, written by a single background thread.

The event loop only formats a line and puts it on a queue; opening, writing, rotating and
flushing happen in the writer thread, so a slow or failing disk never stalls a request or a task.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from dataclasses import dataclass
from logging.handlers import RotatingFileHandler, WatchedFileHandler
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .lines import LineObserver

if TYPE_CHECKING:
    from ..settings import LogFileSettings

logger = logging.getLogger("fastapi_taskflow.loggers")

FileMode = Literal["rotate", "watched"]
MODES: tuple[FileMode, ...] = ("rotate", "watched")
# Lines waiting for the writer thread before new ones are dropped (about 30 MB of JSON lines).
DEFAULT_MAX_QUEUED = 100_000


class _RaisingRotatingHandler(RotatingFileHandler):
    def handleError(self, record: logging.LogRecord) -> None:
        # The stdlib would print "--- Logging error ---" to stderr and carry on; re-raising the
        # active exception lets the writer thread report it once and count what it drops.
        raise


class _RaisingWatchedHandler(WatchedFileHandler):
    def handleError(self, record: logging.LogRecord) -> None:
        raise  # see _RaisingRotatingHandler


@dataclass(slots=True)
class _Marker:
    """A queue item that the writer thread acknowledges once every line before it is written."""

    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[None]
    stop: bool = False

    def acknowledge(self) -> None:
        try:
            self.loop.call_soon_threadsafe(_resolve, self.done)
        except RuntimeError:
            # The loop closed while we were writing: nobody is left waiting for the answer.
            logger.debug("FileLogger marker acknowledged after its event loop closed")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # the waiter may have been cancelled meanwhile
        future.set_result(None)


class FileLogger(LineObserver):
    """Appends one line per accepted event (JSON by default) to ``path``.

    ``mode="rotate"`` rolls the file over at ``max_bytes`` keeping ``backup_count`` old files
    (``max_bytes=0`` never rolls over). ``mode="watched"`` leaves rotation to an outside tool
    such as logrotate and reopens the file when it is moved or deleted.

    If the file cannot be opened or written (read-only directory, full disk) the error is logged
    once on the ``fastapi_taskflow.loggers`` logger and later lines are dropped and counted in
    :attr:`dropped`; tasks never see the error. A new :meth:`startup` tries again.

    At most ``max_queued`` lines wait for the writer thread: past that (a disk that stalls for
    long under a steady flow of events) new lines are dropped and counted, and a warning says so
    once per stall, instead of the queue growing until the process runs out of memory.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        log_lifecycle: bool = False,
        max_bytes: int = 10 * 1024 * 1024,
        backup_count: int = 5,
        mode: str = "rotate",
        format: str = "json",
        min_level: str = "info",
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        super().__init__(min_level=min_level, log_lifecycle=log_lifecycle, format=format)
        self.path = _check_path(path)
        self.max_bytes = _check_size("max_bytes", max_bytes)
        self.backup_count = _check_size("backup_count", backup_count)
        self.mode = _check_mode(mode)
        if _check_size("max_queued", max_queued) == 0:
            raise ValueError("max_queued must be an int >= 1, got 0")
        self.max_queued = max_queued
        # SimpleQueue.put never blocks, so handing a line over costs the loop almost nothing.
        self._queue: queue.SimpleQueue[str | _Marker] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._failed = False
        self._dropped = 0
        self._dropped_lock = threading.Lock()
        # Whether the current stall was reported; cleared once the queue has room again.
        self._overflowing = False

    @classmethod
    def from_settings(cls, settings: LogFileSettings) -> FileLogger:
        """The ``log_file`` shorthand's logger (``settings.log_file`` must be set)."""
        assert settings.log_file is not None
        return cls(
            settings.log_file,
            log_lifecycle=settings.log_lifecycle,
            max_bytes=settings.log_file_max_bytes,
            backup_count=settings.log_file_backup_count,
            mode=settings.log_file_mode,
        )

    @property
    def dropped(self) -> int:
        """Lines lost because the file failed or the logger was already closed."""
        with self._dropped_lock:
            return self._dropped

    @property
    def failed(self) -> bool:
        """True once opening or writing the file failed; lines are dropped from then on."""
        return self._failed

    async def startup(self) -> None:
        """Start the writer thread; returns once the file is open (or its failure reported)."""
        if self._thread is not None:
            return
        self._closed = False
        self._failed = False
        self._thread = threading.Thread(
            target=self._run, name=f"taskflow-file-logger:{self.path.name}", daemon=True
        )
        # Daemon: a forgotten close() must not keep the interpreter alive at exit.
        self._thread.start()
        await self.flush()

    async def flush(self) -> None:
        """Wait until every line handed over so far is written (or dropped).

        Returns at once when the writer is not running (before startup, after close).
        """
        if self._thread is not None:
            await self._send_marker(stop=False)

    async def close(self) -> None:
        """Write what is queued, close the file and join the writer thread."""
        if self._closed:
            return
        thread, self._thread = self._thread, None
        self._closed = True
        if thread is None:
            self._drop_queued()
            return
        await self._send_marker(stop=True)
        await asyncio.to_thread(thread.join)

    def write_line(self, line: str) -> None:
        if self._closed:
            self._count_drop()
            return
        # Lines given before startup() wait in the queue and are written once it runs.
        # qsize() is one C call: the bound costs the loop almost nothing per line.
        if self._queue.qsize() >= self.max_queued:
            self._count_drop()
            if not self._overflowing:
                self._overflowing = True
                logger.warning(
                    "FileLogger %s: %d lines wait for the disk; new lines are dropped until "
                    "it catches up",
                    self.path,
                    self.max_queued,
                )
            return
        self._overflowing = False
        self._queue.put(line)

    def open_handler(self) -> logging.Handler:
        """Create the handler the writer thread writes through (runs in that thread)."""
        handler: logging.Handler
        if self.mode == "rotate":
            handler = _RaisingRotatingHandler(
                self.path,
                maxBytes=self.max_bytes,
                backupCount=self.backup_count,
                encoding="utf-8",
            )
        else:
            handler = _RaisingWatchedHandler(self.path, encoding="utf-8")
        # Lines arrive already formatted; the handler only appends them.
        handler.setFormatter(logging.Formatter("%(message)s"))
        return handler

    async def _send_marker(self, *, stop: bool) -> None:
        loop = asyncio.get_running_loop()
        marker = _Marker(loop, loop.create_future(), stop)
        self._queue.put(marker)
        await marker.done

    # --- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        handler = self._open()
        while True:
            item = self._queue.get()
            if isinstance(item, _Marker):
                if item.stop:
                    self._close_handler(handler)
                    item.acknowledge()
                    return
                item.acknowledge()
                continue
            handler = self._write(handler, item)

    def _open(self) -> logging.Handler | None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return self.open_handler()
        except Exception:
            self._report_failure("open")
            return None

    def _write(self, handler: logging.Handler | None, line: str) -> logging.Handler | None:
        """Write one line; on the first failure close the handler and drop from then on."""
        if handler is None:
            self._count_drop()
            return None
        try:
            handler.handle(logging.makeLogRecord({"msg": line}))
        except Exception:
            self._count_drop()
            self._report_failure("write to")
            self._close_handler(handler)
            return None
        return handler

    def _report_failure(self, action: str) -> None:
        # Called inside an except block, so exc_info carries the OSError that says why.
        self._failed = True
        logger.error(
            "FileLogger could not %s %s; its lines are dropped until the next startup",
            action,
            self.path,
            exc_info=True,
        )

    def _close_handler(self, handler: logging.Handler | None) -> None:
        if handler is None:
            return
        try:
            handler.close()
        except Exception:
            # Closing flushes, which fails again on a full disk; the cause was already reported.
            logger.debug("FileLogger could not close %s", self.path, exc_info=True)

    def _count_drop(self, count: int = 1) -> None:
        with self._dropped_lock:
            self._dropped += count

    def _drop_queued(self) -> None:
        """Closed without ever starting: what was queued can never be written."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return
            self._count_drop()


def _check_path(path: str | os.PathLike[str]) -> Path:
    if not isinstance(path, str | os.PathLike) or not os.fspath(path):
        raise ValueError(f"path must be a non-empty file path, got {path!r}")
    return Path(path)


def _check_size(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


def _check_mode(value: str) -> FileMode:
    if value == "rotate":
        return "rotate"
    if value == "watched":
        return "watched"
    raise ValueError(f"mode must be one of {', '.join(MODES)}, got {value!r}")
