"""The package's import graph: no cycles, and the web layer never reaches the service.

Every import statement counts, those under TYPE_CHECKING and inside functions included: a
cycle hidden from the interpreter is still one for a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "smtp_exporter"


def _graph() -> dict[str, set[str]]:
    modules: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            for target in imported:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                # A module reaching its own package (`smtp_exporter` for __version__) is no cycle.
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_module_imports_itself_through_others() -> None:
    graph = _graph()
    cycles = sorted(name for name in graph if name in _reachable(graph, name))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_the_web_layer_never_reaches_the_service() -> None:
    graph = _graph()
    for name in graph:
        if name == "smtp_exporter.web" or name.startswith("smtp_exporter.web."):
            assert "smtp_exporter.service" not in _reachable(graph, name), name
