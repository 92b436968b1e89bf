"""The import direction of the package: models never reach into the data layer (issue 15, the house).

Every ``import`` / ``from ... import`` in a module is read with ``ast`` (also the
ones inside functions, which a plain ``import`` of the module would not run).
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "lavislite"


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every import statement in a file, function bodies included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def offending_imports(folder: str, forbidden: str) -> list[str]:
    hits = []
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        for line, module in imported_modules(path):
            if module == forbidden or module.startswith(forbidden + "."):
                hits.append(f"{path.relative_to(REPO)}:{line}: {module}")
    return hits


def test_models_do_not_import_datasets() -> None:
    """models -> datasets would point sideways; the chat collation lives in processors.collate."""
    assert offending_imports("models", "lavislite.datasets") == []


def test_processors_import_neither_models_nor_datasets() -> None:
    assert offending_imports("processors", "lavislite.models") == []
    assert offending_imports("processors", "lavislite.datasets") == []


def test_collate_chat_is_one_function_used_by_models_and_datasets() -> None:
    from lavislite.datasets.datasets import instruction_dataset
    from lavislite.processors.collate import collate_chat

    assert instruction_dataset.collate_chat is collate_chat  # the old import path keeps working
