"""The settings tree (settings.py) is the one source of the manager's setting names, types,
ranges and defaults: TaskManager's keywords, the DI settings and the docs agree with it."""

from __future__ import annotations

import asyncio
import inspect
import re
import types
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import annotated_types
import pytest

from fastapi_taskflow import ConfigurationError, QueueConfig, TaskManager
from fastapi_taskflow.backends.memory import MemoryBackend
from fastapi_taskflow.di.settings import TaskflowSettings
from fastapi_taskflow.models import TaskRecord, TaskStatus
from fastapi_taskflow.settings import (
    SECTION_OF_KEY,
    AcceptedUnusedSettings,
    DurabilitySettings,
    ExecutionSettings,
    ManagerKeywords,
    ManagerSettings,
)
from fastapi_taskflow.store import TaskStore

DOCS = Path(__file__).parents[2] / "docs" / "configuration.md"
# What TaskManager takes besides the settings keywords: the parts it is given.
INJECTED = {
    "snapshot_db",
    "snapshot_backend",
    "loggers",
    "encrypt_args_key",
    "queues",
    "max_size",
    "registry",
    "store",
    "cipher",
    "thread_pool",
    "process_pool",
    "close_backend",
    "redact",
    "encrypt_errors",
    "tracing",
    "settings",
}
# The YAML keys that are shaped for files (mappings, lists, secrets): built into parts.
YAML_SHAPED = {
    "backend",
    "loggers",
    "max_size",
    "queues",
    "encryption",
    "admin",
    "redact",
    "encrypt_errors",
    "tracing",
}


