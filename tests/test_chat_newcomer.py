"""The terminal chat as a newcomer meets it (issue 15): shipped images by ``lavislite:``, and a --help that explains the chat."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import run_env

SHIPPED = "lavislite:projects/demo/data/images/shape_000.jpg"


def test_image_command_accepts_a_shipped_lavislite_path(tiny_model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From any folder (as with an installed package), /image lavislite:... reaches the demo's images."""
    from lavislite.chat import ChatSession, repl

    monkeypatch.chdir(tmp_path)  # not the repository: a relative projects/... would not be found
    tiny_model.eval()
    session = ChatSession(tiny_model, {"max_new_tokens": 2})
    out, err = io.StringIO(), io.StringIO()
    repl(session, [f"/image {SHIPPED}", "What colour is the shape?"], out, err, interactive=False)
    assert f"[image attached: {SHIPPED}]" in err.getvalue()
    assert out.getvalue().startswith("assistant: ") and len(session.images) == 1  # sent with the message
    assert session.images[0].size == (64, 64)


def test_resolve_image_path_leaves_other_paths_alone(tmp_path: Path) -> None:
    from lavislite.chat import resolve_image_path
    from lavislite.common.utils import library_path

    assert resolve_image_path(SHIPPED) == library_path("projects/demo/data/images/shape_000.jpg")
    assert resolve_image_path(str(tmp_path / "a.jpg")) == str(tmp_path / "a.jpg")
    assert resolve_image_path("~/a.jpg").endswith("/a.jpg") and not resolve_image_path("~/a.jpg").startswith("~")


def test_help_explains_commands_and_piping(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "lavislite.chat", "--help"], cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for word in ("/image PATH", "/reset", "/quit", "lavislite:projects/demo/data/images/", "Piped input", "| lavislite-chat", "--dtype"):
        assert word in text, word
