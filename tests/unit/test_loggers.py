"""Observers: line formats, level filtering, the file writer thread, the chain, the test helpers."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fastapi_taskflow.loggers import (
    FileLogger,
    InMemoryLogger,
    LifecycleEvent,
    LogEvent,
    LoggingObserver,
    ObserverChain,
    StdoutLogger,
    TaskObserver,
)
from fastapi_taskflow.models import TaskStatus

OBSERVER_LOGGER = "fastapi_taskflow.loggers"


def log_event(message: str = "hello", level: str = "info", **overrides: Any) -> LogEvent:
    fields: dict[str, Any] = {
        "task_id": uuid.uuid4().hex,
        "func_name": "send_email",
        "message": message,
        "level": level,
        "timestamp": datetime.now(UTC),
        "attempt": 1,
    }
    fields.update(overrides)
    return LogEvent(**fields)


def lifecycle_event(status: TaskStatus, **overrides: Any) -> LifecycleEvent:
    fields: dict[str, Any] = {
        "task_id": uuid.uuid4().hex,
        "func_name": "send_email",
        "status": status,
        "timestamp": datetime.now(UTC),
        "attempt": 1,
    }
    fields.update(overrides)
    return LifecycleEvent(**fields)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def file_messages(path: Path) -> list[str]:
    """The ``message`` of every JSON line in a log file."""
    return [line["message"] for line in json_lines(path.read_text(encoding="utf-8"))]


def file_names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def longest_line(directory: Path) -> int:
    return max(
        len(line)
        for file in directory.iterdir()
        for line in file.read_text(encoding="utf-8").splitlines()
    )


@pytest.fixture
async def file_loggers() -> AsyncIterator[list[FileLogger]]:
    """Every FileLogger a test appends here is closed afterwards, even if the test fails."""
    made: list[FileLogger] = []
    yield made
    for observer in made:
        await observer.close()


@pytest.fixture
async def file_logger(
    file_loggers: list[FileLogger],
) -> Callable[..., FileLogger]:
    def make(path: Path, **options: Any) -> FileLogger:
        observer = FileLogger(path, **options)
        file_loggers.append(observer)
        return observer

    return make


def observer_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == OBSERVER_LOGGER and r.levelno >= logging.ERROR]


# --- line formats ----------------------------------------------------------------------------


async def test_json_line_carries_full_task_id_and_extra_fields() -> None:
    """A log event becomes one JSON object with the full task id and the extra fields flattened."""
    stream = io.StringIO()
    event = log_event("charged", tags={"tenant": "acme"}, extra={"amount": 42, "currency": "EUR"})

    await StdoutLogger(stream=stream).on_log(event)

    [line] = json_lines(stream.getvalue())
    assert line["task_id"] == event.task_id
    assert len(line["task_id"]) == 32
    assert line["event"] == "log"
    assert line["message"] == "charged"
    assert line["level"] == "info"
    assert line["func_name"] == "send_email"
    assert line["attempt"] == 1
    assert line["queue"] == "default"
    assert line["tags"] == {"tenant": "acme"}
    assert line["amount"] == 42
    assert line["currency"] == "EUR"
    assert datetime.fromisoformat(line["timestamp"]).utcoffset() is not None


async def test_extra_fields_never_override_fixed_fields() -> None:
    """An extra named like a fixed field is kept under an ``extra_`` prefix, not substituted."""
    stream = io.StringIO()
    event = log_event(extra={"task_id": "forged", "level": "critical", "note": object()})

    await StdoutLogger(stream=stream).on_log(event)

    [line] = json_lines(stream.getvalue())
    assert line["task_id"] == event.task_id
    assert line["level"] == "info"
    assert line["extra_task_id"] == "forged"
    assert line["extra_level"] == "critical"
    assert isinstance(line["note"], str)  # unknown objects are rendered, not fatal


async def test_json_lifecycle_line_has_status_duration_and_error() -> None:
    """A final failure is a lifecycle line at error level with status, duration and error."""
    stream = io.StringIO()
    event = lifecycle_event(TaskStatus.FAILED, duration=1.25, error="ValueError: boom")

    await StdoutLogger(log_lifecycle=True, stream=stream).on_lifecycle(event)

    [line] = json_lines(stream.getvalue())
    assert line["event"] == "lifecycle"
    assert line["status"] == "failed"
    assert line["level"] == "error"
    assert line["duration"] == 1.25
    assert line["error"] == "ValueError: boom"
    assert line["task_id"] == event.task_id


async def test_lifecycle_events_are_ignored_when_log_lifecycle_is_false() -> None:
    """With log_lifecycle=False (the StdoutLogger default) status changes are not written."""
    stream = io.StringIO()

    await StdoutLogger(stream=stream).on_lifecycle(lifecycle_event(TaskStatus.SUCCESS))

    assert stream.getvalue() == ""


async def test_text_format_is_one_line_per_event() -> None:
    """format="text" writes one readable line, with newlines in the message escaped."""
    stream = io.StringIO()
    event = log_event("first\nsecond", level="warning", extra={"user": "ada"})

    await StdoutLogger(format="text", stream=stream).on_log(event)

    text = stream.getvalue()
    assert text.count("\n") == 1
    assert "WARNING" in text
    assert f"send_email[{event.task_id}]" in text
    assert "first\\nsecond" in text
    assert "user=ada" in text


async def test_stdout_logger_writes_to_sys_stdout_by_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without a stream, lines go to whatever sys.stdout is at the time of writing."""
    event = log_event()

    await StdoutLogger().on_log(event)

    [line] = json_lines(capsys.readouterr().out)
    assert line["task_id"] == event.task_id


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: StdoutLogger(format="xml"), "format must be one of json, text"),
        (lambda: StdoutLogger(min_level="loud"), "level must be one of"),
        (lambda: FileLogger("x.log", mode="daily"), "mode must be one of rotate, watched"),
        (lambda: FileLogger("x.log", max_bytes=-1), "max_bytes must be an int >= 0"),
        (lambda: FileLogger("x.log", backup_count=-1), "backup_count must be an int >= 0"),
        (lambda: FileLogger("x.log", max_bytes=True), "max_bytes must be an int >= 0"),
        (lambda: FileLogger("", format="json"), "path must be a non-empty file path"),
        (lambda: FileLogger("x.log", format="yaml"), "format must be one of json, text"),
    ],
)
def test_bad_arguments_are_rejected_with_a_clear_message(
    factory: Callable[[], TaskObserver], message: str
) -> None:
    """Invalid observer arguments raise ValueError naming the argument and what is allowed."""
    with pytest.raises(ValueError, match=message):
        factory()


