"""TaskflowSettings: typed configuration from keyword arguments, environment, ``.env`` and YAML.

Sources, strongest first: keyword arguments, ``TASKFLOW_*`` environment variables (``__`` nests:
``TASKFLOW_BACKEND__KIND=redis``), the ``.env`` file, the YAML file (``config/taskflow.yaml``
unless ``TASKFLOW_CONFIG`` or ``config_file=`` names another), then the defaults below.

Every problem is reported at once in one :class:`~fastapi_taskflow.errors.ConfigurationError`
naming the key path, where the value came from and why it is wrong. Secrets (encryption keys,
passwords, the password inside a Redis URL) never appear in messages or reprs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    GetCoreSchemaHandler,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import core_schema
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ..backends.factory import BackendKind
from ..errors import ConfigProblem, ConfigurationError
from ..settings import (
    SECTION_OF_KEY,
    AcceptedUnusedSettings,
    DurabilitySettings,
    ExecutionSettings,
    HistorySettings,
    LogFileSettings,
    ManagerSettings,
    ResultSettings,
    Section,
)
from ..urls import mask_url
from ._sources import (
    ENV_PREFIX,
    SECRET_PATHS,
    URL_PATHS,
    SourceReport,
    TaskflowDotEnvSource,
    TaskflowEnvSource,
    YamlFileSource,
)

DEFAULT_CONFIG_FILE = Path("config/taskflow.yaml")
CONFIG_ENV_VAR = "TASKFLOW_CONFIG"

__all__ = ["SECRET_PATHS", "URL_PATHS", "TaskflowSettings", "load_settings"]

LogLevel = Literal["debug", "info", "warning", "error", "critical"]


# ---- backend --------------------------------------------------------------------------------


class MaskedURL(str):
    """A URL whose password is masked wherever it is shown; ``schemes`` are the ones allowed."""

    schemes: tuple[str, ...] = ()

    def masked(self) -> str:
        return mask_url(self)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            cls.parse, core_schema.str_schema(), serialization=core_schema.to_string_ser_schema()
        )

    @classmethod
    def parse(cls, value: str) -> MaskedURL:
        scheme = urlsplit(value).scheme
        if scheme not in cls.schemes:
            *others, last = [f"{s}://" for s in cls.schemes]
            raise ValueError(f"scheme must be {', '.join(others)} or {last}, got {scheme!r}")
        return cls(value)

    def __repr__(self) -> str:
        return repr(self.masked())


class RedisURL(MaskedURL):
    """A Redis URL (``redis://``, ``rediss://``, ``unix://``)."""

    schemes = ("redis", "rediss", "unix")

    @classmethod
    def parse(cls, value: str) -> RedisURL:
        from redis.connection import parse_url

        url = super().parse(value)
        parts = urlsplit(value)
        try:
            parse_url(value)  # type: ignore[no-untyped-call]  # the parser the backend uses when it connects at startup
        except ValueError as exc:
            raise ValueError(f"not a valid Redis URL: {exc}") from None
        db = parts.path.strip("/")
        if parts.scheme != "unix" and db and not db.isdigit():
            # redis-py would silently use database 0 here.
            raise ValueError(f"the database after the host must be a number, got {db!r}")
        return cls(url)


class PostgresURL(MaskedURL):
    """A PostgreSQL URL (``postgresql://user:password@host:5432/db``)."""

    schemes = ("postgresql", "postgres")


class MySQLURL(MaskedURL):
    """A MySQL or MariaDB URL (``mysql://user:password@host:3306/db``)."""

    schemes = ("mysql", "mariadb")


class SqliteSettings(Section):
    """``backend.sqlite``: where the SQLite file lives (created with its folder if missing)."""

    path: Path = Path("var/taskflow.db")
    # SQLite's own check at every open: quick_check (default), integrity_check, or none.
    integrity_check: Literal["off", "quick", "full"] = "quick"


class RedisSettings(Section):
    """``backend.redis``: the server and the key prefix shared by instances of one app."""

    url: RedisURL = RedisURL("redis://localhost:6379/0")
    prefix: str = Field(default="taskflow", min_length=1)
    socket_timeout: PositiveFloat = 5.0


class SqlServerSettings(Section):
    """What ``backend.postgres`` and ``backend.mysql`` share: tables and the connection pool."""

    table_prefix: str = "tf_"
    min_size: PositiveInt = 1
    max_size: PositiveInt = 10
    connect_timeout: PositiveFloat = 10.0

    @field_validator("table_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        from ..backends.sql import check_table_prefix

        try:
            return check_table_prefix(value)
        except ConfigurationError as exc:
            raise ValueError(str(exc).partition(": ")[2]) from None

    @model_validator(mode="after")
    def _check_pool(self) -> SqlServerSettings:
        if self.min_size > self.max_size:
            raise ValueError(f"min_size ({self.min_size}) is above max_size ({self.max_size})")
        return self

    def options(self) -> dict[str, Any]:
        """The backend's keyword arguments besides ``url``."""
        return {
            "table_prefix": self.table_prefix,
            "min_size": self.min_size,
            "max_size": self.max_size,
            "connect_timeout": self.connect_timeout,
        }


class PostgresSettings(SqlServerSettings):
    """``backend.postgres``: the PostgreSQL server shared by the instances of one app."""

    url: PostgresURL = PostgresURL("postgresql://localhost:5432/postgres")


class MySQLSettings(SqlServerSettings):
    """``backend.mysql``: the MySQL 8 / MariaDB 10.6+ server shared by the instances."""

    url: MySQLURL = MySQLURL("mysql://root@localhost:3306/taskflow")


class BackendSettings(Section):
    """``backend``: where records and the journal persist. Only ``kind`` is constructed."""

    kind: BackendKind = "memory"
    sqlite: SqliteSettings = SqliteSettings()
    redis: RedisSettings = RedisSettings()
    postgres: PostgresSettings = PostgresSettings()
    mysql: MySQLSettings = MySQLSettings()

    def describe(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite ({self.sqlite.path})"
        if self.kind == "redis":
            return f"redis ({self.redis.url.masked()}, prefix {self.redis.prefix!r})"
        if self.kind in ("postgres", "mysql"):
            server: PostgresSettings | MySQLSettings = getattr(self, self.kind)
            return f"{self.kind} ({server.url.masked()}, tables {server.table_prefix}*)"
        return "memory"


# ---- observers ------------------------------------------------------------------------------


class StdoutLoggerSettings(Section):
    """``loggers[] type: stdout``: one JSON line per event on standard output."""

    type: Literal["stdout"]
    min_level: LogLevel = "info"
    log_lifecycle: bool = False
    format: Literal["json", "text"] = "json"


class FileLoggerSettings(Section):
    """``loggers[] type: file``: JSON lines in a file, rotated or watched."""

    type: Literal["file"]
    path: Path
    min_level: LogLevel = "info"
    log_lifecycle: bool = False
    max_bytes: PositiveInt = 10 * 1024 * 1024
    backup_count: PositiveInt = 5
    mode: Literal["rotate", "watched"] = "rotate"
    format: Literal["json", "text"] = "json"


class MemoryLoggerSettings(Section):
    """``loggers[] type: memory``: events kept in a list (tests, debugging)."""

    type: Literal["memory"]
    min_level: LogLevel = "debug"
    log_lifecycle: bool = True


LoggerSettings = Annotated[
    StdoutLoggerSettings | FileLoggerSettings | MemoryLoggerSettings,
    Field(discriminator="type"),
]


# ---- encryption, queues, admin --------------------------------------------------------------


class EncryptionSettings(Section):
    """``encryption``: Fernet keys. The first encrypts; all decrypt (key rotation)."""

    keys: list[SecretStr] = []

    @field_validator("keys")
    @classmethod
    def _check_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        from cryptography.fernet import Fernet

        for position, key in enumerate(keys):
            try:
                Fernet(key.get_secret_value())
            except (ValueError, TypeError):
                # Never echo the key: say which one and what a key looks like.
                raise ValueError(
                    f"key {position} is not a Fernet key (32 url-safe base64-encoded bytes, "
                    "e.g. from `python -c 'from cryptography.fernet import Fernet; "
                    "print(Fernet.generate_key().decode())'`)"
                ) from None
        return keys


class QueueSettings(Section):
    """``queues.<name>``: how many of the queue's tasks run at once, how many may wait, and
    how often they may start (``rate_limit: 10/s``, also ``/m`` and ``/h``)."""

    concurrency: PositiveInt | None = None
    max_size: PositiveInt | None = None
    rate_limit: str | None = None

    @field_validator("rate_limit")
    @classmethod
    def _check_rate_limit(cls, value: str | None) -> str | None:
        from ..ratelimit import parse_rate_limit

        parse_rate_limit(value)  # raises ValueError with what a limit looks like
        return value


class AdminAuthSettings(Section):
    """``admin.auth``: the one account allowed into the dashboard and the task API."""

    username: str = Field(min_length=1)
    password: SecretStr


class AdminSettings(Section):
    """``admin``: whether ``install()`` mounts the dashboard and task API, and how."""

    enabled: bool = False
    path: str = "/tasks"
    title: Annotated[str, Field(pattern=r"\S")] | None = None
    display_func_args: bool = False
    display_results: bool = True
    read_only: bool = False
    # Users who may read but never change anything, whatever ``read_only`` says.
    read_only_users: list[Annotated[str, Field(min_length=1)]] = []
    # The admin routes stay out of the app's public OpenAPI schema unless asked for.
    include_in_schema: bool = False
    auth: AdminAuthSettings | None = None
    secret_key: SecretStr | None = None
    # TaskAdmin's own default: a session left open overnight ends.
    token_expiry: PositiveInt = 8 * 3600
    poll_interval: PositiveFloat = 30.0

    @field_validator("secret_key")
    @classmethod
    def _check_secret_key(cls, value: SecretStr | None) -> SecretStr | None:
        # A short signing key can be recovered offline from one token.
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("must be at least 32 bytes; use secrets.token_urlsafe(32)")
        return value

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not value.startswith("/") or (value.endswith("/") and value != "/"):
            raise ValueError("must start with '/' and not end with '/', e.g. /tasks")
        return value


# ---- the settings ---------------------------------------------------------------------------


# Pydantic lists the fields of the last base first: the durability keys lead.
class TaskflowSettings(
    BaseSettings,
    AcceptedUnusedSettings,
    LogFileSettings,
    ResultSettings,
    HistorySettings,
    ExecutionSettings,
    DurabilitySettings,
):
    """Everything the container needs to build a ``TaskManager``; see docs/configuration.md."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_file=".env",
        extra="forbid",
        frozen=True,
        validate_default=True,
        allow_inf_nan=False,
    )

    # The manager's flat keys (snapshot_interval, max_history...) come from the sections this
    # class inherits (settings.py), with their types, ranges and defaults. The keys below are
    # the YAML-shaped ones, built into parts by the container.
    backend: BackendSettings = BackendSettings()
    loggers: list[LoggerSettings] = []
    # Backpressure for the default queue (0.12's name), folded into queues.default.
    max_size: PositiveInt | None = None
    queues: dict[Annotated[str, Field(min_length=1)], QueueSettings] = {}
    encryption: EncryptionSettings = EncryptionSettings()
    admin: AdminSettings = AdminSettings()
    # Operations (docs/operations.md): redaction, sealed errors, OpenTelemetry spans.
    redact: list[Annotated[str, Field(min_length=1)]] = []
    encrypt_errors: bool = False
    tracing: bool = False

    def __init__(
        self,
        config_file: str | Path | None = None,
        *,
        _mapping_source: str | None = None,
        **values: Any,
    ) -> None:
        """Load and validate; raises ``ConfigurationError`` listing every problem.

        ``_mapping_source`` (internal, see :meth:`from_mapping`) validates ``values`` alone,
        reading neither files nor environment, and names that label as their source.
        """
        if _mapping_source is not None:
            report = SourceReport.for_mapping(_mapping_source, type(self), values)
        else:
            report = SourceReport(type(self), build_sources(type(self), config_file, values))
        try:
            super().__init__(_build_sources=(report.ordered_sources, values))
        except ValidationError as exc:
            raise report.error(exc) from None
        report.raise_problems(self._relation_problems(report.source_of))

    def _relation_problems(
        self, source_of: Callable[[tuple[str, ...]], str]
    ) -> list[ConfigProblem]:
        """Rules between keys that are each valid alone; checked here so that ``config check``
        refuses exactly what startup would, naming each key's source."""
        problems: list[ConfigProblem] = []

        def problem(key: str, reason: str) -> None:
            problems.append(ConfigProblem(key, source_of((key,)), reason))

        if self.encrypt_errors and not self.encryption.keys:
            problem("encrypt_errors", "needs encryption.keys (the first key seals errors)")
        if self.tracing:
            from ..tracing import build_tracing

            try:
                build_tracing(True)  # what the manager does with it at startup
            except ConfigurationError as exc:
                problem("tracing", str(exc))
        return problems

    def manager_settings(self) -> ManagerSettings:
        """The manager's settings tree: the inherited sections' keys as they are, queues as
        ``QueueConfig`` and ``max_size`` folded into the default queue."""
        from ..models import QueueConfig

        queues = {
            name: QueueConfig(
                concurrency=q.concurrency, max_size=q.max_size, rate_limit=q.rate_limit
            )
            for name, q in self.queues.items()
        }
        flat = {key: getattr(self, key) for key in SECTION_OF_KEY}
        return ManagerSettings.from_keywords(queues=queues, max_size=self.max_size, **flat)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only used when pydantic-settings builds sources itself; ``__init__`` passes its own."""
        return build_sources(settings_cls, None, {})

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any] | None, *, source: str = "container.config"
    ) -> TaskflowSettings:
        """Validate a merged mapping (``container.config``); reads neither files nor env."""
        return cls(_mapping_source=source, **dict(data or {}))

    def masked_dump(self) -> dict[str, Any]:
        """The effective settings as plain data with every secret masked (for the CLI, logs)."""
        dumped: dict[str, Any] = self.model_dump(mode="json")
        # The backend first (what a reader looks for), the 0.12 keys that do nothing last.
        unused = AcceptedUnusedSettings.model_fields
        data = {"backend": dumped.pop("backend")}
        data.update((key, value) for key, value in dumped.items() if key not in unused)
        data.update((key, dumped[key]) for key in unused)
        data["encryption"]["keys"] = ["**********" for _ in self.encryption.keys]
        for kind in ("redis", "postgres", "mysql"):
            data["backend"][kind]["url"] = getattr(self.backend, kind).url.masked()
        if self.admin.auth is not None:
            data["admin"]["auth"]["password"] = "**********"
        if self.admin.secret_key is not None:
            data["admin"]["secret_key"] = "**********"
        return data


def build_sources(
    settings_cls: type[BaseSettings], config_file: str | Path | None, values: dict[str, Any]
) -> tuple[PydanticBaseSettingsSource, ...]:
    """The sources of :class:`TaskflowSettings`, strongest first."""
    explicit = config_file if config_file is not None else os.environ.get(CONFIG_ENV_VAR)
    path = Path(explicit) if explicit else DEFAULT_CONFIG_FILE
    origin = (
        "the config_file argument"
        if config_file is not None
        else f"environment variable {CONFIG_ENV_VAR}"
        if explicit
        else "default"
    )
    yaml_source = YamlFileSource(settings_cls, path, required=explicit is not None, origin=origin)
    return (
        InitSettingsSource(settings_cls, init_kwargs=values),
        TaskflowEnvSource(settings_cls, allowed=yaml_source.mentioned_env_names),
        TaskflowDotEnvSource(settings_cls, allowed=yaml_source.mentioned_env_names),
        yaml_source,
    )


def load_settings(config_file: str | Path | None = None, **values: Any) -> TaskflowSettings:
    """``TaskflowSettings(config_file, **values)``: the one call an app makes at startup."""
    return TaskflowSettings(config_file, **values)


def describe_source(config_file: str | Path | None = None) -> str:
    """Which YAML file a load with ``config_file`` reads (for the CLI and startup logs)."""
    named = config_file if config_file is not None else os.environ.get(CONFIG_ENV_VAR)
    path = Path(named) if named else DEFAULT_CONFIG_FILE
    if path.is_file():
        return f"YAML: {path}; overridden by TASKFLOW_* environment variables and .env"
    return f"YAML: none ({path} not found); defaults and TASKFLOW_* environment variables"
