"""Dependency injection: YAML/env settings, a declarative container, FastAPI ``Depends``.

See docs/dependency-injection.md for the guide and docs/configuration.md for every key.
"""

from ..errors import ConfigProblem, ConfigurationError, InvalidConfigurationError
from .containers import TaskflowContainer, running, start_resources, stop_resources
from .fastapi import (
    TaskHandleDep,
    TaskManagerDep,
    TasksDep,
    exit_on_config_error,
    get_task_handle,
    get_task_manager,
    get_tasks,
    install,
    task_handle_from,
    taskflow_lifespan,
)
from .settings import TaskflowSettings, load_settings

__all__ = [
    "ConfigProblem",
    "ConfigurationError",
    "InvalidConfigurationError",
    "TaskflowSettings",
    "load_settings",
    "TaskflowContainer",
    "running",
    "start_resources",
    "stop_resources",
    "TaskHandleDep",
    "TaskManagerDep",
    "TasksDep",
    "exit_on_config_error",
    "get_task_handle",
    "get_task_manager",
    "get_tasks",
    "install",
    "task_handle_from",
    "taskflow_lifespan",
]