# --- level filtering -------------------------------------------------------------------------


async def test_min_level_drops_events_below_it() -> None:
    """An observer with min_level="warning" sees warning and above, nothing lower."""
    stream = io.StringIO()
    chain = ObserverChain([StdoutLogger(min_level="warning", stream=stream)])

    for level in ("debug", "info", "warning", "error", "critical"):
        await chain.on_log(log_event(level, level=level))

    assert [line["message"] for line in json_lines(stream.getvalue())] == [
        "warning",
        "error",
        "critical",
    ]


async def test_min_level_also_filters_lifecycle_events() -> None:
    """min_level="warning" with lifecycle on keeps failures and drops routine status changes."""
    stream = io.StringIO()
    observer = StdoutLogger(min_level="warning", log_lifecycle=True, stream=stream)

    for status in (TaskStatus.RUNNING, TaskStatus.SUCCESS, TaskStatus.FAILED):
        await observer.on_lifecycle(lifecycle_event(status))

    assert [line["status"] for line in json_lines(stream.getvalue())] == ["failed"]


# --- FileLogger ------------------------------------------------------------------------------


async def test_file_logger_writes_json_lines(
    tmp_path: Path, file_logger: Callable[..., FileLogger]
) -> None:
    """Lines reach the file (parent folders created) once flush() returns."""
    path = tmp_path / "logs" / "nested" / "tasks.log"
    observer = file_logger(path, log_lifecycle=True)
    await observer.startup()
    event = log_event("written", extra={"order": 7})

    await observer.on_log(event)
    await observer.on_lifecycle(lifecycle_event(TaskStatus.SUCCESS, task_id=event.task_id))
    await observer.flush()

    lines = json_lines(path.read_text(encoding="utf-8"))
    assert [line["event"] for line in lines] == ["log", "lifecycle"]
    assert lines[0]["order"] == 7
    assert {line["task_id"] for line in lines} == {event.task_id}


async def test_file_logger_text_format(
    tmp_path: Path, file_logger: Callable[..., FileLogger]
) -> None:
    """format="text" writes plain lines to the file."""
    path = tmp_path / "tasks.log"
    observer = file_logger(path, format="text")
    await observer.startup()

    await observer.on_log(log_event("plain words"))
    await observer.flush()

    assert "plain words" in path.read_text(encoding="utf-8")
    assert not path.read_text(encoding="utf-8").startswith("{")


async def test_rotate_mode_rolls_the_file_over(
    tmp_path: Path, file_logger: Callable[..., FileLogger]
) -> None:
    """mode="rotate" with a small max_bytes creates backups and keeps only backup_count."""
    path = tmp_path / "tasks.log"
    observer = file_logger(path, max_bytes=400, backup_count=2)
    await observer.startup()

    for i in range(20):
        await observer.on_log(log_event(f"line {i}"))
    await observer.flush()

    assert file_names(tmp_path) == [
        "tasks.log",
        "tasks.log.1",
        "tasks.log.2",
    ]
    assert longest_line(tmp_path) < 400
    assert file_messages(path)[-1] == "line 19"


