"""The app's container: its services plus an embedded ``TaskflowContainer``."""

from __future__ import annotations

import os
from pathlib import Path

from dependency_injector import containers, providers

from fastapi_taskflow.di import TaskflowContainer, load_settings

from .services import Mailer
from .tasks import tasks

HERE = Path(__file__).parent


class AppContainer(containers.DeclarativeContainer):
    """Everything the app needs. Wiring covers the modules that use ``Provide[...]``."""

    wiring_config = containers.WiringConfiguration(modules=[".routes", ".tasks"])

    config = providers.Configuration()
    mailer = providers.Singleton(Mailer, sender=config.mailer.sender)
    taskflow = providers.Container(
        TaskflowContainer, config=config.taskflow, registry=providers.Object(tasks)
    )


def build_container(taskflow_config: str | Path = HERE / "taskflow.yaml") -> AppContainer:
    """The container with its configuration loaded (taskflow's validated by TaskflowSettings)."""
    container = AppContainer()
    container.config.mailer.from_dict(
        {"sender": os.environ.get("MAILER_SENDER", "noreply@example.com")}
    )
    container.config.taskflow.from_pydantic(load_settings(taskflow_config))
    return container
