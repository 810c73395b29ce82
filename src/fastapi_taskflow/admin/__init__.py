"""The task API and live dashboard: ``TaskAdmin(app, task_manager)``."""

from __future__ import annotations

from .auth import TaskAuthBackend
from .core import TaskAdmin

__all__ = ["TaskAdmin", "TaskAuthBackend"]
