"""The runners package's import graph: no module imports one that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

RUNNERS = Path(__file__).resolve().parent.parent / "lavislite" / "runners"


def _imports(path: Path) -> set[str]:
    """Every ``lavislite...`` module a file imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("lavislite"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lavislite"):
            found.add(node.module)
            # ``from lavislite.runners import checkpoints``: the name may be a module
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def test_no_import_cycle_between_the_runner_modules() -> None:
    modules = {f"lavislite.runners.{p.stem}": p for p in RUNNERS.glob("*.py") if p.stem != "__init__"}
    graph = {name: sorted(m for m in _imports(path) if m in modules and m != name) for name, path in modules.items()}
    assert "lavislite.runners.launch" in graph and "lavislite.runners.runner_base" in graph

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*trail, nxt]
                if nxt not in trail:
                    stack.append((nxt, [*trail, nxt]))
        return None

    cycles = [c for c in map(cycle_from, graph) if c]
    assert not cycles, f"import cycles: {[' -> '.join(c) for c in cycles]}"


def test_set_seed_lives_in_common() -> None:
    import random

    from lavislite.common.utils import set_seed

    set_seed(3)
    a = random.random()
    set_seed(3)
    assert random.random() == a
