"""The package's modules import one another without a cycle, type-only imports included.

A cycle hidden behind ``if TYPE_CHECKING:`` still couples the modules: neither can be read,
tested or replaced without the other. The graph below counts every intra-package import.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "fastapi_taskflow"
SOURCE_ROOT = Path(__file__).resolve().parents[2] / "src" / PACKAGE


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".")
    if not is_package:
        base.pop()
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every package module ``path`` imports, wherever the import statement sits."""
    module = _module_name(path)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _resolve_relative(module, is_package, node.level, node.module)
            else:
                base = node.module or ""
            found.add(base)
            # ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one.
            for alias in node.names:
                found.add(f"{base}.{alias.name}")
    targets = set()
    for name in found:
        # ``import a.b.c`` imports a, a.b and a.b.c; keep the deepest module that exists.
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name.startswith(PACKAGE) and name != module:
            targets.add(name)
    return targets


def import_graph() -> dict[str, set[str]]:
    paths = sorted(SOURCE_ROOT.rglob("*.py"))
    modules = {_module_name(path) for path in paths}
    return {_module_name(path): _imports_of(path, modules) for path in paths}


def strongly_connected(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Tarjan's components with more than one module: each is one or more cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def a_cycle(graph: dict[str, set[str]], component: frozenset[str]) -> list[str]:
    """One concrete cycle inside ``component``, to print when the test fails."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for successor in sorted(graph[node] & component):
            if successor == start:
                return paths[node] + [start]
            if successor not in paths:
                paths[successor] = paths[node] + [successor]
                queue.append(successor)
    return sorted(component)


def test_the_graph_counts_type_only_and_function_level_imports() -> None:
    """Imports under ``if TYPE_CHECKING:`` and inside functions are edges of the graph."""
    graph = import_graph()
    # control.py imports handles only for type checking; di/settings.py imports tracing lazily.
    assert f"{PACKAGE}.handles" in graph[f"{PACKAGE}.control"]
    assert f"{PACKAGE}.tracing" in graph[f"{PACKAGE}.di.settings"]
    # A relative import from a subpackage resolves to the module itself.
    assert f"{PACKAGE}.dispatch.job" in graph[f"{PACKAGE}.manager"]


def test_the_cycle_finder_reports_a_cycle() -> None:
    """A cycle in a graph is found and printed as a closed path."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    (component,) = strongly_connected(graph)
    assert component == {"a", "b", "c"}
    assert a_cycle(graph, component) == ["a", "b", "c", "a"]


def test_no_import_cycle_among_the_package_modules() -> None:
    """No cycle among the package's modules, counting type-only and function-level imports."""
    graph = import_graph()
    components = strongly_connected(graph)
    report = "\n".join(
        " -> ".join(a_cycle(graph, c)) + f"\n  (component: {sorted(c)})" for c in components
    )
    assert not components, f"import cycles:\n{report}"
