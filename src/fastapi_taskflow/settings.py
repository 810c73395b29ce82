"""The settings tree: every manager setting declared once, with its type, range and default.

Each section is what one part takes when it is made (the persister its durability section, the
executors theirs...). :class:`ManagerSettings` holds the sections; ``TaskManager(**keywords)``
builds it with :meth:`ManagerSettings.from_keywords`, and the DI settings
(``di/settings.py``) inherit the sections, so YAML keys, keyword names, types, ranges and
defaults cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PlainValidator,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from .errors import ConfigProblem, InvalidConfigurationError
from .models import QueueConfig

MiB = 1024 * 1024

#: The error type of a rule between two keys, reported on the key checked. Its context names
#: the other key, so a report that knows where each value came from can say so.
SHORTER_THAN = "shorter_than"
SHORTER_THAN_MESSAGE = (
    "must be shorter than {other} ({other_value}{other_source}), or live instances lose "
    "their tasks to others"
)


class Section(BaseModel):
    """A group of settings; unknown keys are errors, not silently ignored."""

    # inf/nan would pass ``> 0`` checks; defer_build keeps the import cheap.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, defer_build=True)


class DurabilitySettings(Section):
    """The journal, history writes, leases, recovery and retention (docs/durability.md)."""

    snapshot_interval: PositiveFloat = 60.0
    # Declared before heartbeat_interval: the heartbeat's rule reads the validated lease.
    lease_ttl: PositiveFloat = 30.0
    heartbeat_interval: PositiveFloat = 10.0
    max_requeues: NonNegativeInt = 3
    requeue_pending: bool = False
    retention_days: PositiveFloat | None = None
    # How often finished records older than retention_days are deleted (seconds).
    prune_interval: PositiveFloat = 3600.0
    # How long a response waits for its request's journal commit before the request's tasks
    # are withdrawn and it becomes a 503 (seconds; see barrier.py).
    barrier_timeout: PositiveFloat = 30.0
    # Writes waiting for the backend (batches being written included) before the oldest
    # finished-record writes are dropped.
    max_buffered: PositiveInt = 100_000
    # Past max_buffered journal changes, refuse new journaled tasks (WriteBufferFullError)
    # instead of keeping every journal change in memory.
    journal_backpressure: bool = False

    @field_validator("heartbeat_interval")
    @classmethod
    def _heartbeat_within_lease(cls, value: float, info: ValidationInfo) -> float:
        lease = info.data.get("lease_ttl")
        if lease is not None and value >= lease:
            context = {"other": "lease_ttl", "other_value": f"{lease:g}", "other_source": ""}
            raise PydanticCustomError(SHORTER_THAN, SHORTER_THAN_MESSAGE, context)
        return value

    @property
    def retention_seconds(self) -> float | None:
        days = self.retention_days
        return days * 86400.0 if days is not None else None


class ExecutionSettings(Section):
    """How many tasks run at once, on which pools, and how long shutdown waits for them."""

    max_concurrent_tasks: PositiveInt | None = None
    max_sync_threads: PositiveInt | None = None
    max_process_workers: PositiveInt | None = None
    process_shutdown_timeout: NonNegativeFloat = 30.0
    default_timeout: PositiveFloat | None = None
    drain_timeout: NonNegativeFloat = 30.0


class HistorySettings(Section):
    """Finished records kept in memory, and what an API retry does with the original."""

    max_history: NonNegativeInt = 10_000
    retry_replaces_original: bool = True


class ResultSettings(Section):
    """Return values kept on records: the largest encoded one, and for how long."""

    max_result_bytes: NonNegativeInt = MiB
    result_ttl: PositiveFloat | None = None


class LogFileSettings(Section):
    """The ``log_file`` shorthand: one file logger of task events."""

    log_file: str | Path | None = None
    log_file_max_bytes: NonNegativeInt = 10 * MiB
    log_file_backup_count: NonNegativeInt = 5
    log_file_mode: Literal["rotate", "watched"] = "rotate"
    log_lifecycle: bool = False


class AcceptedUnusedSettings(Section):
    """fastapi-taskflow 0.12 settings that do nothing now, accepted (and checked) so that its
    apps and config files keep working. The peer registry is gone: instances share their state
    through the backend; and each page of the task list is one indexed backend query, so there
    is no merged list to cache."""

    instance_url: str | None = None
    instance_tasks_prefix: str | None = None
    registry_ttl: PositiveFloat = 90.0
    registry_heartbeat: PositiveFloat = 30.0
    merged_list_ttl: NonNegativeFloat = 5.0


def _queue_config(value: Any) -> QueueConfig:
    if not isinstance(value, QueueConfig):
        raise ValueError("must be a QueueConfig")
    return value


QueueName = Annotated[str, Field(min_length=1)]
Queues = dict[QueueName, Annotated[QueueConfig, PlainValidator(_queue_config)]]


class ManagerSettings(Section):
    """Validated manager settings: one section per part, plus the named queues."""

    durability: DurabilitySettings = Field(default_factory=DurabilitySettings)
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings)
    history: HistorySettings = Field(default_factory=HistorySettings)
    results: ResultSettings = Field(default_factory=ResultSettings)
    file_log: LogFileSettings = Field(default_factory=LogFileSettings)
    queues: Queues = Field(default_factory=dict)

    @classmethod
    def from_keywords(
        cls,
        *,
        queues: dict[str, QueueConfig] | None = None,
        max_size: int | None = None,
        **flat: Any,
    ) -> ManagerSettings:
        """The tree from ``TaskManager``'s flat keywords, each going to the section that
        declares it. Python values are taken as they are (``"5"`` is no number, ``True`` is
        no int); every bad one is named in one ``InvalidConfigurationError`` (a
        ``ValueError``), and an unknown keyword is a ``TypeError``, as in any call."""
        grouped: dict[str, dict[str, Any]] = {name: {} for name in SECTION_OF_KEY.values()}
        for key, value in flat.items():
            section = SECTION_OF_KEY.get(key)
            if section is None:
                raise TypeError(f"TaskManager() got an unexpected keyword argument {key!r}")
            grouped[section][key] = value
        problems: list[ConfigProblem] = []
        queue_configs = _with_default_max_size(queues, max_size, problems)
        unused = grouped.pop(UNUSED)
        tree: dict[str, Any] = {**grouped, "queues": queue_configs}
        settings: ManagerSettings | None = None
        try:
            AcceptedUnusedSettings.model_validate(unused, strict=True)
        except ValidationError as exc:
            problems += keyword_problems(exc)
        try:
            settings = cls.model_validate(tree, strict=True)
        except ValidationError as exc:
            problems += keyword_problems(exc)
        if problems or settings is None:
            raise InvalidConfigurationError(problems)
        return settings


#: The root's sections by field name (``queues`` is no section: it is not flat).
SECTIONS: dict[str, type[Section]] = {
    name: field.annotation
    for name, field in ManagerSettings.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, Section)
}
UNUSED = "accepted_unused"
#: Which section declares each flat key (the accepted-unused ones under ``UNUSED``).
_ALL_SECTIONS: dict[str, type[Section]] = {**SECTIONS, UNUSED: AcceptedUnusedSettings}
SECTION_OF_KEY: dict[str, str] = {
    key: section for section, model in _ALL_SECTIONS.items() for key in model.model_fields
}


class ManagerKeywords(TypedDict, total=False):
    """``TaskManager``'s settings keywords, for type checkers and IDEs. Names and types only:
    the defaults and ranges live in the sections above (a test keeps the names equal)."""

    snapshot_interval: float
    lease_ttl: float
    heartbeat_interval: float
    max_requeues: int
    requeue_pending: bool
    retention_days: float | None
    prune_interval: float
    barrier_timeout: float
    max_buffered: int
    journal_backpressure: bool
    max_concurrent_tasks: int | None
    max_sync_threads: int | None
    max_process_workers: int | None
    process_shutdown_timeout: float
    default_timeout: float | None
    drain_timeout: float
    max_history: int
    retry_replaces_original: bool
    max_result_bytes: int
    result_ttl: float | None
    log_file: str | Path | None
    log_file_max_bytes: int
    log_file_backup_count: int
    log_file_mode: Literal["rotate", "watched"]
    log_lifecycle: bool
    # Accepted and unused (see AcceptedUnusedSettings).
    instance_url: str | None
    instance_tasks_prefix: str | None
    registry_ttl: float
    registry_heartbeat: float
    merged_list_ttl: float


def _with_default_max_size(
    queues: dict[str, QueueConfig] | None, max_size: int | None, problems: list[ConfigProblem]
) -> dict[str, QueueConfig]:
    """0.12's ``max_size``: the default queue's cap, folded into ``queues["default"]``."""
    configs = dict(queues or {})
    if max_size is not None:
        default = configs.get("default", QueueConfig())
        try:
            configs["default"] = QueueConfig(default.concurrency, max_size, default.rate_limit)
        except ValueError as exc:
            problems.append(ConfigProblem("max_size", KEYWORD, str(exc)))
    return configs


KEYWORD = "keyword argument"


def error_reason(item: Any) -> str:
    """A pydantic error's reason as people read it (the message, without pydantic's prefix)."""
    return str(item["msg"]).removeprefix("Value error, ")


def keyword_problems(exc: ValidationError) -> list[ConfigProblem]:
    """Each error of a keyword validation, named by the keyword (sections are invisible)."""
    problems = []
    for item in exc.errors(include_url=False):
        loc = [part for part in item["loc"] if part not in SECTIONS]
        key = ".".join(str(part) for part in loc) or "settings"
        problems.append(
            ConfigProblem(key, KEYWORD, f"{error_reason(item)} (got {item['input']!r})")
        )
    return problems
