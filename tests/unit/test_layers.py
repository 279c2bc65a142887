"""The code's shape: every import points down the layers, and no module-level import closes a circle.

Layers, lowest first: ``carecast`` (settings, the target registry) -> ``features`` -> ``training`` ->
``serving`` -> ``scoring`` and ``monitoring`` -> ``pipelines`` (the CLI). Read from the source with ``ast``, so a
lazy import inside a function counts for the layering too (it runs in the same process all the same).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = {"carecast": 0, "features": 1, "training": 2, "serving": 3, "scoring": 4, "monitoring": 4, "pipelines": 5}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in LAYERS:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Project modules imported by ``path`` (``from a import b`` counts ``a.b`` when that is a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES]
            # ``from pkg import submodule`` needs the submodule; names from the package itself need the package
            names = subs if len(subs) == len(node.names) else [node.module, *subs]
        else:
            continue
        found |= {n for n in names if n in MODULES}
    return found


def test_every_import_points_down_the_layers() -> None:
    upward = []
    for name, path in MODULES.items():
        here = LAYERS[name.split(".")[0]]
        for dep in _imports(path, top_level_only=False):
            if LAYERS[dep.split(".")[0]] > here:
                upward.append(f"{name} imports {dep}")
    assert not upward, "imports up the layers:\n" + "\n".join(upward)


def test_no_import_circle_at_module_level() -> None:
    graph = {name: _imports(path, top_level_only=True) - {name} for name, path in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            pytest.fail("import circle: " + " -> ".join(cycle))


def test_the_check_sees_the_project() -> None:
    """Guard the guard: the walk found every layer and the imports between them."""
    assert {m.split(".")[0] for m in MODULES} == set(LAYERS)
    assert "carecast.targets" in _imports(MODULES["training.targets"], top_level_only=True)
