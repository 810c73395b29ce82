"""The app's container: its own services plus an embedded ``TaskflowContainer``."""

from __future__ import annotations

import os
from pathlib import Path

from dependency_injector import containers, providers

from fastapi_taskflow.di import TaskflowContainer, load_settings

from ..workloads import Mailer
from .tasks import tasks

#: The taskflow settings the app runs on, unless TASKFLOW_CONFIG names another file.
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "taskflow.yaml"


class AppContainer(containers.DeclarativeContainer):
    """Everything the app needs. Wiring covers the modules that use ``Provide[...]``."""

    wiring_config = containers.WiringConfiguration(modules=[".routes", ".tasks"])

    config = providers.Configuration()
    mailer = providers.Singleton(
        Mailer, sender=config.mailer.sender, failure_rate=config.mailer.failure_rate
    )
    taskflow = providers.Container(
        TaskflowContainer, config=config.taskflow, registry=providers.Object(tasks)
    )


def build_container(taskflow_config: str | Path | None = None) -> AppContainer:
    """The container with its configuration loaded (taskflow's validated by TaskflowSettings:
    a mistake is one ConfigurationError naming the key, its source and the reason)."""
    container = AppContainer()
    container.config.mailer.from_dict(
        {
            "sender": os.environ.get("MAILER_SENDER", "noreply@example.com"),
            # How often the pretend mail server refuses a message (0.0 to 1.0).
            "failure_rate": float(os.environ.get("EXAMPLE_SMTP_FAILURE_RATE", "0.4")),
        }
    )
    config_file = taskflow_config or os.environ.get("TASKFLOW_CONFIG") or DEFAULT_CONFIG
    container.config.taskflow.from_pydantic(load_settings(config_file))
    return container
