"""One place that turns a backend kind and its options into a (not yet opened) backend.

The manager (``snapshot_db=``), the DI container (``backend.kind``) and the CLI (``--db``,
``--redis``, the config file) all build backends here, so a kind means the same everywhere.
Each backend module is imported only when its kind is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any, Literal, get_args

from ..errors import ConfigurationError
from .base import TaskBackend

BackendKind = Literal["memory", "sqlite", "redis", "postgres", "mysql"]
BACKEND_KINDS: tuple[BackendKind, ...] = get_args(BackendKind)

#: kind -> (module in this package, class name)
_CLASSES: dict[str, tuple[str, str]] = {
    "memory": ("memory", "MemoryBackend"),
    "sqlite": ("sqlite", "SqliteBackend"),
    "redis": ("redis", "RedisBackend"),
    "postgres": ("postgres", "PostgresBackend"),
    "mysql": ("mysql", "MySQLBackend"),
}


def build_backend(kind: BackendKind, **options: Any) -> TaskBackend:
    """Construct (not open) the backend ``kind`` with ``options``.

    An unknown kind, or a driver package that is not installed, is a ``ConfigurationError``.
    """
    if kind not in _CLASSES:
        raise ConfigurationError(
            f"backend kind must be one of {', '.join(BACKEND_KINDS)}, got {kind!r}"
        )
    module_name, class_name = _CLASSES[kind]
    try:
        module = importlib.import_module(f"{__package__}.{module_name}")
    except ImportError as exc:
        missing = exc.name or kind
        raise ConfigurationError(
            f"the {kind!r} backend needs the package {missing!r}, which is not installed "
            f"(install it: pip install {missing})"
        ) from None
    backend: TaskBackend = getattr(module, class_name)(**options)
    return backend
