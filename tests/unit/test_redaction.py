"""Redaction of secrets in the API, logs, errors and events; sealed errors (encrypt_errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fastapi_taskflow import (
    ConfigurationError,
    InMemoryLogger,
    SqliteBackend,
    TaskManager,
    TaskStatus,
    task_log,
)
from fastapi_taskflow.redaction import MASK, Redactor, scrub

SECRET = "hunter2-very-secret"


async def run_one(manager: TaskManager, func: Any, *args: Any, **kwargs: Any) -> Any:
    await manager.startup()
    handle = manager.add_task(func, *args, **kwargs)
    await manager.join()
    await manager.shutdown()
    return handle.record


async def test_api_view_masks_secret_arguments_by_name() -> None:
    """Positional and keyword secrets, and secret keys in nested dicts, show as the mask."""
    manager = TaskManager(redact=["password", "token"])

    @manager.task()
    async def login(user: str, password: str, *, options: dict[str, Any], api_token: str) -> None:
        return None

    record = await run_one(
        manager,
        login,
        "ann",
        SECRET,
        options={"auth": {"refresh_token": "r-123"}, "n": 1},
        api_token="t-456",
    )
    shown = manager.record_dict(record, include_args=True)
    assert shown["args"] == ["ann", MASK]
    assert shown["kwargs"] == {
        "options": {"auth": {"refresh_token": MASK}, "n": 1},
        "api_token": MASK,
    }
    assert record.args == ("ann", SECRET)  # stored intact: retries still have the real value
    assert "args" not in manager.record_dict(record)


async def test_error_and_stacktrace_never_carry_a_secret_value() -> None:
    """A secret argument's value is scrubbed from the stored error, trace and lifecycle event."""
    events = InMemoryLogger()
    manager = TaskManager(redact=["password"], loggers=[events])

    @manager.task()
    async def connect(host: str, password: str) -> None:
        raise PermissionError(f"auth failed for {host} with {password}")

    record = await run_one(manager, connect, "db1", SECRET)
    assert record.error == f"PermissionError: auth failed for db1 with {MASK}"
    assert SECRET not in (record.stacktrace or "")
    assert "PermissionError" in (record.stacktrace or "")
    failed = [e for e in events.lifecycle_events if e.status is TaskStatus.FAILED]
    assert failed
    assert SECRET not in (failed[0].error or "") + (failed[0].stacktrace or "")


async def test_task_logs_are_scrubbed_in_thread_tasks_too() -> None:
    """task_log messages lose secret values and secret extra fields, in a thread task."""
    events = InMemoryLogger()
    manager = TaskManager(redact=["password", "token"], loggers=[events])

    @manager.task()
    def sync_login(password: str) -> None:
        task_log(f"trying {password}", token="abc-123", user="ann")

    record = await run_one(manager, sync_login, password=SECRET)
    assert record.logs[0].endswith(f"trying {MASK}")
    (event,) = events.log_events
    assert event.message == f"trying {MASK}"
    assert event.extra == {"token": MASK, "user": "ann"}


async def test_a_callable_decides_what_is_secret() -> None:
    """redact=callable(name, value) -> bool masks what it returns True for."""
    manager = TaskManager(
        redact=lambda name, value: isinstance(value, str) and value.startswith("sk_")
    )

    @manager.task()
    async def charge(card: str, amount: int) -> None:
        raise RuntimeError(f"declined {card}")

    record = await run_one(manager, charge, "sk_live_abcdef", 10)
    assert manager.record_dict(record, include_args=True)["args"] == [MASK, 10]
    assert record.error == f"RuntimeError: declined {MASK}"


