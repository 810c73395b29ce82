"""A process pool built for tasks: one job per worker, live logs, crash isolation, hard timeouts.

``concurrent.futures.ProcessPoolExecutor`` is not used: it cannot stop one worker (a timed-out or
cancelled task would run on) and it marks the whole pool broken, failing every task in flight, when
one worker dies. Here each worker is a ``multiprocessing`` process with its own socket pair, so it
can be watched, terminated and replaced on its own.

The parent never blocks and starts no thread: it reads each worker's socket and exit sentinel with
``loop.add_reader``. Messages are frames: an 8-byte big-endian length, a one-byte kind, then a
pickle. The length prefix is our own (rather than ``Connection.recv_bytes``) so the parent can read
a large result in pieces without stalling the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import threading
import traceback
from collections.abc import Callable
from typing import Any

from ..context import current_sink
from ..errors import TaskArgumentError, TaskTimeoutError, WorkerCrashedError
from ..models import TaskContext
from ..tracing import attached

try:
    import cloudpickle as _cloudpickle
except ImportError:  # pragma: no cover - the "process" extra is optional
    _cloudpickle = None

__all__ = ["ProcessPool", "RemoteTraceback", "WorkerCrashedError"]

logger = logging.getLogger(__name__)

LogCallback = Callable[[str, str, dict[str, Any]], None]
ProgressCallback = Callable[[float, str | None], None]

# Frame kinds. Parent -> worker: JOB, STOP. Worker -> parent: the rest.
_JOB, _STOP = b"J", b"S"
_READY, _LOG, _PROGRESS, _OK, _ERROR = b"R", b"L", b"P", b"O", b"E"
_HEADER = struct.Struct("!Q")
_READ_CHUNK = 256 * 1024
# A fresh worker imports the task modules before it can take work; this bounds a worker stuck
# there (typically a spawned main module that starts a server because it lacks a __main__ guard).
_BOOT_TIMEOUT = 60.0
# Seconds between SIGTERM and SIGKILL, and between a polite stop and SIGTERM.
_KILL_GRACE = 2.0
# Plain values pickle by construction: check_arguments skips them so add_task stays cheap.
_PLAIN_TYPES = frozenset({int, float, str, bytes, bool, type(None), complex})


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in a worker, attached as its ``__cause__``."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n\n--- traceback in the worker process ---\n{self.text}"


# ---------------------------------------------------------------------------------------------
# Serialization (shared by both sides)


def _dumps(obj: Any) -> bytes:
    """cloudpickle when installed (lambdas, closures, classes defined in __main__), else pickle."""
    if _cloudpickle is not None:
        return bytes(_cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _frame(kind: bytes, body: bytes) -> bytes:
    return _HEADER.pack(len(body) + 1) + kind + body


def _type_name(obj: object) -> str:
    cls = type(obj)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<{_type_name(exc)} whose str() failed>"


def _func_name(func: Callable[..., Any]) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)


# ---------------------------------------------------------------------------------------------
# The worker side: runs in the child process


class _Channel:
    """The worker's end of the socket: blocking, and safe to send on from the task's threads."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()

    def send(self, kind: bytes, body: bytes) -> None:
        with self._lock:
            self._sock.sendall(_frame(kind, body))

    def recv(self) -> tuple[bytes, bytes] | None:
        """The next frame, or None when the parent closed its end."""
        header = self._recv_exactly(_HEADER.size)
        if header is None:
            return None
        (size,) = _HEADER.unpack(header)
        data = self._recv_exactly(size)
        if data is None:
            return None
        return data[:1], data[1:]

    def _recv_exactly(self, size: int) -> bytes | None:
        buffer = bytearray(size)
        view = memoryview(buffer)
        received = 0
        while received < size:
            count = self._sock.recv_into(view[received:])
            if count == 0:
                return None
            received += count
        return bytes(buffer)


