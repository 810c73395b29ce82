"""Redaction and sealed errors: what the API, logs, events and spans may show of a task.

``TaskManager(redact=["password", "token"])`` masks every argument, log field and nested dict
key whose name contains one of the words (case-insensitive); ``redact=callable`` decides with
``callable(name, value) -> bool``. Positional arguments are matched by their parameter name.
The values of masked arguments are also scrubbed wherever they appear verbatim in free text:
error texts, stack traces, log messages, the values of ``task_log`` fields (whatever their
name) and ``set_progress`` messages (values shorter than ``MIN_SECRET`` characters are not: they
would hide unrelated text).

``encrypt_errors=True`` (needs ``encrypt_args_key``) stores the error text and stack trace
encrypted: everyone sees ``"ValueError (details encrypted)"``; :meth:`ErrorPolicy.reveal`
(``TaskManager.reveal_error``) decrypts for an authenticated user.

Redaction changes what is *shown*: the stored arguments stay intact so retries and requeues
work. Storage secrecy is the job of ``encrypt_args_key``. In attempts, :class:`RedactionHook`
(an attempt hook, dispatch/hooks.py) applies the policy to errors, logs and progress.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .crypto import ArgumentCipher
from .dispatch.hooks import AttemptHook, ErrorFields
from .errors import ArgumentDecryptionError
from .models import TaskRecord

if TYPE_CHECKING:
    from .dispatch.job import Job

logger = logging.getLogger("fastapi_taskflow")

MASK = "***"
MIN_SECRET = 4
RedactRule = Sequence[str] | Callable[[str, Any], bool]


class Redactor:
    """Decides which names are secret and masks them in arguments, mappings and text."""

    def __init__(self, rule: RedactRule) -> None:
        self._signatures: dict[Any, inspect.Signature | None] = {}
        if callable(rule):
            self._match: Callable[[str, Any], bool] = rule
            return
        if isinstance(rule, str | bytes) or not all(isinstance(w, str) and w for w in rule):
            raise ValueError(
                f"redact must be a list of non-empty strings or a callable, got {rule!r}"
            )
        words = tuple(w.lower() for w in rule)
        self._match = lambda name, _value: any(w in name.lower() for w in words)

    def matches(self, name: str, value: Any) -> bool:
        return bool(self._match(name, value))

    def value(self, name: str, value: Any) -> Any:
        """``value`` masked when ``name`` is secret; nested dicts and lists are searched too."""
        if self.matches(name, value):
            return MASK
        if isinstance(value, dict):
            return self.mapping(value)
        if isinstance(value, list | tuple):
            return type(value)(self.value(name, v) for v in value)
        return value

    def mapping(self, data: dict[Any, Any]) -> dict[Any, Any]:
        return {k: self.value(str(k), v) for k, v in data.items()}

    def arguments(
        self, func: Callable[..., Any] | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``args``/``kwargs`` with secret parameters masked (positional ones by their name)."""
        names = self._positional_names(func, len(args))
        shown = tuple(
            self.value(n, v) if n else self._nested(v) for n, v in zip(names, args, strict=True)
        )
        return shown, self.mapping(kwargs)

    def _nested(self, value: Any) -> Any:
        return self.value("", value) if isinstance(value, dict | list | tuple) else value

    def secrets(
        self, func: Callable[..., Any] | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[str, ...]:
        """The text of every masked value, longest first, for scrubbing free text."""
        found: set[str] = set()
        names = self._positional_names(func, len(args))
        for name, value in [*zip(names, args, strict=True), *kwargs.items()]:
            self._collect(name or "", value, found)
        return tuple(sorted(found, key=len, reverse=True))

    def _collect(self, name: str, value: Any, found: set[str]) -> None:
        if self.matches(name, value):
            if isinstance(value, str | int | float | bytes) and not isinstance(value, bool):
                text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
                if len(text) >= MIN_SECRET:
                    found.add(text)
        elif isinstance(value, dict):
            for key, item in value.items():
                self._collect(str(key), item, found)
        elif isinstance(value, list | tuple):
            for item in value:
                self._collect(name, item, found)

    def _positional_names(self, func: Callable[..., Any] | None, count: int) -> list[str | None]:
        signature = self._signature(func)
        if signature is None:
            return [None] * count
        names: list[str | None] = []
        for param in signature.parameters.values():
            if param.kind is param.VAR_POSITIONAL:
                names.extend([param.name] * (count - len(names)))
            elif param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
                names.append(param.name)
        return (names + [None] * count)[:count]

    def _signature(self, func: Callable[..., Any] | None) -> inspect.Signature | None:
        if func is None:
            return None
        signatures = self._signatures
        if func not in signatures:
            try:
                signatures[func] = inspect.signature(func)
            except (TypeError, ValueError):
                signatures[func] = None
        return signatures[func]


def scrub(text: str | None, secrets: Sequence[str]) -> str | None:
    """``text`` with every secret replaced by the mask."""
    if not text or not secrets:
        return text
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def scrub_values(value: Any, secrets: Sequence[str]) -> Any:
    """``value`` with secrets scrubbed from its text, searching dicts, lists and tuples; a
    number whose text is a secret is masked whole."""
    if not secrets:
        return value
    if isinstance(value, str):
        return scrub(value, secrets)
    if isinstance(value, dict):
        return {k: scrub_values(v, secrets) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(scrub_values(v, secrets) for v in value)
    if isinstance(value, int | float) and not isinstance(value, bool) and str(value) in secrets:
        return MASK
    return value


class ErrorPolicy:
    """Applies redaction and ``encrypt_errors`` where a task's data leaves the engine."""

    def __init__(self, redactor: Redactor | None, error_cipher: ArgumentCipher | None) -> None:
        self.redactor = redactor
        self.error_cipher = error_cipher

    def secrets(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[str, ...]:
        return self.redactor.secrets(func, args, kwargs) if self.redactor is not None else ()

    def error_fields(
        self, secrets: Sequence[str], exc: BaseException, error: str, stacktrace: str | None
    ) -> tuple[str, str | None, bytes | None]:
        """(error shown, stack trace shown, sealed original) for a failed attempt."""
        error = scrub(error, secrets) or error
        stacktrace = scrub(stacktrace, secrets)
        if self.error_cipher is None:
            return error, stacktrace, None
        sealed = self.error_cipher.encrypt(
            json.dumps({"error": error, "stacktrace": stacktrace}).encode()
        )
        return f"{type(exc).__name__} (details encrypted)", None, sealed

    def log_fields(
        self, secrets: Sequence[str], message: str, extra: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """A ``task_log`` message and its extra fields: secret names masked, and secret values
        scrubbed from every field (``detail=password`` is caught by its value)."""
        if self.redactor is None:
            return message, extra
        fields = scrub_values(self.redactor.mapping(extra), secrets)
        return scrub(message, secrets) or message, fields

    def view(
        self,
        record: TaskRecord,
        func: Callable[..., Any] | None,
        *,
        include_args: bool,
        reveal: bool,
    ) -> dict[str, Any]:
        """``record.to_dict()`` with arguments redacted and, if ``reveal``, the error decrypted."""
        shown = record
        if include_args and self.redactor is not None and not record.encrypted:
            args, kwargs = self.redactor.arguments(func, record.args, record.kwargs)
            shown = copy.copy(record)
            shown.args, shown.kwargs = args, kwargs
        data = shown.to_dict(include_args=include_args)
        if reveal and record.encrypted_error is not None:
            data["error"], data["stacktrace"] = self.reveal(record)
        return data

    def reveal(self, record: TaskRecord) -> tuple[str | None, str | None]:
        """The error text and stack trace in clear (the placeholder when it cannot decrypt)."""
        if record.encrypted_error is None or self.error_cipher is None:
            return record.error, record.stacktrace
        try:
            clear = json.loads(self.error_cipher.decrypt(record.encrypted_error))
        except (ArgumentDecryptionError, ValueError):
            logger.warning("task %s: its sealed error cannot be decrypted", record.task_id)
            return record.error, record.stacktrace
        return clear.get("error"), clear.get("stacktrace")


class RedactionHook(AttemptHook):
    """The attempt hook: learns each task's secret values from its clear arguments, then
    scrubs (and seals, if configured) its errors and filters its logs and progress."""

    def __init__(self, policy: ErrorPolicy) -> None:
        self.policy = policy
        # Secret values of the jobs that reached their call, until they leave.
        self._secrets: dict[Job, tuple[str, ...]] = {}

    def before_call(self, job: Job, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.policy.redactor is None:
            return  # sealing only: nothing to scrub or filter
        secrets = self.policy.secrets(job.definition.func, args, kwargs)
        self._secrets[job] = secrets
        job.log_filter = functools.partial(self.policy.log_fields, secrets)

    def error_fields(self, job: Job, exc: BaseException, fields: ErrorFields) -> ErrorFields:
        error, stacktrace, _ = fields
        return self.policy.error_fields(self._secrets.get(job, ()), exc, error, stacktrace)

    def left(self, job: Job) -> None:
        self._secrets.pop(job, None)
