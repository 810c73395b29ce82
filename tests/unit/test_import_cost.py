"""What importing costs: backend drivers load on first use; declaring tasks needs no dispatcher."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from fastapi_taskflow import registry, scheduling


def _modules_after(statement: str) -> set[str]:
    script = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    return set(result.stdout.split())


def test_importing_the_package_loads_no_backend_driver() -> None:
    """redis and aiosqlite are imported only when their backend is first used."""
    loaded = _modules_after("import fastapi_taskflow")
    assert not {"redis", "aiosqlite"} & loaded
    assert "fastapi_taskflow.backends.redis" not in loaded
    assert "fastapi_taskflow.backends.sqlite" not in loaded


def test_importing_the_package_declares_no_settings_model() -> None:
    """The settings tree (pydantic models, costly to declare) loads with the first manager."""
    assert "fastapi_taskflow.settings" not in _modules_after("import fastapi_taskflow")
    loaded = _modules_after("import fastapi_taskflow as t\nt.TaskManager()")
    assert "fastapi_taskflow.settings" in loaded


def test_backend_names_still_resolve_from_the_package() -> None:
    """fastapi_taskflow.RedisBackend and SqliteBackend import their modules when asked for."""
    loaded = _modules_after(
        "import fastapi_taskflow as t\nassert t.RedisBackend.__name__ == 'RedisBackend'\n"
        "assert t.SqliteBackend.__name__ == 'SqliteBackend'"
    )
    assert {"redis", "aiosqlite"} <= loaded


def _runtime_imports(module: ModuleType) -> set[str]:
    """Modules ``module`` imports at run time (top level or in functions, not TYPE_CHECKING)."""
    tree = ast.parse(Path(str(module.__file__)).read_text())
    package = module.__name__.rpartition(".")[0]
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            skipped.update(id(child) for child in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and id(node) not in skipped:
            base = package if node.level == 1 else ""
            found.add(".".join(part for part in (base, node.module or "") if part))
    return found


def test_declaring_tasks_and_schedules_does_not_import_the_dispatcher() -> None:
    """registry and the schedule declarations it imports never import fastapi_taskflow.dispatch."""
    for module in (registry, scheduling):
        imported = _runtime_imports(module)
        assert not {name for name in imported if name.startswith("fastapi_taskflow.dispatch")}
    assert "fastapi_taskflow.validation" in _runtime_imports(scheduling)