class _WorkerSink:
    """The TaskSink of one job in a worker: logs and progress reach the parent as they happen."""

    def __init__(self, channel: _Channel, context: TaskContext) -> None:
        self.context = context
        self.closed = False
        self._channel = channel

    def log(self, message: str, level: str, extra: dict[str, Any]) -> None:
        if self.closed:
            return  # a thread the task left behind: its lines would be blamed on the next job
        try:
            body = pickle.dumps((message, level, extra))
        except Exception:
            # One odd value in **extra must not fail the task: send what it looks like instead.
            safe = {key: _picklable_or_repr(value) for key, value in extra.items()}
            body = pickle.dumps((message, level, safe))
        self._channel.send(_LOG, body)

    def progress(self, fraction: float, message: str | None) -> None:
        if self.closed:
            return
        self._channel.send(_PROGRESS, pickle.dumps((fraction, message)))


def _picklable_or_repr(value: Any) -> Any:
    try:
        pickle.dumps(value)
    except Exception:
        return repr(value)
    return value


def _error_body(exc: BaseException) -> bytes:
    """The exception itself when it survives a pickle round trip, and always its name and text.

    The round trip is tried here because some exceptions pickle but cannot be rebuilt (a custom
    ``__init__`` with required arguments); the parent would otherwise get an unloadable frame.
    """
    text = "".join(traceback.format_exception(exc))
    data: bytes | None
    try:
        data = _dumps(exc)
        pickle.loads(data)
    except Exception:
        data = None
    return pickle.dumps((data, _type_name(exc), _safe_str(exc), text))


def _result_frame(func: Callable[..., Any], result: Any) -> tuple[bytes, bytes]:
    try:
        return _OK, _dumps(result)
    except Exception as exc:
        error = RuntimeError(
            f"the result of {_func_name(func)} ({_type_name(result)}) cannot be sent back from "
            f"the worker process: {_safe_str(exc)}"
        )
        return _ERROR, _error_body(error)


def _run_job(channel: _Channel, payload: bytes) -> None:
    try:
        func, args, kwargs, context, carrier = pickle.loads(payload)
    except Exception as exc:  # e.g. the task's module cannot be imported in the worker
        channel.send(_ERROR, _error_body(exc))
        return
    sink = _WorkerSink(channel, context)
    token = current_sink.set(sink)
    try:
        with attached(carrier):
            result = func(*args, **kwargs)
    except Exception as exc:
        # Only Exception is sent back: SystemExit and KeyboardInterrupt end the worker, as they
        # would end a program, and the parent reports the exit code.
        channel.send(_ERROR, _error_body(exc))
        return
    finally:
        sink.closed = True
        current_sink.reset(token)
    channel.send(*_result_frame(func, result))


