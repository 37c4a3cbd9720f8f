"""The layout's rules: the core imports neither Flower, Ray nor Hydra; no module-level
import cycle among fedkd, strategies and simulations; no module above 600 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedkd", "strategies", "simulations")
CORE = ("fedkd.data", "fedkd.models", "fedkd.distill", "fedkd.train", "fedkd.privacy")
FRAMEWORKS = ("flwr", "ray", "hydra", "omegaconf")
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _imports(path: Path, name: str, *, top_level_only: bool) -> set[str]:
    """Absolute module names ``path`` imports (module level only when asked: imports inside
    functions and under ``TYPE_CHECKING`` do not make cycles at import time)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _in(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_core_imports_no_flower_ray_or_hydra() -> None:
    offenders = {
        name: sorted(i for i in _imports(path, name, top_level_only=False) if _in(i, FRAMEWORKS))
        for name, path in _modules().items()
        if _in(name, CORE)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_there_is_no_import_cycle() -> None:
    modules = _modules()
    graph = {
        name: {i for i in _imports(path, name, top_level_only=True) if i in modules and i != name}
        for name, path in modules.items()
    }
    # a package's __init__ importing its own submodules is how packages work, not a cycle
    for name, edges in graph.items():
        graph[name] = {e for e in edges if not e.startswith(name + ".")}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_is_above_600_lines(package: str) -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in sorted((ROOT / package).rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_checks_see_what_they_check() -> None:
    """The rules above would pass on an empty tree: make sure they read real imports."""
    modules = _modules()
    assert "fedkd.wire.payloads.base" in modules and "strategies.base" in modules
    client = _imports(modules["fedkd.apps.client"], "fedkd.apps.client", top_level_only=True)
    assert "flwr.clientapp" in client and "fedkd.wire.payloads" in client
    relative = _imports(modules["fedkd.wire.payloads"], "fedkd.wire.payloads", top_level_only=True)
    assert "fedkd.wire.payloads.base" in relative
