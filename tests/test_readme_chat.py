"""Runs the README's "Ask the model" snippets literally against the demo run.

The Python snippet (``load_from_checkpoint`` + ``model.chat``, a second turn
with the history) and the piped terminal chat ask the same two questions about
the same image, so they must print the same two replies.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from conftest import REPO, run_env

PLACEHOLDER = "output/demo/JOB"


def readme_snippet(name: str, language: str) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Ask the model", 1)[1].split("\n## ", 1)[0]
    found = re.findall(rf"<!-- snippet: {name} -->\n```{language}\n(.*?)```", section, flags=re.S)
    assert len(found) == 1, f"README snippet {name}"
    return found[0]


def snippet_env() -> dict[str, str]:
    """``python`` on PATH is this interpreter, as in an activated virtualenv."""
    env = run_env()
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def test_readme_python_and_terminal_chat_give_the_same_replies(demo_run: Path) -> None:
    code = readme_snippet("ask-the-model", "python")
    assert PLACEHOLDER in code
    proc = subprocess.run(
        [sys.executable, "-c", code.replace(PLACEHOLDER, str(demo_run))], cwd=REPO, env=snippet_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    python_replies = proc.stdout.splitlines()
    assert len(python_replies) == 2 and all(python_replies), proc.stdout

    # The block's first command (continuation lines joined): the piped conversation.
    command = readme_snippet("chat-piped", "bash").replace("\\\n", " ").splitlines()[0]
    assert command.startswith("printf ") and "| python -m lavislite.chat" in command
    proc = subprocess.run(
        ["bash", "-c", "set -o pipefail; " + command.replace(PLACEHOLDER, shlex.quote(str(demo_run)))],
        cwd=REPO, env=snippet_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == [f"assistant: {reply}" for reply in python_replies]