def _worker_main(sock: socket.socket) -> None:
    """Entry point of a worker process: take jobs one at a time until told to stop."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = _Channel(sock)
    try:
        channel.send(_READY, b"")
        while (frame := channel.recv()) is not None and frame[0] == _JOB:
            _run_job(channel, frame[1])
    except ConnectionError:
        pass  # the parent is gone: nobody is left to report to
    finally:
        sock.close()


# ---------------------------------------------------------------------------------------------
# The parent side


class _Job:
    """One call in flight on a worker: where its result and messages go."""

    __slots__ = ("future", "name", "on_log", "on_progress")

    def __init__(
        self,
        future: asyncio.Future[Any],
        name: str,
        on_log: LogCallback,
        on_progress: ProgressCallback,
    ) -> None:
        self.future = future
        self.name = name
        self.on_log = on_log
        self.on_progress = on_progress


class _Worker:
    """The parent's handle on one worker process: reads its frames and notices its exit."""

    def __init__(
        self,
        process: Any,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        on_exit: Callable[[_Worker], None],
    ) -> None:
        self.process = process
        self.pid: int = process.pid
        self.sock = sock
        self.loop = loop
        self.ready: asyncio.Future[None] = loop.create_future()
        self.job: _Job | None = None
        self.stopping = False  # the pool is ending it on purpose; its exit is not a crash
        self.shutdown = False  # ended by close() past shutdown_timeout
        self.exited = False
        self.kill_timer: asyncio.TimerHandle | None = None
        self._buffer = bytearray()
        self._on_exit = on_exit
        self._reading = True
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._on_readable)
        loop.add_reader(process.sentinel, self._on_sentinel)

    async def send_job(self, payload: bytes) -> None:
        await self.loop.sock_sendall(self.sock, _frame(_JOB, payload))

    def send_stop(self) -> bool:
        try:
            self.sock.send(_frame(_STOP, b""))
        except OSError:
            return False
        return True

    def _on_readable(self, at_exit: bool = False) -> None:
        """Read and parse what the worker wrote. ``at_exit``: the process is gone, so a
        read that would block is the end too (a child it left may hold the socket open)."""
        try:
            chunk = self.sock.recv(_READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            if not at_exit:
                return
            chunk = b""
        except OSError:
            chunk = b""
        if not chunk:
            self._stop_reading()  # EOF: the worker is exiting; its sentinel follows
            return
        self._buffer += chunk
        self._parse()

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self.loop.remove_reader(self.sock.fileno())

    def _parse(self) -> None:
        buffer, position = self._buffer, 0
        while len(buffer) - position >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer, position)
            end = position + _HEADER.size + size
            if len(buffer) < end:
                break
            with memoryview(buffer) as view:
                kind = bytes(view[position + _HEADER.size : position + _HEADER.size + 1])
                body = bytes(view[position + _HEADER.size + 1 : end])
            position = end
            self._dispatch(kind, body)
        del buffer[:position]

    def _dispatch(self, kind: bytes, body: bytes) -> None:
        if kind == _READY:
            if not self.ready.done():
                self.ready.set_result(None)
            return
        job = self.job
        if job is None or job.future.done():
            return  # late frames of an abandoned job
        if kind == _OK:
            _settle(job, body)
        elif kind == _ERROR:
            job.future.set_exception(_rebuild_error(body))
        else:
            _deliver(job, kind, body)

    def _on_sentinel(self) -> None:
        """The process ended: drain what it wrote before dying, then hand over to the pool."""
        self.loop.remove_reader(self.process.sentinel)
        while self._reading:
            self._on_readable(at_exit=True)
        self.exited = True
        self._on_exit(self)

    def terminate(self) -> None:
        """SIGTERM now, SIGKILL after a grace: a task may ignore SIGTERM but not SIGKILL."""
        self.stopping = True
        if not self.exited:
            self.process.terminate()
            self._set_timer(_KILL_GRACE, self.kill)

    def kill(self) -> None:
        if not self.exited:
            self.process.kill()

    def _set_timer(self, delay: float, callback: Callable[[], None]) -> None:
        if self.kill_timer is not None:
            self.kill_timer.cancel()
        self.kill_timer = self.loop.call_later(delay, callback)

    def stop(self) -> None:
        """Ask an idle worker to exit; terminate it if it does not within the grace."""
        self.stopping = True
        if not self.send_stop():
            self.terminate()
        else:
            self._set_timer(_KILL_GRACE, self.terminate)

    def release_resources(self) -> None:
        if self.kill_timer is not None:
            self.kill_timer.cancel()
        self._stop_reading()
        self.sock.close()
        try:
            self.process.close()
        except ValueError:  # not reaped (see _wait_exitcode); multiprocessing reaps it later
            logger.error("worker process %s could not be reaped", self.pid)


def _settle(job: _Job, body: bytes) -> None:
    try:
        result = pickle.loads(body)
    except Exception as exc:
        error = RuntimeError(
            f"the result of {job.name} came back from the worker process but cannot be loaded "
            f"here: {_safe_str(exc)}"
        )
        error.__cause__ = exc
        job.future.set_exception(error)
    else:
        job.future.set_result(result)


def _deliver(job: _Job, kind: bytes, body: bytes) -> None:
    """Hand a log line or a progress report to the job's callbacks."""
    try:
        if kind == _LOG:
            job.on_log(*pickle.loads(body))
        elif kind == _PROGRESS:
            job.on_progress(*pickle.loads(body))
    except Exception:
        # A failing callback (or an extra value the parent cannot load) must not break the pool
        # or the task.
        logger.warning(
            "process task %s: a log or progress message was lost", job.name, exc_info=True
        )