async def test_watched_mode_reopens_a_moved_file(
    tmp_path: Path, file_logger: Callable[..., FileLogger]
) -> None:
    """mode="watched" notices the file was moved away (logrotate) and starts a new one."""
    path = tmp_path / "tasks.log"
    observer = file_logger(path, mode="watched")
    await observer.startup()
    await observer.on_log(log_event("before"))
    await observer.flush()

    path.rename(tmp_path / "tasks.log.old")
    await observer.on_log(log_event("after"))
    await observer.flush()

    assert file_messages(path) == ["after"]
    assert file_messages(tmp_path / "tasks.log.old") == ["before"]


async def test_unopenable_file_is_reported_once_and_never_raises(
    tmp_path: Path, file_logger: Callable[..., FileLogger], caplog: pytest.LogCaptureFixture
) -> None:
    """A path under a regular file fails to open: one error with exc_info, lines are counted."""
    not_a_dir = tmp_path / "plain-file"
    not_a_dir.write_text("", encoding="utf-8")
    observer = file_logger(not_a_dir / "tasks.log")

    await observer.startup()
    for _ in range(3):
        await observer.on_log(log_event())
    await observer.flush()

    [error] = observer_errors(caplog)
    assert error.exc_info is not None
    assert "tasks.log" in error.getMessage()
    assert observer.failed
    assert observer.dropped == 3


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
async def test_write_error_on_a_full_disk_is_reported_once(
    file_logger: Callable[..., FileLogger], caplog: pytest.LogCaptureFixture
) -> None:
    """Writes failing with ENOSPC (/dev/full) log one error; the failing and later lines drop."""
    observer = file_logger(Path("/dev/full"), mode="watched")
    await observer.startup()

    for _ in range(4):
        await observer.on_log(log_event())
    await observer.flush()

    [error] = observer_errors(caplog)
    assert error.exc_info is not None
    assert isinstance(error.exc_info[1], OSError)
    assert observer.dropped == 4


