"""The settings sources (YAML with ``${VAR}``, environment) and the error report with provenance.

Each problem is reported with the key path as users write it (``loggers[0].path``), the source
that supplied the value (a file path, an environment variable name) and the reason. Values of
secret keys are never echoed; URLs are shown with their password masked.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
)
from pydantic_settings.sources import ENV_FILE_SENTINEL

from ..errors import ConfigProblem, InvalidConfigurationError
from ..settings import SHORTER_THAN, SHORTER_THAN_MESSAGE, error_reason
from ..urls import mask_url

logger = logging.getLogger("fastapi_taskflow.di")

ENV_PREFIX = "TASKFLOW_"
#: ``TASKFLOW_*`` names that are no setting but are read elsewhere in the project: the YAML
#: path, the CLI's ``taskflow run --app`` and ``--redis``, the example app's data folder and the
#: browser tests' screenshot switch. Any other unknown ``TASKFLOW_*`` name is a mistake.
RESERVED_ENV_NAMES = (
    "TASKFLOW_CONFIG",
    "TASKFLOW_APP",
    "TASKFLOW_REDIS_URL",
    "TASKFLOW_VAR_DIR",
    "TASKFLOW_SCREENSHOTS",
)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}")
#: Key paths whose values are secrets: never shown, never echoed in an error.
SECRET_PATHS = ("encryption.keys", "admin.auth.password", "admin.secret_key")
#: Key paths whose values are URLs that may carry a password: shown masked.
URL_PATHS = ("backend.redis.url", "backend.postgres.url", "backend.mysql.url")

Path_ = tuple[str | int, ...]


def format_path(parts: Sequence[str | int]) -> str:
    """``('loggers', 0, 'path')`` -> ``loggers[0].path``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def is_secret(path: str) -> bool:
    return any(path == p or path.startswith((p + ".", p + "[")) for p in SECRET_PATHS)


# ---- YAML -----------------------------------------------------------------------------------