def _rebuild_error(body: bytes) -> BaseException:
    """The task's exception with its type, or a RuntimeError naming it when it did not survive."""
    data, type_name, message, text = pickle.loads(body)
    exc: object = None
    if data is not None:
        try:
            exc = pickle.loads(data)
        except Exception:
            exc = None
    # StopIteration cannot be set on a future; anything not an Exception has no business here.
    if not isinstance(exc, Exception) or isinstance(exc, StopIteration):
        exc = RuntimeError(
            f"{type_name}: {message} (raised in the worker process; the exception itself could "
            "not be sent back, its traceback is attached)"
        )
    assert isinstance(exc, Exception)
    exc.__cause__ = RemoteTraceback(text)
    return exc


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is None:
        return "worker process exited for an unknown reason"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = str(-exitcode)
        reason = f"worker process exited with signal {name}"
        if -exitcode == signal.SIGKILL:
            reason += " (killed from outside: often the kernel's out-of-memory killer)"
        return reason
    return f"worker process exited with exit code {exitcode}"


async def _wait_exitcode(process: Any) -> int | None:
    """Reap the process. Its sentinel fires a moment before the kernel marks it a zombie."""
    delay = 0.0005
    for _ in range(40):
        code = process.exitcode
        if code is not None:
            return int(code)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
    process.kill()
    for _ in range(20):
        await asyncio.sleep(0.05)
        if (code := process.exitcode) is not None:
            return int(code)
    return None


