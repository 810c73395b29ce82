"""Attempt hooks: optional features as steps of every attempt, not branches in it.

Tracing (tracing.py), redaction and sealed errors (redaction.py) and cross-instance idempotency
keys (dispatch/keys.py) each give the dispatcher an :class:`AttemptHook`; the manager builds a
hook only when its feature is on. With none, the attempt skips every step at the cost of one
test per step. The dispatcher calls the steps a hook overrides, hook after hook, in this order:

    admit           before the job's first step here; may end it CANCELLED unrun (may await)
    begin           an attempt starts, before its arguments are decrypted
    before_call     its clear arguments are known; the function is called next
    worker_context  (process tasks only) what the worker needs to continue the attempt
    after_call      the call returned or raised; the outcome is not recorded yet
    error_fields    (the attempt failed) what is stored of the error
    end             the outcome is on the record (SUCCESS, a final status, or PENDING to retry)
    left            the job left the dispatcher: ``done``, or ``kept`` at shutdown (when an
                    attempt ends it, as its outcome is recorded: before that attempt's end)

A hook keeps what it needs between steps itself (keyed by the job; ``left`` is the last step
of every job). Isolation: a hook that raises in ``admit`` or ``begin`` ends the attempt as an
internal error (FAILED), in ``before_call`` as a failure of the call; from ``after_call`` on, its
error is logged and the attempt goes on (a failing ``error_fields`` stores only the error's
type, never the unredacted text). Either way no task is left RUNNING.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .job import Job

logger = logging.getLogger("fastapi_taskflow")

#: (error shown, stack trace shown, sealed original) of a failed attempt, as stored.
ErrorFields = tuple[str, str | None, bytes | None]
Carrier = dict[str, str]


class AttemptHook:
    """One feature's part in every attempt; each step does nothing unless overridden."""

    def admit(self, job: Job) -> Awaitable[str | None] | None:
        """None to go on at once; else an awaitable of None (go on) or why the job ends
        CANCELLED without running. Called before every attempt: the hook knows which jobs
        it has admitted already."""
        return None

    def begin(self, job: Job) -> None:
        """The attempt ``job.attempt`` starts (in its own task, before any argument is
        decrypted)."""

    def before_call(self, job: Job, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """The function is called next with these clear arguments."""

    def worker_context(self, job: Job) -> Carrier | None:
        """For a process task: what the worker attaches while the function runs."""
        return None

    def after_call(self, job: Job, error: BaseException | None) -> None:
        """The call returned (``error`` None) or raised; nothing is recorded yet."""

    def error_fields(self, job: Job, exc: BaseException, fields: ErrorFields) -> ErrorFields:
        """What is stored of a failed attempt's error (``fields`` as the hooks before made
        them)."""
        return fields

    def end(self, job: Job) -> None:
        """The attempt is over and its outcome is on ``job.record``."""

    def left(self, job: Job) -> None:
        """The job left the dispatcher (``job.state``: ``done`` or ``kept``)."""


class HookSteps:
    """The hooks of one dispatcher, sorted by step once: each step lists only the hooks that
    override it, so the attempt calls nothing that does nothing."""

    def __init__(self, hooks: Sequence[AttemptHook]) -> None:
        self.hooks = tuple(hooks)
        self.admit = self._bound("admit")
        self.begin = self._bound("begin")
        self.before_call = self._bound("before_call")
        self.worker_context = self._bound("worker_context")
        self._after_call = self._bound("after_call")
        self._error_fields = self._bound("error_fields")
        self._end = self._bound("end")
        self._left = self._bound("left")

    def _bound(self, step: str) -> tuple[Callable[..., Any], ...]:
        base = getattr(AttemptHook, step)
        return tuple(
            getattr(hook, step) for hook in self.hooks if getattr(type(hook), step) is not base
        )

    def admission(self, job: Job) -> Awaitable[str | None] | None:
        """None when every hook lets the job go on at once; else what to await for the answer
        (None, or the first refusal). Hooks are asked in turn, each after the one before said
        yes, so no hook starts work for a job another refused."""
        steps = self.admit
        for index, admit in enumerate(steps):
            waiting = admit(job)
            if waiting is not None:
                rest = steps[index + 1 :]
                return self._admit_rest(job, waiting, rest) if rest else waiting
        return None

    async def _admit_rest(
        self,
        job: Job,
        waiting: Awaitable[str | None],
        rest: tuple[Callable[..., Any], ...],
    ) -> str | None:
        refusal = await waiting
        for admit in rest:
            if refusal is not None:
                return refusal
            next_waiting = admit(job)
            if next_waiting is not None:
                refusal = await next_waiting
        return refusal

    def carrier(self, job: Job) -> Carrier | None:
        for step in self.worker_context:
            carrier: Carrier | None = step(job)
            if carrier is not None:
                return carrier
        return None

    # Steps after the call: a hook's error is logged, never lets the attempt end unrecorded.

    def after_call(self, job: Job, error: BaseException | None) -> None:
        for step in self._after_call:
            _isolated(step, job, error)

    def error_fields(self, job: Job, exc: BaseException, fields: ErrorFields) -> ErrorFields:
        for step in self._error_fields:
            try:
                fields = step(job, exc, fields)
            except Exception:
                _log_failure(step, job)
                return type(exc).__name__, None, None  # never the text a hook failed to scrub
        return fields

    def end(self, job: Job) -> None:
        for step in self._end:
            _isolated(step, job)

    def left(self, job: Job) -> None:
        for step in self._left:
            _isolated(step, job)


def _isolated(step: Callable[..., Any], job: Job, *args: Any) -> None:
    try:
        step(job, *args)
    except Exception:
        _log_failure(step, job)


def _log_failure(step: Callable[..., Any], job: Job) -> None:
    logger.error(
        "task %s: attempt hook %s failed",
        job.task_id,
        getattr(step, "__qualname__", step),
        exc_info=True,
    )