class YamlFileSource(PydanticBaseSettingsSource):
    """Reads one YAML mapping; expands ``${VAR}`` and ``${VAR:default}`` in string values.

    A missing file is an error only when it was named (argument or ``TASKFLOW_CONFIG``).
    """

    def __init__(
        self, settings_cls: type[BaseSettings], path: Path, *, required: bool, origin: str
    ) -> None:
        super().__init__(settings_cls)
        self.path = path
        self.required = required
        self.origin = origin
        self.problems: list[ConfigProblem] = []
        self.data: dict[str, Any] = {}
        self.loaded = False

    @property
    def label(self) -> str:
        return str(self.path)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        self.problems = []
        self.data = self._read()
        return self.data

    def mentioned_env_names(self) -> set[str]:
        """Every ``${NAME}`` the file mentions, comments included (:func:`unknown_env_names`)."""
        try:
            text = self.path.read_bytes().decode("utf-8", errors="replace")
        except OSError:
            return set()
        return {match.group(1).upper() for match in _VAR.finditer(text)}

    def _read(self) -> dict[str, Any]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            if self.required:
                raise InvalidConfigurationError(
                    [ConfigProblem("", f"{self.origin}", f"config file {self.path} does not exist")]
                ) from None
            return {}
        except OSError as exc:
            raise InvalidConfigurationError(
                [ConfigProblem("", str(self.path), f"cannot read the file: {exc.strerror}")]
            ) from None
        self.loaded = True
        return self._parse(self._decode(data))

    def _decode(self, data: bytes) -> str:
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            utf16 = data.startswith((b"\xff\xfe", b"\xfe\xff"))
            found = "UTF-16 (it starts with a byte-order mark)" if utf16 else "not UTF-8"
            reason = (
                f"the file is {found}: byte {exc.start} cannot be decoded as UTF-8; "
                "save it as UTF-8"
            )
            raise InvalidConfigurationError([ConfigProblem("", str(self.path), reason)]) from None

    def _parse(self, text: str) -> dict[str, Any]:
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            reason = f"malformed YAML{where}: {getattr(exc, 'problem', None) or exc}"
            raise InvalidConfigurationError([ConfigProblem("", str(self.path), reason)]) from None
        if raw is None:
            logger.warning(
                "%s is empty (or only comments): every setting takes its default "
                "(memory backend, nothing persists, dashboard off)",
                self.path,
            )
            return {}
        if not isinstance(raw, dict):
            reason = f"the top level must be a mapping of keys, got {type(raw).__name__}"
            raise InvalidConfigurationError([ConfigProblem("", str(self.path), reason)])
        expanded = self._expand(raw, ())
        assert isinstance(expanded, dict)
        return expanded

    def _expand(self, value: Any, path: Path_) -> Any:
        if isinstance(value, dict):
            return {k: self._expand(v, (*path, str(k))) for k, v in value.items()}
        if isinstance(value, list):
            return [self._expand(v, (*path, i)) for i, v in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            return self._substitute(value, path)
        return value

    def _substitute(self, value: str, path: Path_) -> Any:
        whole = _VAR.fullmatch(value)

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = os.environ.get(name, default)
            if found is None:
                reason = f"environment variable {name} is not set (write ${{{name}:default}})"
                self.problems.append(ConfigProblem(format_path(path), str(self.path), reason))
                return ""
            return found

        result = _VAR.sub(replace, value)
        # A whole-value reference that resolves to nothing means "not set" (null).
        return None if whole and result == "" else result


# ---- environment ----------------------------------------------------------------------------


class TaskflowEnvSource(EnvSettingsSource):
    """``TASKFLOW_*`` variables; a value that does not parse, or a name that is no setting,
    is recorded, not raised."""

    def __init__(
        self, settings_cls: type[BaseSettings], allowed: Callable[[], set[str]] = set
    ) -> None:
        super().__init__(settings_cls)
        self.problems: list[ConfigProblem] = []
        self.allowed = allowed

    def __call__(self) -> dict[str, Any]:
        self.problems = []
        values = super().__call__()
        for name in unknown_env_names(self.settings_cls, self.env_vars, self.allowed()):
            self.problems.append(
                ConfigProblem(
                    name.removeprefix(ENV_PREFIX).lower(),
                    f"environment variable {name}",
                    f"unknown key{_env_suggestion(self.settings_cls, name)}",
                )
            )
        return values

    def prepare_field_value(
        self, field_name: str, field: FieldInfo, value: Any, value_is_complex: bool
    ) -> Any:
        try:
            return super().prepare_field_value(field_name, field, value, value_is_complex)
        except ValueError as exc:
            names = ", ".join(env_names_for(self.env_vars, field_name)) or ENV_PREFIX + field_name
            reason = f"could not be parsed as JSON: {exc}"
            self.problems.append(ConfigProblem(field_name, f"environment variable {names}", reason))
            return None


class TaskflowDotEnvSource(DotEnvSettingsSource):
    """``.env``: only its ``TASKFLOW_*`` lines; the rest belongs to the app, not to us."""

    def __init__(
        self, settings_cls: type[BaseSettings], allowed: Callable[[], set[str]] = set
    ) -> None:
        self.allowed = allowed  # read by _load_env_vars, which the base __init__ calls
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        prefix = ENV_PREFIX.lower()
        # A name the project reads itself (TASKFLOW_CONFIG...) is no setting, and no mistake.
        skip = {n.lower() for n in (*RESERVED_ENV_NAMES, *self.allowed())}
        try:
            loaded = super()._load_env_vars()
        except UnicodeDecodeError as exc:
            shown = ".env" if self.env_file in (None, ENV_FILE_SENTINEL) else str(self.env_file)
            reason = f"the file is not UTF-8: byte {exc.start} cannot be decoded; save it as UTF-8"
            raise InvalidConfigurationError([ConfigProblem("", shown, reason)]) from None
        return {
            k: v
            for k, v in loaded.items()
            if k.lower().startswith(prefix) and k.lower() not in skip
        }

    def __call__(self) -> dict[str, Any]:
        # Unknown TASKFLOW_* lines come back as extras still carrying the prefix; strip it so
        # the error names the key (and suggests the close match) like any other source.
        prefix = ENV_PREFIX.lower()
        return {k.removeprefix(prefix): v for k, v in super().__call__().items()}


def unknown_env_names(
    settings_cls: type[BaseModel], env_vars: Mapping[str, Any], allowed: set[str]
) -> list[str]:
    """``TASKFLOW_*`` names in ``env_vars`` that are neither a setting nor allowed.

    Allowed: :data:`RESERVED_ENV_NAMES` and ``allowed`` (the YAML file's ``${NAME}``s). A name
    under a known top-level key (``TASKFLOW_BACKEND__KINDD``) is left to the model, which
    reports the unknown nested key itself.
    """
    prefix = ENV_PREFIX.lower()
    skip = {n.lower() for n in (*RESERVED_ENV_NAMES, *allowed)}
    unknown = []
    for name in env_vars:
        lowered = str(name).lower()
        if not lowered.startswith(prefix) or lowered in skip:
            continue
        top = lowered.removeprefix(prefix).split("__", 1)[0]
        if top not in settings_cls.model_fields:
            unknown.append(str(name).upper())
    return sorted(unknown)


def _env_suggestion(settings_cls: type[BaseModel], name: str) -> str:
    close = difflib.get_close_matches(name, setting_env_names(settings_cls), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else " (see docs/configuration.md)"


def setting_env_names(model: type[BaseModel], prefix: str = ENV_PREFIX) -> list[str]:
    """Every variable name that sets a key of ``model``: ``TASKFLOW_BACKEND__KIND``..."""
    names = []
    for field_name, field in model.model_fields.items():
        name = prefix + field_name.upper()
        names.append(name)
        annotation = _unwrap(field.annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names += setting_env_names(annotation, name + "__")
    return names


def env_names_for(env_vars: Any, field_name: str) -> list[str]:
    """The environment variable names that feed ``field_name`` (directly or nested)."""
    base = (ENV_PREFIX + field_name).lower()
    names = (n for n in env_vars if n.lower() == base or n.lower().startswith(base + "__"))
    return sorted(n.upper() for n in names)


# ---- the report -----------------------------------------------------------------------------


class SourceReport:
    """The sources of one load, and how to turn their failures into one clear error."""

    def __init__(
        self,
        settings_cls: type[BaseModel],
        sources: tuple[PydanticBaseSettingsSource, ...],
        mapping_label: str | None = None,
    ) -> None:
        # The settings class comes in from its own module, which imports this one.
        self.settings_cls = settings_cls
        self.ordered_sources = sources
        self._mapping_label = mapping_label

    @classmethod
    def for_mapping(
        cls, label: str, settings_cls: type[BaseSettings], data: dict[str, Any]
    ) -> SourceReport:
        """A report over one already-merged mapping, every value attributed to ``label``."""
        return cls(settings_cls, (InitSettingsSource(settings_cls, init_kwargs=data),), label)

    def recorded_problems(self) -> list[ConfigProblem]:
        return [p for s in self.ordered_sources for p in getattr(s, "problems", [])]

    def raise_problems(self, more: Sequence[ConfigProblem] = ()) -> None:
        problems = [*self.recorded_problems(), *more]
        if problems:
            raise InvalidConfigurationError(problems)

    def error(self, exc: ValidationError) -> InvalidConfigurationError:
        settings_cls = self.settings_cls
        recorded = self.recorded_problems()
        problems = list(recorded)
        for item in exc.errors(include_url=False):
            raw_loc = tuple(item["loc"])
            parts, parent = walk_schema(settings_cls, raw_loc)
            path = format_path(parts)
            source = self.source_of(parts)
            if any(_covers(p, path, source) for p in recorded):
                continue
            reason = describe_error(item, path, parent, self.source_of)
            problems.append(ConfigProblem(path, source, reason))
        return InvalidConfigurationError(problems)

    def source_of(self, parts: Path_) -> str:
        """The strongest source that supplied the deepest part of ``parts``."""
        if self._mapping_label is not None:
            return self._mapping_label
        best, best_depth = "default", 0
        for source in self.ordered_sources:
            depth = match_depth(_source_data(source), parts)
            if depth > best_depth:
                best, best_depth = _label(source, parts), depth
        return best


def _covers(problem: ConfigProblem, path: str, source: str) -> bool:
    """A recorded problem already explains errors below its key from the same source."""
    under = path == problem.path or path.startswith((problem.path + ".", problem.path + "["))
    return under and problem.source == source


def _source_data(source: PydanticBaseSettingsSource) -> dict[str, Any]:
    if isinstance(source, YamlFileSource):
        return source.data
    if isinstance(source, InitSettingsSource):
        return dict(source.init_kwargs)
    try:
        return source()
    except ValueError:  # a dotenv value that does not parse: its field is reported elsewhere
        return {}


def _label(source: PydanticBaseSettingsSource, parts: Path_) -> str:
    if isinstance(source, YamlFileSource):
        return source.label
    if isinstance(source, InitSettingsSource):
        return "keyword argument"
    if isinstance(source, EnvSettingsSource):
        name = _env_name(source.env_vars, parts)
        if isinstance(source, DotEnvSettingsSource):
            env_file = source.env_file
            shown = ".env" if env_file in (None, ENV_FILE_SENTINEL) else str(env_file)
            return f"{shown} ({name})"
        return f"environment variable {name}"
    return type(source).__name__


def _env_name(env_vars: Any, parts: Path_) -> str:
    keys = [p for p in parts if isinstance(p, str)]
    lowered: dict[str, str] = {str(n).lower(): str(n) for n in env_vars}
    for k in range(len(keys), 0, -1):
        candidate = (ENV_PREFIX + "__".join(keys[:k])).lower()
        if candidate in lowered:
            return lowered[candidate].upper()
    return (ENV_PREFIX + "__".join(keys)).upper()


def _holds(container: Any, part: str | int) -> bool:
    if isinstance(container, dict):
        return part in container
    return isinstance(container, list) and isinstance(part, int) and 0 <= part < len(container)


def match_depth(data: Any, parts: Path_) -> int:
    """How many leading parts of ``parts`` ``data`` holds (all of them if it holds a leaf)."""
    current = data
    for depth, part in enumerate(parts):
        if _holds(current, part):
            current = current[part]
        elif isinstance(current, dict | list):
            return depth
        else:
            return len(parts)  # a leaf (e.g. a JSON string) stands for everything below it
    return len(parts)


# ---- describing pydantic errors -------------------------------------------------------------


def describe_error(
    item: Any,
    path: str,
    parent: type[BaseModel] | None,
    source_of: Callable[[Path_], str],
) -> str:
    kind = item["type"]
    if kind == "extra_forbidden":
        key = str(item["loc"][-1])
        known = list(parent.model_fields) if parent is not None else []
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if close:
            return f"unknown key {key!r} (did you mean {close[0]!r}?)"
        return f"unknown key {key!r}; known keys: {', '.join(known)}"
    if kind == SHORTER_THAN:  # a rule between two keys: say where the other value came from
        context = item["ctx"]
        other_source = f", from {source_of((context['other'],))}"
        item = {
            **item,
            "msg": SHORTER_THAN_MESSAGE.format(**{**context, "other_source": other_source}),
        }
    reason = error_reason(item)
    if kind == "missing":
        return "this key is required"
    shown = _shown_input(item.get("input"), path)
    return f"{reason} (got {shown})" if shown is not None else reason


def _shown_input(value: Any, path: str) -> str | None:
    if is_secret(path) or isinstance(value, dict | list):
        return None
    if path in URL_PATHS and isinstance(value, str):
        return repr(mask_url(value))
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def walk_schema(
    root: type[BaseModel], loc: tuple[Any, ...]
) -> tuple[Path_, type[BaseModel] | None]:
    """The user-facing parts of a pydantic ``loc`` (union tags removed) and the last model seen."""
    parts: list[str | int] = []
    current: Any = root
    parent: type[BaseModel] | None = None
    for item in loc:
        current = _unwrap(current)
        members = _union_members(current)
        if len(members) > 1:  # a discriminated union: this loc item is the tag
            current = _member_for_tag(members, item)
            continue
        if len(members) == 1:
            current = members[0]
        if isinstance(current, type) and issubclass(current, BaseModel):
            parent = current
            field = current.model_fields.get(str(item))
            current = field.annotation if field is not None else None
        elif get_origin(current) is list:
            current = get_args(current)[0]
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        else:
            current = None
        parts.append(item if isinstance(item, int) else str(item))
    return tuple(parts), parent


def _unwrap(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _union_members(annotation: Any) -> list[Any]:
    if get_origin(annotation) in (Union, types.UnionType):
        return [_unwrap(a) for a in get_args(annotation) if a is not type(None)]
    return []


def _member_for_tag(members: list[Any], tag: Any) -> Any:
    for member in members:
        if isinstance(member, type) and issubclass(member, BaseModel):
            field = member.model_fields.get("type")
            literal = field.annotation if field is not None else None
            if get_origin(literal) is Literal and tag in get_args(literal):
                return member
    return None