class ProcessPool:
    """Runs plain ``def`` tasks in worker processes, reused across jobs, started on first use.

    Each job gets an idle worker (callers wait in FIFO order when all are busy). A worker that dies
    fails only its own job with :class:`WorkerCrashedError`; a job past its timeout, or whose
    caller is cancelled, has its worker terminated. Replacements start when the next job needs one.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        shutdown_timeout: float = 30.0,
        start_method: str = "spawn",
    ) -> None:
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise ValueError(f"max_workers must be an int >= 1 or None, got {max_workers!r}")
        if (
            isinstance(shutdown_timeout, bool)
            or not isinstance(shutdown_timeout, int | float)
            or not 0 <= shutdown_timeout < float("inf")
        ):
            raise ValueError(
                "shutdown_timeout must be a finite number of seconds >= 0, "
                f"got {shutdown_timeout!r}"
            )
        methods = multiprocessing.get_all_start_methods()
        if start_method not in methods:
            raise ValueError(
                f"start_method must be one of {', '.join(methods)}, got {start_method!r}"
            )
        self._max_workers = max_workers or os.cpu_count() or 1
        self._shutdown_timeout = float(shutdown_timeout)
        # Any: typeshed types get_context(str) as BaseContext, which has no Process attribute.
        self._context: Any = multiprocessing.get_context(start_method)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: set[_Worker] = set()
        self._idle: list[_Worker] = []
        self._waiters: collections.deque[asyncio.Future[_Worker]] = collections.deque()
        self._exit_tasks: set[asyncio.Task[None]] = set()
        self._running = 0
        self._spawned = 0
        self._closed = False
        self._quiet = asyncio.Event()  # no job running
        self._quiet.set()
        self._empty = asyncio.Event()  # no worker process left
        self._empty.set()

    @property
    def running(self) -> int:
        """Jobs running now."""
        return self._running

    @property
    def size(self) -> int:
        """Worker processes alive now (idle, busy or being stopped)."""
        return len(self._workers)

    @property
    def max_workers(self) -> int:
        return self._max_workers

    # -- arguments --------------------------------------------------------------------------

    def check_arguments(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Raise TaskArgumentError naming the first argument a worker process could not receive."""
        problem = _pickle_problem(func)
        if problem is not None:
            raise TaskArgumentError(
                f"task function {_func_name(func)} cannot be sent to a worker process: {problem}"
            )
        for index, value in enumerate(args):
            if type(value) not in _PLAIN_TYPES and (problem := _pickle_problem(value)):
                label = _positional_label(func, index)
                raise TaskArgumentError(_argument_message(func, label, problem))
        for key, value in kwargs.items():
            if type(value) not in _PLAIN_TYPES and (problem := _pickle_problem(value)):
                raise TaskArgumentError(_argument_message(func, f"{key!r} (kwarg)", problem))

    def _encode_job(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        context: TaskContext,
        carrier: dict[str, str] | None = None,
    ) -> bytes:
        try:
            return _dumps((func, args, kwargs, context, carrier))
        except Exception as exc:
            self.check_arguments(func, args, kwargs)  # names the culprit when it can
            raise TaskArgumentError(
                f"the arguments of {_func_name(func)} cannot be sent to a worker process: "
                f"{_safe_str(exc)}"
            ) from None

    # -- running ------------------------------------------------------------------------------

    async def run(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        context: TaskContext,
        on_log: LogCallback,
        on_progress: ProgressCallback,
        timeout: float | None = None,
        trace_carrier: dict[str, str] | None = None,
    ) -> Any:
        """Run ``func(*args, **kwargs)`` in a worker and return its result (or raise its error).

        ``timeout`` counts from the moment a ready worker receives the job, so neither waiting for
        a free worker nor starting a fresh one uses it up.
        """
        payload = self._encode_job(func, args, kwargs, context, trace_carrier)
        worker = await self._acquire()
        self._running += 1
        self._quiet.clear()
        job = _Job(worker.loop.create_future(), _func_name(func), on_log, on_progress)
        try:
            await self._wait_ready(worker)
            worker.job = job
            # If the worker died, its exit handler fails the job with the exit reason.
            with contextlib.suppress(ConnectionError):
                await worker.send_job(payload)
            return await self._wait_result(job, timeout)
        finally:
            self._finish(worker, job)

    async def _wait_ready(self, worker: _Worker) -> None:
        if worker.ready.done():
            worker.ready.result()  # the common case: no extra task or timer per job
            return
        try:
            # Shielded: a cancelled caller must not cancel a readiness other callers may share.
            await asyncio.wait_for(asyncio.shield(worker.ready), _BOOT_TIMEOUT)
        except TimeoutError:
            worker.terminate()
            raise WorkerCrashedError(
                f"worker process (pid {worker.pid}) did not start within {_BOOT_TIMEOUT:g} s; "
                "if the app is a script, guard it with `if __name__ == '__main__':`",
                pid=worker.pid,
            ) from None

    async def _wait_result(self, job: _Job, timeout: float | None) -> Any:
        if timeout is None:
            return await job.future
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return await job.future
        except TimeoutError:
            if not deadline.expired():
                raise  # the task's own TimeoutError
            raise TaskTimeoutError(
                f"{job.name} ran longer than its timeout of {timeout:g} s; its worker process "
                "was terminated"
            ) from None

    def _finish(self, worker: _Worker, job: _Job) -> None:
        """After a job: reuse the worker if it finished cleanly, else terminate it."""
        self._running -= 1
        if self._running == 0:
            self._quiet.set()
        clean = worker.job is None or (job.future.done() and not job.future.cancelled())
        worker.job = None
        if not job.future.done():
            job.future.cancel()
        if worker.exited or worker.stopping:
            return
        if clean:
            self._release(worker)
        else:
            # Timed out, cancelled, or interrupted mid-send: the worker's state is unknown.
            worker.terminate()

    # -- workers ------------------------------------------------------------------------------

    async def _acquire(self) -> _Worker:
        if self._closed:
            raise RuntimeError("the process pool is closed")
        if self._idle:
            return self._idle.pop()  # LIFO keeps recently used workers warm
        if len(self._workers) < self._max_workers:
            return self._spawn()
        waiter: asyncio.Future[_Worker] = self._bind_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release(waiter.result())  # handed a worker just as we were cancelled
            raise

    def _release(self, worker: _Worker) -> None:
        if self._closed:
            worker.stop()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(worker)
                return
        self._idle.append(worker)

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None or not self._workers:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("a ProcessPool serves one event loop; this call came from another")
        return loop

    def _spawn(self) -> _Worker:
        loop = self._bind_loop()
        parent_sock, child_sock = socket.socketpair()
        self._spawned += 1
        try:
            # daemon: multiprocessing terminates workers if the parent exits without close().
            process = self._context.Process(
                target=_worker_main,
                args=(child_sock,),
                name=f"taskflow-worker-{self._spawned}",
                daemon=True,
            )
            process.start()
        except BaseException:
            parent_sock.close()
            raise
        finally:
            child_sock.close()  # the child has its own copy now
        worker = _Worker(process, parent_sock, loop, self._on_worker_exit)
        self._workers.add(worker)
        self._empty.clear()
        logger.debug("started worker process %s (pid %s)", process.name, worker.pid)
        return worker

    def _on_worker_exit(self, worker: _Worker) -> None:
        if worker in self._idle:
            self._idle.remove(worker)
        task = worker.loop.create_task(self._retire(worker))
        self._exit_tasks.add(task)
        task.add_done_callback(self._exit_tasks.discard)

    async def _retire(self, worker: _Worker) -> None:
        """Reap an exited worker, fail its job if it had one, and start a replacement if needed."""
        exitcode = await _wait_exitcode(worker.process)
        error = self._crash_error(worker, exitcode)
        job = worker.job
        if job is not None and not job.future.done():
            job.future.set_exception(error)
        if not worker.ready.done():
            worker.ready.set_exception(error)
            worker.ready.exception()  # mark retrieved: nobody may be waiting for it
        if not worker.stopping:
            logger.warning("%s; it will be replaced", error)
        worker.release_resources()
        self._workers.discard(worker)
        self._replace_for_waiters()
        if not self._workers:
            self._empty.set()

    def _crash_error(self, worker: _Worker, exitcode: int | None) -> WorkerCrashedError:
        name = worker.job.name if worker.job is not None else None
        if worker.shutdown:
            message = f"worker process (pid {worker.pid}) was terminated at shutdown"
            message += f" while running {name}" if name else ""
            message += f": it ran past shutdown_timeout ({self._shutdown_timeout:g} s)"
        else:
            where = f"pid {worker.pid}, while running {name}" if name else f"pid {worker.pid}"
            message = f"{_exit_reason(exitcode)} ({where})"
        return WorkerCrashedError(
            message, exitcode=exitcode, pid=worker.pid, shutdown=worker.shutdown
        )

    def _replace_for_waiters(self) -> None:
        """A slot freed up: give callers waiting for a worker a fresh one."""
        while self._waiters and not self._closed and len(self._workers) < self._max_workers:
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            try:
                waiter.set_result(self._spawn())
            except Exception as exc:  # e.g. the OS refuses another process
                waiter.set_exception(exc)

    # -- shutdown -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop taking jobs, let running ones finish within shutdown_timeout, then terminate.

        Returns when every worker process has exited and been reaped (no zombie is left).
        """
        self._closed = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(RuntimeError("the process pool was closed"))
                waiter.exception()
        self._waiters.clear()
        for worker in self._idle:
            worker.stop()
        self._idle.clear()
        try:
            await asyncio.wait_for(self._quiet.wait(), self._shutdown_timeout)
        except TimeoutError:
            # Every worker still here is busy (idle ones were asked to stop above).
            for worker in list(self._workers):
                if not worker.exited and not worker.stopping:
                    worker.shutdown = True
                    worker.terminate()
        await self._wait_all_exited()

    async def _wait_all_exited(self) -> None:
        # Bounded: stop -> SIGTERM -> SIGKILL each take at most _KILL_GRACE.
        try:
            await asyncio.wait_for(self._empty.wait(), 3 * _KILL_GRACE + 5)
        except TimeoutError:
            logger.error(
                "worker processes %s did not exit after SIGKILL",
                sorted(w.pid for w in self._workers),
            )
        if self._exit_tasks:
            await asyncio.gather(*self._exit_tasks, return_exceptions=True)


def _pickle_problem(value: Any) -> str | None:
    """Why ``value`` cannot be sent to a worker, or None. The fast C pickler is tried first."""
    try:
        pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        return None
    except Exception as exc:
        first = exc
    if _cloudpickle is None:
        hint = ""
        if isinstance(first, pickle.PicklingError | AttributeError):
            hint = (
                " (install cloudpickle to send lambdas and closures: "
                "pip install 'fastapi-taskflow[process]')"
            )
        return f"{_safe_str(first)}{hint}"
    try:
        _cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        return None
    except Exception as exc:
        return _safe_str(exc)


def _positional_label(func: Callable[..., Any], index: int) -> str:
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if index < len(params) and params[index].kind in positional:
        return f"{params[index].name!r} (positional {index})"
    return f"{index} (positional)"


def _argument_message(func: Callable[..., Any], label: str, problem: str) -> str:
    return f"argument {label} of {_func_name(func)} cannot be sent to a worker process: {problem}"
