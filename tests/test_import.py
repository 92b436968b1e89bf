"""Importing lavislite stays light: no deepspeed, no timm."""

from __future__ import annotations

import subprocess
import sys


def test_import_lavislite_does_not_import_deepspeed_or_timm() -> None:
    code = (
        "import sys, lavislite\n"
        "heavy = [m for m in ('deepspeed', 'timm', 'peft', 'transformers.models.blip_2.modeling_blip_2') if m in sys.modules]\n"
        "print(heavy)\n"
        "print(len(lavislite.registry.list_models()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "[]"
    assert int(lines[1]) >= 1