async def test_writes_happen_on_the_writer_thread_without_blocking_the_loop(
    tmp_path: Path, file_loggers: list[FileLogger]
) -> None:
    """on_log returns while the disk is stuck; the write itself runs on another thread."""
    gate = threading.Event()
    writer_threads: list[int] = []

    class StuckDisk(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            writer_threads.append(threading.get_ident())
            gate.wait(timeout=10)

    class SlowFileLogger(FileLogger):
        def open_handler(self) -> logging.Handler:
            return StuckDisk()

    observer = SlowFileLogger(tmp_path / "tasks.log")
    file_loggers.append(observer)
    await observer.startup()

    await observer.on_log(log_event("one"))
    await observer.on_log(log_event("two"))  # returns although the first write is still stuck
    assert not gate.is_set()
    gate.set()
    await observer.flush()

    assert len(writer_threads) == 2
    assert threading.get_ident() not in writer_threads


async def test_lines_before_startup_are_written_and_after_close_are_dropped(
    tmp_path: Path,
) -> None:
    """Lines given before startup wait for the file; lines after close are counted as dropped."""
    path = tmp_path / "tasks.log"
    observer = FileLogger(path)

    await observer.on_log(log_event("early"))
    await observer.startup()
    await observer.close()
    await observer.on_log(log_event("late"))

    assert file_messages(path) == ["early"]
    assert observer.dropped == 1


async def test_file_logger_can_start_again_after_close(tmp_path: Path) -> None:
    """A closed FileLogger started again (a second app lifespan) appends to the same file."""
    path = tmp_path / "tasks.log"
    observer = FileLogger(path)

    for message in ("first run", "second run"):
        await observer.startup()
        await observer.on_log(log_event(message))
        await observer.close()

    assert file_messages(path) == ["first run", "second run"]


# --- ObserverChain ---------------------------------------------------------------------------


class ExplodingObserver(TaskObserver):
    async def on_log(self, event: LogEvent) -> None:
        raise RuntimeError("observer bug")

    async def on_lifecycle(self, event: LifecycleEvent) -> None:
        raise RuntimeError("observer bug")


async def test_chain_isolates_a_failing_observer(caplog: pytest.LogCaptureFixture) -> None:
    """A raising observer is logged with exc_info and counted; the next one still gets events."""
    memory = InMemoryLogger()
    chain = ObserverChain([ExplodingObserver(), memory])
    event = log_event()

    await chain.on_log(event)
    await chain.on_lifecycle(lifecycle_event(TaskStatus.RUNNING, task_id=event.task_id))

    assert memory.messages() == ["hello"]
    assert memory.statuses(event.task_id) == [TaskStatus.RUNNING]
    assert chain.failures == 2
    errors = observer_errors(caplog)
    assert len(errors) == 2
    assert all(e.exc_info is not None for e in errors)


# --- InMemoryLogger --------------------------------------------------------------------------


async def test_in_memory_logger_helpers_filter_by_task() -> None:
    """messages() and statuses() return one task's history in order; clear() forgets it all."""
    memory = InMemoryLogger()
    ours, other = uuid.uuid4().hex, uuid.uuid4().hex
    await memory.on_log(log_event("a", task_id=ours))
    await memory.on_log(log_event("b", task_id=other))
    await memory.on_log(log_event("c", level="debug", task_id=ours))
    for status in (TaskStatus.RUNNING, TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.SUCCESS):
        await memory.on_lifecycle(lifecycle_event(status, task_id=ours))
    await memory.on_lifecycle(lifecycle_event(TaskStatus.FAILED, task_id=other))

    assert memory.messages() == ["a", "b", "c"]
    assert memory.messages(ours) == ["a", "c"]
    assert memory.statuses(ours) == [
        TaskStatus.RUNNING,
        TaskStatus.PENDING,
        TaskStatus.RUNNING,
        TaskStatus.SUCCESS,
    ]
    memory.clear()
    assert memory.log_events == []
    assert memory.lifecycle_events == []


async def test_in_memory_logger_respects_its_options() -> None:
    """min_level and log_lifecycle=False limit what InMemoryLogger keeps."""
    memory = InMemoryLogger(min_level="error", log_lifecycle=False)

    await memory.on_log(log_event("minor", level="info"))
    await memory.on_log(log_event("major", level="error"))
    await memory.on_lifecycle(lifecycle_event(TaskStatus.FAILED))

    assert memory.messages() == ["major"]
    assert memory.lifecycle_events == []


# --- LoggingObserver -------------------------------------------------------------------------


async def test_logging_observer_forwards_with_structured_extra(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Events reach the stdlib logger with task fields as record attributes."""
    caplog.set_level(logging.INFO, logger="fastapi_taskflow.tasks")
    event = log_event("charged", level="warning", extra={"amount": 42, "name": "clash"})

    await LoggingObserver().on_log(event)

    [record] = [r for r in caplog.records if r.name == "fastapi_taskflow.tasks"]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == f"send_email[{event.task_id}] charged"
    assert record.task_id == event.task_id
    assert record.func_name == "send_email"
    assert record.attempt == 1
    assert record.amount == 42
    assert record.extra_name == "clash"  # would overwrite LogRecord.name otherwise


async def test_logging_observer_logs_lifecycle_at_the_status_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A final failure is logged at ERROR on the given logger; log_lifecycle=False skips it."""
    target = logging.getLogger("tests.app")
    caplog.set_level(logging.INFO, logger="tests.app")
    event = lifecycle_event(TaskStatus.FAILED, error="boom")

    await LoggingObserver(target).on_lifecycle(event)
    await LoggingObserver(target, log_lifecycle=False).on_lifecycle(event)

    [record] = [r for r in caplog.records if r.name == "tests.app"]
    assert record.levelno == logging.ERROR
    assert record.status == "failed"
    assert record.error == "boom"


async def test_a_stalled_disk_drops_lines_past_max_queued_and_warns_once(
    tmp_path: Path, file_loggers: list[FileLogger], caplog: pytest.LogCaptureFixture
) -> None:
    """While the writer is stuck, lines past max_queued are dropped and counted, with one
    warning; once the disk catches up, new lines are written again."""
    gate, writing = threading.Event(), threading.Event()
    written: list[str] = []

    class StuckDisk(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            writing.set()
            gate.wait(timeout=10)
            written.append(record.getMessage())

    class SlowFileLogger(FileLogger):
        def open_handler(self) -> logging.Handler:
            return StuckDisk()

    observer = SlowFileLogger(tmp_path / "tasks.log", max_queued=3, format="text")
    file_loggers.append(observer)
    await observer.startup()
    await observer.on_log(log_event("line 0"))
    assert await asyncio.to_thread(writing.wait, 10)  # the writer holds line 0, stuck
    for number in range(1, 10):
        await observer.on_log(log_event(f"line {number}"))
    gate.set()
    await observer.flush()
    await observer.on_log(log_event("after"))
    await observer.flush()

    # One line was taken by the stuck writer, three waited, the other six were dropped.
    assert observer.dropped == 6
    assert len(written) == 5
    assert "after" in written[-1]
    warnings = [r for r in caplog.records if "new lines are dropped" in r.getMessage()]
    assert len(warnings) == 1


def test_max_queued_must_be_positive() -> None:
    """max_queued=0 would drop every line: refused with the reason."""
    with pytest.raises(ValueError, match="max_queued must be an int >= 1"):
        FileLogger("x.log", max_queued=0)
