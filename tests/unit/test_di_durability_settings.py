"""The durability settings reach the manager and the SQLite backend through the DI settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastapi_taskflow.backends.sqlite import SqliteBackend
from fastapi_taskflow.di import TaskflowContainer, TaskflowSettings
from fastapi_taskflow.errors import ConfigurationError

pytestmark = pytest.mark.usefixtures("isolated")


def test_durability_keys_become_manager_settings() -> None:
    """prune_interval, barrier_timeout, max_buffered and journal_backpressure pass through."""
    from fastapi_taskflow import TaskManager

    settings = TaskflowSettings(
        prune_interval=60, barrier_timeout=5, max_buffered=1000, journal_backpressure=True
    )
    manager = TaskManager(settings=settings.manager_settings())
    assert manager.settings.durability.prune_interval == 60
    assert manager.settings.durability.barrier_timeout == 5
    assert manager.settings.durability.max_buffered == 1000
    assert manager.settings.durability.journal_backpressure is True


def test_a_bad_durability_value_names_its_key() -> None:
    """barrier_timeout: 0 is refused, naming the key."""
    with pytest.raises(ConfigurationError, match="barrier_timeout"):
        TaskflowSettings(barrier_timeout=0)


def test_sqlite_integrity_check_reaches_the_backend(tmp_path: Path) -> None:
    """backend.sqlite.integrity_check is given to the SQLite backend the container builds."""
    container = TaskflowContainer()
    container.config.from_dict(
        {
            "backend": {
                "kind": "sqlite",
                "sqlite": {"path": str(tmp_path / "t.db"), "integrity_check": "full"},
            }
        }
    )
    backend = container.backend_factory()
    assert isinstance(backend, SqliteBackend)
    assert backend.integrity_check == "full"