def test_keywords_settings_keys_and_tree_fields_are_one_set() -> None:
    """ManagerKeywords, TaskflowSettings' flat keys and the sections' fields name the same
    settings, and TaskManager's own parameters are only the injected parts."""
    tree = set(SECTION_OF_KEY)
    assert set(ManagerKeywords.__annotations__) == tree
    settings_keys = set(TaskflowSettings.model_fields)
    assert settings_keys - YAML_SHAPED == tree
    parameters = inspect.signature(TaskManager).parameters
    explicit = {n for n, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
    assert explicit == INJECTED
    assert not explicit & tree


def test_default_manager_and_default_settings_give_equal_sections(isolated: Path) -> None:
    """TaskManager() and TaskflowSettings() (no file, no environment) build the same tree."""
    assert TaskflowSettings().manager_settings() == TaskManager().settings
    assert TaskManager().settings == ManagerSettings()


def test_yaml_values_reach_their_section() -> None:
    """A flat YAML key lands in the section that declares it; max_size in the default queue."""
    settings = TaskflowSettings.from_mapping(
        {"lease_ttl": 60, "drain_timeout": 2, "max_history": 7, "max_size": 3}
    ).manager_settings()
    assert settings.durability.lease_ttl == 60
    assert settings.execution.drain_timeout == 2
    assert settings.history.max_history == 7
    assert settings.queues["default"].max_size == 3


def _bounds(annotation: Any) -> list[Any]:
    """The annotated_types bounds (Gt, Ge) anywhere in ``annotation``."""
    found: list[Any] = []
    if get_origin(annotation) is Annotated:
        inner, *metadata = get_args(annotation)
        found += [m for m in metadata if isinstance(m, annotated_types.Gt | annotated_types.Ge)]
        return found + _bounds(inner)
    if get_origin(annotation) in (Union, types.UnionType):
        for member in get_args(annotation):
            found += _bounds(member)
    return found


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _documented() -> dict[str, tuple[str, str]]:
    """The top-level table of docs/configuration.md: key -> (type, default)."""
    text = DOCS.read_text().split("## Every key", 1)[1].split("`backend`:", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \| ([^|]+) \|", text, re.MULTILINE)
    return {key: (kind.strip(), default.strip().strip("`")) for key, kind, default in rows}


def test_the_docs_state_every_default_and_range_of_the_tree() -> None:
    """docs/configuration.md lists each tree key with the tree's default, its bound (> 0 or
    >= 0) and whether null is allowed."""
    documented = _documented()
    for key, section_name in SECTION_OF_KEY.items():
        assert key in documented, f"{key} is not in docs/configuration.md"
        kind, default = documented[key]
        model = (
            AcceptedUnusedSettings
            if section_name == "accepted_unused"
            else ManagerSettings.model_fields[section_name].annotation
        )
        field = model.model_fields[key]  # type: ignore[union-attr]
        assert default == _shown(field.default), key
        bounds = _bounds(field.annotation) + [
            m for m in field.metadata if isinstance(m, annotated_types.Gt | annotated_types.Ge)
        ]
        for bound in bounds:
            word = "> 0" if isinstance(bound, annotated_types.Gt) else ">= 0"
            assert re.search(rf"(^|\s){re.escape(word)}(\s|$)", kind), (key, kind)
        nullable = type(None) in get_args(field.annotation)
        assert ("null" in kind) == nullable, (key, kind)


def test_python_values_are_taken_as_they_are() -> None:
    """From Python a string is no number and a bool no int; an int is a fine float."""
    for bad in ({"snapshot_interval": "5"}, {"max_history": True}, {"max_buffered": 1.0}):
        with pytest.raises(ConfigurationError, match=next(iter(bad))):
            TaskManager(**bad)
    assert TaskManager(snapshot_interval=5).settings.durability.snapshot_interval == 5.0


def test_every_bad_keyword_is_named_at_once_with_its_reason() -> None:
    """One ValueError names each bad keyword and why, the lease rule included."""
    with pytest.raises(ValueError, match="4 problems") as caught:
        TaskManager(snapshot_interval=0, drain_timeout=-1, heartbeat_interval=40, registry_ttl=0)
    assert isinstance(caught.value, ConfigurationError)
    text = str(caught.value)
    assert "snapshot_interval: Input should be greater than 0 (got 0)" in text
    assert "drain_timeout: Input should be greater than or equal to 0 (got -1)" in text
    assert "heartbeat_interval: must be shorter than lease_ttl (30)" in text
    assert "registry_ttl: Input should be greater than 0" in text


def test_a_bad_max_size_is_named() -> None:
    """0.12's max_size goes to the default queue; a bad one names max_size."""
    with pytest.raises(ConfigurationError, match="max_size"):
        TaskManager(max_size=0)
    queues = {"default": QueueConfig(concurrency=2)}
    default = TaskManager(queues=queues, max_size=4).settings.queues["default"]
    assert (default.concurrency, default.max_size) == (2, 4)


def test_a_ready_tree_is_used_and_not_mixed_with_keywords() -> None:
    """settings= gives the manager its tree; settings= with keywords is a TypeError."""
    tree = ManagerSettings(durability=DurabilitySettings(barrier_timeout=5))
    manager = TaskManager(settings=tree)
    assert manager.settings is tree
    assert manager.barrier_timeout == 5
    with pytest.raises(TypeError, match="lease_ttl"):
        TaskManager(settings=tree, lease_ttl=60)
    with pytest.raises(TypeError, match="max_size"):
        TaskManager(settings=tree, max_size=3)


async def test_each_part_gets_its_section_when_made() -> None:
    """The persister, recovery and cluster hold the durability section; the dispatcher and
    results the execution and result settings."""
    manager = TaskManager(
        snapshot_backend=MemoryBackend(),
        settings=ManagerSettings(
            durability=DurabilitySettings(max_requeues=7, lease_ttl=45),
            execution=ExecutionSettings(default_timeout=9, max_concurrent_tasks=4),
        ),
    )
    assert manager.dispatcher.default_timeout == 9
    assert manager.dispatcher.queues.global_limit == 4
    assert manager.results.max_result_bytes == manager.settings.results.max_result_bytes
    await manager.startup()
    try:
        assert manager.persister is not None
        assert manager.recovery is not None
        assert manager.persister.settings is manager.settings.durability
        assert manager.recovery.max_requeues == 7
        assert manager.cluster is not None
        assert manager.cluster.lease_ttl == 45
    finally:
        await manager.shutdown()


async def test_rate_gates_take_starts_from_the_running_backend_only() -> None:
    """Before startup and after shutdown, this process's counts; while running, the backend."""
    backend = MemoryBackend()
    manager = TaskManager(snapshot_backend=backend)
    rates = manager.dispatcher.rates
    assert rates.backend is not backend
    await manager.startup()
    try:
        assert rates.backend is backend
    finally:
        await manager.shutdown()
    assert rates.backend is not backend


async def test_the_store_tells_when_it_is_idle_from_any_thread() -> None:
    """when_idle() is done at once on an idle store, else once the last active record
    finishes, even when it finishes on another thread."""
    store = TaskStore()
    assert store.when_idle().done()
    record = TaskRecord(task_id="t1", func_name="f")
    store.add(record)
    idle = store.when_idle()
    assert not idle.done()
    await asyncio.to_thread(store.transition, record, TaskStatus.SUCCESS)
    await asyncio.wait_for(idle, timeout=5)


def test_the_lease_rule_is_reported_with_the_other_problems(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The section's lease rule is one of the problems of a load, on heartbeat_interval with
    its source, beside a bad key of another section."""
    from fastapi_taskflow.errors import InvalidConfigurationError

    path = isolated / "t.yaml"
    path.write_text("heartbeat_interval: 20\ndrain_timeout: -1\n")
    monkeypatch.setenv("TASKFLOW_LEASE_TTL", "15")
    with pytest.raises(InvalidConfigurationError) as caught:
        TaskflowSettings(path)
    problems = {problem.path: problem for problem in caught.value.problems}
    assert set(problems) == {"heartbeat_interval", "drain_timeout"}
    lease = problems["heartbeat_interval"]
    assert lease.source == str(path)
    assert "lease_ttl (15, from environment variable TASKFLOW_LEASE_TTL)" in lease.reason


def test_config_check_shows_the_backend_first_and_the_unused_keys_last() -> None:
    """The effective settings start with backend and end with the 0.12 keys that do nothing."""
    keys = list(TaskflowSettings.from_mapping({}).masked_dump())
    assert keys[0] == "backend"
    assert keys[-len(AcceptedUnusedSettings.model_fields) :] == list(
        AcceptedUnusedSettings.model_fields
    )
    assert set(keys) == set(TaskflowSettings.model_fields)