async def test_span_exception_event_is_redacted() -> None:
    """The attempt span records the redacted error, never the raw message."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    manager = TaskManager(redact=["password"], tracing=provider)

    @manager.task()
    async def connect(password: str) -> None:
        raise ValueError(f"bad {password}")

    await run_one(manager, connect, SECRET)
    (span,) = exporter.get_finished_spans()
    attributes = dict(span.events[0].attributes or {})
    assert attributes["exception.message"] == f"ValueError: bad {MASK}"
    assert SECRET not in str(attributes["exception.stacktrace"])
    provider.shutdown()


def test_short_values_and_non_matching_names_are_left_alone() -> None:
    """Values under four characters are masked in arguments but not scrubbed from text."""
    redactor = Redactor(["pin"])

    def unlock(door: str, pin: str) -> None:
        return None

    assert redactor.arguments(unlock, ("front", "12"), {}) == (("front", MASK), {})
    assert redactor.secrets(unlock, ("front", "12"), {}) == ()
    assert scrub("door 12 is open", ()) == "door 12 is open"


def test_bad_redact_rule_is_refused() -> None:
    """A string (not a list of strings) is a clear ValueError."""
    with pytest.raises(ValueError, match="list of non-empty strings"):
        TaskManager(redact="password")


def test_encrypt_errors_needs_a_key() -> None:
    """encrypt_errors=True without encrypt_args_key is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="encrypt_args_key"):
        TaskManager(encrypt_errors=True)


async def test_sealed_error_shows_a_placeholder_and_reveals_with_the_key(tmp_path: Path) -> None:
    """encrypt_errors: stored and shown sealed; reveal_error opens it, also after a reload."""
    key = Fernet.generate_key()
    events = InMemoryLogger()
    manager = TaskManager(
        encrypt_args_key=key,
        encrypt_errors=True,
        snapshot_backend=SqliteBackend(tmp_path / "t.db"),
        loggers=[events],
    )

    @manager.task(name="leaky")
    async def leaky(account: str) -> None:
        raise KeyError(f"no such account {account}")

    record = await run_one(manager, leaky, "acct-42")
    assert record.error == "KeyError (details encrypted)"
    assert record.stacktrace is None
    shown = manager.record_dict(record)
    assert shown["error_encrypted"] is True
    assert "acct-42" not in str(shown)
    failed = [e for e in events.lifecycle_events if e.status is TaskStatus.FAILED]
    assert failed[0].error == "KeyError (details encrypted)"

    error, trace = manager.reveal_error(record)
    assert error == "KeyError: 'no such account acct-42'"
    assert trace is not None
    assert "Traceback" in trace
    revealed = manager.record_dict(record, reveal_errors=True)
    assert revealed["error"] == error

    backend = SqliteBackend(tmp_path / "t.db")
    await backend.open()
    stored = await backend.get_record(record.task_id)
    await backend.close()
    assert stored is not None
    assert stored.encrypted_error == record.encrypted_error
    assert manager.reveal_error(stored) == (error, trace)


async def test_success_after_a_retry_drops_the_sealed_error() -> None:
    """A retried task that then succeeds keeps no sealed error from its failed attempt."""
    manager = TaskManager(encrypt_args_key=Fernet.generate_key(), encrypt_errors=True)
    calls = {"n": 0}

    @manager.task(retries=1, delay=0)
    async def flaky() -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("down")

    record = await run_one(manager, flaky)
    assert record.status is TaskStatus.SUCCESS
    assert record.encrypted_error is None
    assert record.error is None


def test_reveal_with_a_wrong_key_shows_the_placeholder() -> None:
    """A sealed error no configured key opens stays the placeholder (and says so in the log)."""
    from fastapi_taskflow.models import TaskRecord

    sealer = TaskManager(encrypt_args_key=Fernet.generate_key(), encrypt_errors=True)
    other = TaskManager(encrypt_args_key=Fernet.generate_key(), encrypt_errors=True)
    assert sealer.privacy is not None
    assert sealer.privacy.error_cipher is not None
    record = TaskRecord(
        task_id="t1",
        func_name="f",
        error="E (details encrypted)",
        encrypted_error=sealer.privacy.error_cipher.encrypt(b'{"error":"x","stacktrace":null}'),
    )
    assert sealer.reveal_error(record) == ("x", None)
    assert other.reveal_error(record) == ("E (details encrypted)", None)
